"""The stage sequences, written once: a data day, a replay, a training run, a monitoring day.

Airflow tasks (flywheel.airflow.factory), the CLI (``flywheel replay``), the simulation of weeks
of production (examples/) and the tests all call these, so the order of the stages has one home.
Each step is keyed on its logical date and idempotent: a rerun replaces, never appends.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import DataSpec, PipelineSpec

if TYPE_CHECKING:
    from flywheel.monitoring.policy import Decision
    from flywheel.training.trainer import TrainResult


def feature_day(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> dict[str, Any]:
    """Apply the use case's Feast objects, compute the day's aggregates, materialize them online."""
    from flywheel.features import store

    settings = settings or get_settings()
    store.apply(spec, settings)
    out = store.compute_aggregates(spec, ds, settings=settings).to_dict()
    out["materialized"] = store.materialize(spec, ds, settings=settings)
    return out


def data_day(spec: DataSpec, ds: str, *, run_id: str, settings: Settings | None = None,
             features: bool = True, reuse_raw: bool = False) -> dict[str, Any]:
    """ingest → validate (quarantine) → features (use cases only) for the interval ``ds``.

    ``reuse_raw``: when the source partition is gone, re-validate the committed raw partition
    (a replay after a contract fix). Raises ``ContractViolation`` if the batch breaks the contract.
    """
    from flywheel.core import storage
    from flywheel.data.ingest import SourceNotFound, ingest
    from flywheel.data.validation import validate_partition

    settings = settings or get_settings()
    out: dict[str, Any] = {"dataset": spec.dataset.name, "ds": ds}
    try:
        out["ingest"] = ingest(spec, ds, run_id=run_id, settings=settings).to_dict()
    except SourceNotFound:
        if not reuse_raw:
            raise
        storage.read_manifest(zone="raw", dataset=spec.dataset.name, ds=ds, settings=settings)
        out["ingest"] = {"reused_raw": True}
    out["validate"] = validate_partition(spec, ds, run_id=run_id, settings=settings)
    if features and isinstance(spec, PipelineSpec):  # a dataset-only spec has no features
        out["features"] = feature_day(spec, date.fromisoformat(ds), settings=settings)
    return out


def replay(spec: DataSpec, ds: str, *, run_id: str = "replay", settings: Settings | None = None,
           features: bool = True) -> dict[str, Any]:
    """Process ``ds`` again after its contract or data was fixed (the raw partition if the source is gone)."""
    return data_day(spec, ds, run_id=run_id, settings=settings, features=features, reuse_raw=True)


def training_run(spec: PipelineSpec, end: date, *, reason: str = "scheduled",
                 settings: Settings | None = None) -> TrainResult:
    """Train every candidate on the window ending at ``end``, register the best, gate it."""
    from flywheel.training.trainer import train

    return train(spec, end=end, reason=reason, settings=settings)


def monitoring_day(spec: PipelineSpec, ds: date, *, run_id: str, settings: Settings | None = None,
                   now: datetime | None = None) -> Decision:
    """Every check of the day (drift, performance, skew, quality, freshness), then the policy."""
    from flywheel.monitoring import checks

    settings = settings or get_settings()
    observed = checks.run_checks(spec, ds, settings=settings)
    return checks.conclude(spec, observed, run_id=run_id, settings=settings, now=now)
