"""A dataset onboarded from a drafted spec runs through ingest → validate on the real store: duplicate
keys (one column, composite, or a row hash) are quarantined with the row's key, and a partition
quarantined beyond the contract's max_quarantine_share fails loudly with nothing lost."""

from pathlib import Path

import pandas as pd
import pytest

from flywheel.core import storage
from flywheel.core.spec import load_any_spec_file
from flywheel.data.ingest import ingest
from flywheel.data.keys import ROW_KEY
from flywheel.data.validation import QuarantineShareExceeded, validate_partition
from tests.unit.test_dataset_onboarding import draft

pytestmark = pytest.mark.integration
DS = "2026-02-01"


def orders_day(rows: int = 40) -> pd.DataFrame:
    return pd.DataFrame({
        "order_id": [f"o-{i}" for i in range(rows)],
        "placed_at": pd.date_range(f"{DS}T00:10", periods=rows, freq="30min", tz="UTC"),
        "customer_id": range(rows),
        "total": [12.0 + i for i in range(rows)],
        "channel": ["web", "app"] * (rows // 2),
    })


def land(spec, settings, frame: pd.DataFrame) -> None:
    landing = Path(spec.source_for(DS, settings))
    landing.mkdir(parents=True, exist_ok=True)
    frame.to_csv(landing / "part-0.csv", index=False)


def zones(settings, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (storage.read_partition(zone="curated", dataset=name, ds=DS, settings=settings),
            storage.read_partition(zone="quarantine", dataset=name, ds=DS, settings=settings))


def renamed(spec, name: str, **dataset):
    return spec.model_copy(update={"name": name, "dataset": spec.dataset.model_copy(update={
        "name": name, "source": "{home}/landing/" + name + "/ds={ds}", **dataset})})


def test_drafted_dataset_is_ingested_and_validated(services, tmp_path):
    spec = load_any_spec_file(draft(tmp_path))
    day = orders_day()
    day = pd.concat([day, day.iloc[[1]].assign(placed_at=pd.Timestamp(f"{DS}T22:00", tz="UTC"))])  # a repeated key
    land(spec, services, day)
    assert ingest(spec, DS, run_id="onboard", settings=services).rows == 41
    summary = validate_partition(spec, DS, run_id="onboard", settings=services)
    curated, quarantined = zones(services, "orders")
    assert len(curated) + len(quarantined) == 41, summary
    assert len(quarantined) == 2 and quarantined["_failed_rules"].str.contains("order_id").all()
    assert set(quarantined[ROW_KEY]) == {"o-1"}


def test_composite_and_row_hash_keys_quarantine_repeats(services, tmp_path):
    base = load_any_spec_file(draft(tmp_path))
    columns = base.dataset.contract.columns
    loose = base.dataset.contract.model_copy(update={"columns": {
        **columns, "order_id": columns["order_id"].model_copy(update={"unique": False})}})
    day = orders_day()
    repeated = pd.concat([day, day.iloc[[3]]])  # an exact copy of a row
    for name, key, rule, ids in (
        ("orders_pair", ["order_id", "channel"], "compound_columns_to_be_unique(order_id,channel)",
         {"o-3|app"}),
        ("orders_rows", None, "rows_to_be_unique(row_hash)", None),
    ):
        spec = renamed(base, name, key=key, contract=loose)
        land(spec, services, repeated)
        ingest(spec, DS, run_id="onboard", settings=services)
        validate_partition(spec, DS, run_id="onboard", settings=services)
        curated, quarantined = zones(services, name)
        assert len(curated) + len(quarantined) == len(repeated)
        assert quarantined["_failed_rules"].str.contains(rule, regex=False).all(), quarantined
        if key is None:  # the first copy is kept: equal rows carry the same facts
            assert len(quarantined) == 1 and quarantined[ROW_KEY].str.fullmatch("[0-9a-f]{16}").all()
        else:
            assert len(quarantined) == 2 and set(quarantined[ROW_KEY]) == ids


def test_a_partition_quarantined_beyond_the_share_fails_and_keeps_every_row(services, tmp_path):
    spec = renamed(load_any_spec_file(draft(tmp_path)), "orders_share")
    day = orders_day()
    day.loc[day.index % 4 == 0, "channel"] = "phone"  # 25 % outside the drafted allowed set
    land(spec, services, day)
    ingest(spec, DS, run_id="onboard", settings=services)
    with pytest.raises(QuarantineShareExceeded) as err:
        validate_partition(spec, DS, run_id="onboard", settings=services)
    message = str(err.value)
    assert "25.0% of 40 rows" in message and "max_quarantine_share 5.0%" in message
    assert "expect_column_values_to_be_in_set(channel) (10 rows)" in message and "flywheel replay" in message
    curated, quarantined = zones(services, "orders_share")
    assert len(curated) == 30 and len(quarantined) == 10
    assert quarantined["_failed_rules"].str.contains("be_in_set(channel)", regex=False).all()
