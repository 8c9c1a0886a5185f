"""Dataset contracts as data: replay a quarantined batch, and draft a spec from a sample file.

* :func:`replay` re-processes one data interval after its contract or its data was
  fixed: ingest again (or re-validate the raw partition when the source is gone),
  validate, and optionally recompute and materialize the interval's features.
* :func:`draft_spec` infers a dataset contract (types, nullability, ranges, small
  allowed sets, unique key) from a sample CSV / Parquet / JSON Lines file, so a new
  dataset is onboarded by reviewing one YAML file, not by writing Python.
"""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import DataSpec, PipelineSpec

log = logging.getLogger(__name__)
ALLOWED_SET_MAX = 20  # a text column with at most this many distinct values gets an allowed set
SAMPLE_ROWS = 100_000


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


def _sample(path: Path, fmt: str) -> pa.Table:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        batches = parquet.iter_batches(batch_size=SAMPLE_ROWS)
        first = next(batches, None)
        return pa.Table.from_batches([first]) if first is not None else parquet.schema_arrow.empty_table()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    import pyarrow.json as pjson

    return pjson.read_json(path)


def _column_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return "datetime"
    return "string"


def _column_rule(column: pa.ChunkedArray, kind: str) -> dict[str, Any]:
    import pyarrow.compute as pc

    rule: dict[str, Any] = {"type": kind, "nullable": column.null_count > 0}
    if kind in ("int", "float") and len(column) > column.null_count:
        bounds = pc.min_max(column)
        rule["min"], rule["max"] = float(bounds["min"].as_py()), float(bounds["max"].as_py())
    if kind == "string":
        distinct = pc.unique(column.drop_null())
        if len(distinct) <= ALLOWED_SET_MAX and len(column) >= 10 * max(len(distinct), 1):
            rule["allowed"] = sorted(str(v) for v in distinct.to_pylist())
    return rule


def draft_spec(sample: Path, *, name: str, source: str, timestamp: str | None = None,
               key: str | None = None, label: str | None = None) -> dict[str, Any]:
    """A dataset spec (``dataset:`` section) inferred from a sample file; review before use.

    Raises ValueError when the format is unknown or no timestamp/key column can be chosen.
    """
    suffix = sample.suffix.lower().lstrip(".")
    fmt = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl"}.get(suffix)
    if fmt is None:
        raise ValueError(f"{sample}: unknown format {suffix!r} (expected .csv, .parquet or .jsonl)")
    table = _sample(sample, fmt)
    kinds = {f.name: _column_type(f.type) for f in table.schema}
    timestamp = timestamp or next((n for n, k in kinds.items() if k == "datetime"), None)
    if timestamp is None or timestamp not in kinds:
        raise ValueError(f"{sample}: no timestamp column found; pass --timestamp")
    import pyarrow.compute as pc

    def is_unique(n: str) -> bool:
        col = table[n]
        return col.null_count == 0 and len(pc.unique(col)) == len(col)

    key = key or next((n for n in kinds if n != timestamp and is_unique(n)), None)
    if key is None or key not in kinds:
        raise ValueError(f"{sample}: no unique key column found; pass --key")
    columns = {n: _column_rule(table[n], k) for n, k in kinds.items()}
    columns[key] |= {"unique": True, "nullable": False}
    columns[timestamp]["nullable"] = False
    if label and label in columns:
        columns[label].pop("min", None)
        columns[label].pop("max", None)
    return {
        "name": name,
        "source": source,
        "format": fmt,
        "timestamp": timestamp,
        "key": key,
        "contract": {
            "columns": columns,
            "timestamp_in_interval": True,
            "volume": {"history": 7, "min_history": 3, "min_ratio": 0.5, "max_ratio": 2.0},
        },
    }
