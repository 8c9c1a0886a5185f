"""A dataset onboarded from a drafted spec runs through ingest → validate on the real store."""

from pathlib import Path

import pandas as pd
import pytest

from flywheel.core import storage
from flywheel.core.spec import load_any_spec_file
from flywheel.data.ingest import ingest
from flywheel.data.validation import validate_partition
from tests.unit.test_dataset_onboarding import draft

pytestmark = pytest.mark.integration


def test_drafted_dataset_is_ingested_and_validated(services, tmp_path):
    spec = load_any_spec_file(draft(tmp_path))
    ds = "2026-02-01"
    landing = Path(spec.source_for(ds, services))
    landing.mkdir(parents=True)
    day = pd.DataFrame({
        "order_id": [f"o-{i}" for i in range(40)] + ["o-1"],  # one duplicate key
        "placed_at": list(pd.date_range(f"{ds}T00:10", periods=40, freq="30min", tz="UTC")) +
                     [pd.Timestamp(f"{ds}T22:00", tz="UTC")],
        "customer_id": list(range(40)) + [1],
        "total": [12.0 + i for i in range(41)],
        "channel": ["web", "app"] * 20 + ["web"],
    })
    day.to_csv(landing / "part-0.csv", index=False)
    assert ingest(spec, ds, run_id="onboard", settings=services).rows == 41
    summary = validate_partition(spec, ds, run_id="onboard", settings=services)
    curated = storage.read_partition(zone="curated", dataset="orders", ds=ds, settings=services)
    quarantined = storage.read_partition(zone="quarantine", dataset="orders", ds=ds, settings=services)
    assert len(curated) + len(quarantined) == 41, summary
    assert len(quarantined) >= 1 and quarantined["_failed_rules"].str.contains("order_id").all()
