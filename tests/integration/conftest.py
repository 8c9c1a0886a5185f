"""A real embedded stack (SeaweedFS + MLflow) for integration tests, on its own ports and home."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta

import pytest

from flywheel.core.config import ComputeSettings, Settings
from flywheel.stack import launcher as stack
from tests.ports import ports

TEST_PORTS = ports(24000)
FIRST_DAY = date(2026, 1, 1)
DAYS = 9


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("flywheel-home")
    settings = Settings(home=home, ports=TEST_PORTS, champion_refresh_s=1.0, prediction_flush_s=1.0)
    settings = stack.up(settings, services=["seaweedfs", "mlflow"])
    try:
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="session")
def loaded(services: Settings, spec) -> dict:
    """DAYS days of generated data taken through ingest → validate → features, in-process."""
    from examples.fraud.generator import write_landing
    from flywheel.data.ingest import ingest
    from flywheel.data.validation import validate_partition
    from flywheel.features import store as features

    write_landing(services.home / "landing", FIRST_DAY, DAYS, spec.generator)
    features.apply(spec, services)
    summaries = {}
    for offset in range(DAYS):
        day = FIRST_DAY + timedelta(days=offset)
        ds = day.isoformat()
        ingested = ingest(spec, ds, run_id="test", settings=services)
        summaries[ds] = {"ingest": ingested, "validate": validate_partition(spec, ds, settings=services)}
        features.compute_aggregates(spec, day, settings=services)
        features.materialize(spec, day, settings=services)
    return summaries


@pytest.fixture(scope="session")
def dask_compute(tmp_path_factory) -> Iterator[ComputeSettings]:
    """A real local Dask cluster (scheduler + 2 workers, separate processes on 127.0.0.1)."""
    from tests.integration.dask_cluster import local_cluster

    with local_cluster(tmp_path_factory.mktemp("dask")) as compute:
        yield compute
