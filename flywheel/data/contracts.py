"""Dataset contracts as data: replay a quarantined batch once its contract or data is fixed.

:func:`replay` re-processes one data interval: ingest again (or re-validate the raw
partition when the source is gone), validate, and optionally recompute and materialize
the interval's features. Drafting a contract from samples: :mod:`flywheel.data.onboarding`.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import DataSpec, PipelineSpec

log = logging.getLogger(__name__)


def replay(
    spec: DataSpec, ds: str, *, run_id: str = "replay", settings: Settings | None = None,
    features: bool = True,
) -> dict[str, Any]:
    """Process the interval ``ds`` again; raises ContractViolation if it still breaks the contract."""
    from flywheel.core import storage
    from flywheel.data.ingest import SourceNotFound, ingest
    from flywheel.data.validation import validate_partition

    settings = settings or get_settings()
    out: dict[str, Any] = {"dataset": spec.dataset.name, "ds": ds}
    try:
        out["ingest"] = ingest(spec, ds, run_id=run_id, settings=settings).to_dict()
    except SourceNotFound:
        # the source is gone: the committed raw partition is the batch to re-validate
        storage.read_manifest(zone="raw", dataset=spec.dataset.name, ds=ds, settings=settings)
        out["ingest"] = {"reused_raw": True}
    out["validate"] = validate_partition(spec, ds, run_id=run_id, settings=settings)
    if features and isinstance(spec, PipelineSpec):  # a dataset-only spec has no features
        from flywheel.features import store as feats

        day = date.fromisoformat(ds)
        feats.apply(spec, settings)
        out["features"] = feats.compute_aggregates(spec, day, settings=settings).to_dict()
        out["materialized"] = feats.materialize(spec, day, settings=settings)
    return out
