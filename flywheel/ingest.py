"""Ingest: copy one daily source partition into the raw zone of the object store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flywheel import storage
from flywheel.config import Settings, get_settings
from flywheel.spec import PipelineSpec

_READERS = {
    "parquet": ("*.parquet", pd.read_parquet),
    "csv": ("*.csv", pd.read_csv),
    "jsonl": ("*.jsonl", lambda p: pd.read_json(p, lines=True)),
}


class SourceNotFound(FileNotFoundError):
    """The source partition for a data interval does not exist."""


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    ds: str
    rows: int
    uri: str
    content_hash: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def source_files(spec: PipelineSpec, ds: str, settings: Settings) -> list[Path]:
    """The files of the source partition of ``ds`` (empty while it has not arrived)."""
    location = Path(spec.source_for(ds, settings))
    pattern, _ = _READERS[spec.dataset.format]
    return sorted(location.glob(pattern)) if location.is_dir() else []


def read_source(spec: PipelineSpec, ds: str, settings: Settings) -> tuple[pd.DataFrame, str]:
    """Read every file of the source partition of ``ds``; raises :class:`SourceNotFound`."""
    location = Path(spec.source_for(ds, settings))
    _, reader = _READERS[spec.dataset.format]
    files = source_files(spec, ds, settings)
    if not files:
        raise SourceNotFound(
            f"dataset {spec.dataset.name!r}: no {spec.dataset.format} files for ds={ds} in {location}"
        )
    frame = pd.concat([reader(f) for f in files], ignore_index=True)
    return frame, str(location)


def ingest(spec: PipelineSpec, ds: str, *, run_id: str = "", settings: Settings | None = None) -> IngestResult:
    """Replace the raw partition of ``ds`` with the source's rows (idempotent)."""
    settings = settings or get_settings()
    frame, source = read_source(spec, ds, settings)
    manifest = storage.write_partition(
        frame, zone="raw", dataset=spec.dataset.name, ds=ds, source=source, run_id=run_id, settings=settings
    )
    return IngestResult(
        dataset=spec.dataset.name,
        ds=ds,
        rows=manifest.rows,
        uri=f"s3://{settings.bucket('raw')}/{manifest.files[0]['key']}",
        content_hash=manifest.content_hash,
        source=source,
    )
