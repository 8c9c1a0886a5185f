"""Ingest: copy one daily source partition into the raw zone of the object store.

Any source of :mod:`flywheel.data.sources` (local or S3 CSV / Parquet / JSON Lines) is
streamed batch by batch into one Parquet file, so memory stays bounded whatever the input
size, and committed atomically with a manifest that records the rows, schema, content hash,
each input's URI and version, and the producing run. The whole stage holds the partition's lease
(:func:`flywheel.core.lease.partition`): a second writer of the same day waits for it, or fails
with :class:`~flywheel.core.lease.PartitionBusy` naming the holder.
A file that cannot be read is quarantined as it is and raises
:class:`~flywheel.data.validation.ContractViolation`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flywheel.core import lease, storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import DataSpec
from flywheel.data import sources
from flywheel.data.sources import SourceNotFound, SourceObject
from flywheel.data.validation import ContractViolation

__all__ = ["IngestResult", "SourceNotFound", "ingest", "source_files", "source_objects"]
BATCH_ROWS = 256 * 1024


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


def source_objects(spec: DataSpec, ds: str, settings: Settings) -> list[SourceObject]:
    """The input objects of the partition of ``ds`` (empty while it has not arrived)."""
    where = sources.location(spec, ds, settings)
    return sources.list_objects(spec.dataset, where, settings)


def source_files(spec: DataSpec, ds: str, settings: Settings) -> list[str]:
    """URIs of the source partition of ``ds`` (what the arrival sensor waits for)."""
    return [obj.uri for obj in source_objects(spec, ds, settings)]


def _batches(
    spec: DataSpec, ds: str, obj: SourceObject, tmp: Path, settings: Settings
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    path = sources.fetch(obj, tmp, settings)
    return sources.open_batches(path, spec.dataset, ds=ds, uri=obj.uri, batch_rows=BATCH_ROWS)


def _unified(
    spec: DataSpec, ds: str, opened: list[tuple[SourceObject, pa.Schema, Iterator[pa.RecordBatch]]]
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """One stream over every file; files of one partition must share a schema."""
    schema = opened[0][1]
    for obj, other, _ in opened[1:]:
        if not other.remove_metadata().equals(schema.remove_metadata()):
            raise ContractViolation(spec.dataset.name, ds, "schema_drift",
                                    f"{obj.uri} has schema {other} but {opened[0][0].uri} has {schema}")

    def stream() -> Iterator[pa.RecordBatch]:
        for _, _, batches in opened:
            yield from batches

    return schema, stream()


def ingest(spec: DataSpec, ds: str, *, run_id: str = "", settings: Settings | None = None) -> IngestResult:
    """Replace the raw partition of ``ds`` with the source's rows (idempotent, bounded memory).

    Raises :class:`SourceNotFound` when nothing has arrived,
    :class:`~flywheel.data.validation.ContractViolation` (after quarantining the files as
    they are) when a file cannot be read, and :class:`~flywheel.core.lease.PartitionBusy` when
    another writer keeps the partition longer than ``settings.partition_lease_wait_s``.
    """
    settings = settings or get_settings()
    name = spec.dataset.name
    where = sources.location(spec, ds, settings)
    with lease.partition(name, ds, run_id=run_id, settings=settings) as held, \
            tempfile.TemporaryDirectory(prefix="flywheel-ingest-") as tmp_dir:
        objects = source_objects(spec, ds, settings)  # listed under the lease: what this writer commits
        if not objects:
            raise SourceNotFound(f"dataset {name!r}: no {spec.dataset.format} files for ds={ds} in {where}")
        tmp = Path(tmp_dir)
        try:
            opened = [(obj, *_batches(spec, ds, obj, tmp, settings)) for obj in objects]
            schema, stream = _unified(spec, ds, opened)
            out = tmp / "raw.parquet"
            rows = storage.write_batches(stream, schema, out)
        except ContractViolation as exc:
            quarantine_files(spec, ds, objects, exc, run_id=run_id, settings=settings, held=held)
            raise
        manifest = storage.commit_file(
            out, zone="raw", dataset=name, ds=ds, rows=rows, schema=schema, source=where, run_id=run_id,
            inputs=[o.to_dict() for o in objects], settings=settings, lease=held,
        )
    return IngestResult(
        dataset=name,
        ds=ds,
        rows=manifest.rows,
        uri=f"s3://{settings.bucket('raw')}/{manifest.files[0]['key']}",
        content_hash=manifest.content_hash,
        source=where,
    )


def quarantine_files(
    spec: DataSpec, ds: str, objects: list[SourceObject], exc: ContractViolation, *,
    run_id: str, settings: Settings, held: lease.Held,
) -> None:
    """Unreadable input: copy the files as they are to quarantine and withdraw raw and curated.

    The quarantine manifest is committed first; withdrawing the curated manifest is what switches
    readers of the day from the old unit (curated + the quarantine it carries) to this one.
    """
    client = storage.s3_client(settings)
    name = spec.dataset.name
    with tempfile.TemporaryDirectory(prefix="flywheel-quarantine-") as tmp_dir:
        parts = []
        for obj in objects:
            path = sources.fetch(obj, Path(tmp_dir), settings)
            digest = storage.file_sha256(path)
            parts.append(storage.Part("quarantine", path, -1, "unreadable", name=f"source-{digest[:16]}-"
                                      f"{Path(obj.uri).name}", sha256=digest, source_uri=obj.uri))
        storage.commit(parts, dataset=name, ds=ds, source=sources.location(spec, ds, settings), run_id=run_id,
                       extra={"batch_failure": exc.rule, "detail": exc.detail, "unreadable": True},
                       inputs=[o.to_dict() for o in objects], settings=settings, client=client, lease=held)
    for zone in ("curated", "raw"):
        storage.delete_partition(zone=zone, dataset=name, ds=ds, settings=settings, client=client, lease=held)
