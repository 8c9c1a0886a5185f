"""Sources: where a dataset's daily batches come from, read as Arrow record batches.

A dataset spec names its source as a location template (``{home}``, ``{ds}``):

* a local directory or file (``{home}/landing/transactions/ds={ds}``),
* an S3 prefix or object (``s3://bucket/transactions/ds={ds}/``) in the configured
  object store.

Data always arrives as files: a use case with synthetic data (the examples) writes them there
itself, as any upstream system would.

Files are CSV, Parquet or JSON Lines and are read in bounded memory: Parquet by row
group, CSV and JSON Lines in blocks, each typed by the dataset contract. A file that
cannot be read (empty, truncated, wrong encoding, a value of the wrong type) is a
batch-level :class:`~flywheel.data.validation.ContractViolation` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flywheel.core.config import Settings
from flywheel.core.spec import DatasetSpec, DataSpec
from flywheel.data.validation import ContractViolation

SUFFIXES = {"parquet": (".parquet",), "csv": (".csv",), "jsonl": (".jsonl", ".json", ".ndjson")}
ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "datetime": pa.timestamp("us", tz="UTC"),
    "bool": pa.bool_(),
}
BLOCK_BYTES = 32 * 1024 * 1024


class SourceNotFound(FileNotFoundError):
    """The source partition for a data interval does not exist (yet)."""


@dataclass(frozen=True)
class SourceObject:
    """One input file and the exact version that was read (recorded in the manifest)."""

    uri: str
    size: int
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "size": self.size, "version": self.version}


def location(spec: DataSpec, ds: str, settings: Settings) -> str:
    return spec.source_for(ds, settings)


def list_objects(dataset: DatasetSpec, where: str, settings: Settings) -> list[SourceObject]:
    """The files of one source partition, sorted by URI (empty while it has not arrived)."""
    suffixes = SUFFIXES[dataset.format]
    if where.startswith("s3://"):
        return _list_s3(where, suffixes, settings)
    path = Path(where)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(suffixes))
    else:
        files = []
    return [SourceObject(uri=str(p), size=p.stat().st_size, version=f"mtime_ns={p.stat().st_mtime_ns}")
            for p in files]


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _list_s3(where: str, suffixes: tuple[str, ...], settings: Settings) -> list[SourceObject]:
    from flywheel.core.storage import s3_client

    client = s3_client(settings)
    bucket, prefix = _split_s3(where)
    out = []
    try:
        pages = list(client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix))
    except client.exceptions.NoSuchBucket:
        return []
    for page in pages:
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(suffixes):
                head = client.head_object(Bucket=bucket, Key=obj["Key"])
                version = head.get("VersionId") or "etag=" + head.get("ETag", "").strip('"')
                out.append(SourceObject(uri=f"s3://{bucket}/{obj['Key']}", size=int(obj["Size"]),
                                        version=str(version)))
    return sorted(out, key=lambda o: o.uri)


def fetch(obj: SourceObject, dest: Path, settings: Settings) -> Path:
    """A local path holding exactly the recorded version of ``obj`` (S3 objects streamed to ``dest``)."""
    if not obj.uri.startswith("s3://"):
        return Path(obj.uri)
    from flywheel.core.storage import s3_client

    bucket, key = _split_s3(obj.uri)
    target = dest / key.replace("/", "__")
    extra = {} if obj.version.startswith("etag=") else {"VersionId": obj.version}
    s3_client(settings).download_file(bucket, key, str(target), ExtraArgs=extra or None)
    return target


def contract_types(dataset: DatasetSpec) -> dict[str, pa.DataType]:
    return {name: ARROW_TYPES[rule.type] for name, rule in dataset.contract.columns.items()}


def _timestamps(dataset: DatasetSpec) -> dict[str, pa.DataType]:
    """Datetime columns are parsed as UTC timestamps; other types are inferred, then checked
    against the contract by validation (so a wrong type quarantines the batch row for row)."""
    return {n: t for n, t in contract_types(dataset).items() if pa.types.is_timestamp(t)}


def open_batches(
    path: Path, dataset: DatasetSpec, *, ds: str, uri: str, batch_rows: int
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """Schema and a stream of record batches of one file; raises :class:`ContractViolation`.

    Datetime columns of CSV and JSON Lines are parsed as UTC timestamps; every other
    type is inferred (Parquet keeps its own) and checked against the contract by
    validation. Invalid UTF-8 in a text file yields a binary column (an encoding failure).
    """
    if path.stat().st_size == 0:
        raise ContractViolation(dataset.name, ds, "non_empty", f"{uri} is an empty file")
    try:
        schema, batches = _open(path, dataset, batch_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        raise classify(exc, dataset, ds, uri) from exc
    return schema, _guarded(batches, dataset, ds, uri)


def _open(path: Path, dataset: DatasetSpec, batch_rows: int) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    if dataset.format == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        return parquet.schema_arrow, parquet.iter_batches(batch_size=batch_rows)
    if dataset.format == "csv":
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(
            path,
            read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, encoding=dataset.encoding),
            convert_options=pcsv.ConvertOptions(column_types=_timestamps(dataset), strings_can_be_null=True),
        )
        return reader.schema, iter(reader)
    import pyarrow.json as pjson

    declared = pa.schema(list(_timestamps(dataset).items()))
    reader = pjson.open_json(
        path,
        read_options=pjson.ReadOptions(block_size=BLOCK_BYTES),
        parse_options=pjson.ParseOptions(explicit_schema=declared, unexpected_field_behavior="infer"),
    )
    return reader.schema, iter(reader)


def _guarded(batches: Iterator[pa.RecordBatch], dataset: DatasetSpec, ds: str, uri: str) -> Iterator[pa.RecordBatch]:
    """Errors found mid-stream (a truncated block, a bad value) become contract violations."""
    try:
        yield from batches
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as exc:
        raise classify(exc, dataset, ds, uri) from exc


def classify(exc: BaseException, dataset: DatasetSpec, ds: str, uri: str) -> ContractViolation:
    """Name the broken rule of an unreadable file."""
    text = str(exc)
    lowered = text.lower()
    if "utf8" in lowered or "utf-8" in lowered or isinstance(exc, UnicodeDecodeError):
        rule = "encoding"
    elif "conversion error" in lowered or "in column" in lowered or "to convert" in lowered:
        rule = "column_type"
    elif "expected" in lowered and "columns" in lowered:
        rule = "well_formed"
    elif "empty" in lowered:
        rule = "non_empty"
    else:
        rule = "readable"  # truncated or corrupt file (bad footer, cut block)
    return ContractViolation(dataset.name, ds, rule, f"{uri}: {text.splitlines()[0] if text else type(exc).__name__}")
