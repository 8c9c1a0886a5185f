from datetime import date

import pandas as pd
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from examples.fraud.generator import generate_day
from flywheel.cli import app
from flywheel.core.spec import DatasetSpec, VolumeRule
from flywheel.data.validation import ContractViolation, check_freshness, check_schema, check_volume, validate

pytestmark = pytest.mark.unit
DS = "2026-01-05"


def test_init_dataset_drafts_a_contract_the_sample_passes(tmp_path, spec):
    frame = generate_day(date.fromisoformat(DS), spec.generator, bad_records=False)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    out = tmp_path / "orders.yaml"
    result = CliRunner().invoke(app, ["init-dataset", str(sample), "--name", "orders",
                                      "--source", "s3://landing/orders/ds={ds}/", "--out", str(out)])
    assert result.exit_code == 0, result.output
    dataset = DatasetSpec.model_validate(yaml.safe_load(out.read_text())["dataset"])
    assert dataset.format == "csv" and dataset.key == "transaction_id" and dataset.timestamp == "event_timestamp"
    assert dataset.contract.columns["transaction_id"].unique
    assert set(dataset.contract.columns["device"].allowed) <= {"mobile", "desktop", "pos", "unknown"}
    import pyarrow.csv as pcsv

    table = pcsv.read_csv(sample)
    checked = validate(table.to_pandas(), dataset, DS)
    assert len(checked.quarantined) == 0 and len(checked.curated) == len(frame)


def test_init_dataset_names_what_it_cannot_infer(tmp_path):
    sample = tmp_path / "x.csv"
    pd.DataFrame({"a": [1, 1], "b": ["x", "y"]}).to_csv(sample, index=False)
    result = CliRunner().invoke(app, ["init-dataset", str(sample), "--name", "x", "--source", "/tmp/x"])
    assert result.exit_code == 2 and "timestamp" in result.output and "Traceback" not in result.output


def test_volume_bounds_are_relative_to_recent_history(spec):
    ds = spec.dataset.model_copy(update={"contract": spec.dataset.contract.model_copy(
        update={"volume": VolumeRule(min_history=3)})})
    assert check_volume(10, [100, 100], ds, DS) == {"checked": False, "history": 2}
    assert check_volume(120, [100, 90, 110], ds, DS)["checked"]
    with pytest.raises(ContractViolation, match="row_volume"):
        check_volume(30, [100, 90, 110], ds, DS)
    with pytest.raises(ContractViolation, match="row_volume"):
        check_volume(500, [100, 90, 110], ds, DS)


def test_freshness_is_relative_to_the_interval_not_now(spec):
    from datetime import UTC, datetime

    ds = spec.dataset.model_copy(update={"contract": spec.dataset.contract.model_copy(
        update={"freshness_hours": 3})})
    check_freshness(datetime(2026, 1, 5, 22, tzinfo=UTC), ds, DS)
    with pytest.raises(ContractViolation, match="freshness"):
        check_freshness(datetime(2026, 1, 5, 12, tzinfo=UTC), ds, DS)


def test_binary_text_is_an_encoding_failure(spec):
    frame = generate_day(date.fromisoformat(DS), spec.generator, bad_records=False).head(5)
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    schema = schema.set(schema.get_field_index("country"), pa.field("country", pa.binary()))
    with pytest.raises(ContractViolation) as err:
        check_schema(schema, spec.dataset, DS)
    assert err.value.rule == "encoding"
