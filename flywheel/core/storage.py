"""Object storage (any S3 API) and the partition contract.

Layout: one bucket per zone (``<prefix>-raw``, ``-curated``, ``-quarantine``,
``-features``, ``-predictions``, ``-reports``, ``-mlflow``); inside it
``<dataset>/ds=<YYYY-MM-DD>/``. A partition is committed by its manifest
(``_manifest.json``): readers only read the files the manifest lists, so a
partition is never seen half-written, and a rerun of the same date replaces it.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.core.config import Settings, get_settings
from flywheel.core.layout import MANIFEST, ZONES, partition_prefix  # the layout's one home

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any


class StorageError(RuntimeError):
    """An object-store operation failed or found an inconsistent partition."""


class PartitionNotFound(StorageError):
    """No committed manifest exists for the partition."""


@dataclass(frozen=True)
class Manifest:
    dataset: str
    zone: str
    ds: str
    rows: int
    content_hash: str
    schema: str
    files: list[dict[str, Any]]
    source: str = ""
    run_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Each input object: uri, size and the version that was read (S3 VersionId/ETag, or mtime).
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()


def s3_client(
    settings: Settings | None = None,
    *,
    max_attempts: int = 5,
    connect_timeout: float = 5,
    read_timeout: float = 60,
) -> S3Client:
    """A boto3 S3 client for the configured endpoint and credentials.

    Readers that must answer quickly (the Prometheus exporter) pass fewer attempts and
    shorter timeouts. Raises :class:`StorageError` when no credentials are configured.
    """
    import boto3
    from botocore.config import Config

    settings = settings or get_settings()
    if settings.s3_access_key is None or settings.s3_secret_key is None:
        raise StorageError(
            "no S3 credentials configured: run `flywheel up` (embedded profile) or set "
            "FLYWHEEL_S3_ACCESS_KEY / FLYWHEEL_S3_SECRET_KEY"
        )
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key.get_secret_value(),
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        config=Config(
            s3={"addressing_style": settings.s3_addressing_style},
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        ),
    )


def ensure_buckets(settings: Settings | None = None, *, client: S3Client | None = None) -> list[str]:
    """Create every zone's bucket if missing (idempotent); returns the bucket names."""
    settings = settings or get_settings()
    client = client or s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    names = [settings.bucket(zone) for zone in ZONES]
    for name in names:
        if name not in existing:
            client.create_bucket(Bucket=name)
    return names


def df_to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes for a frame (same frame → same bytes)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, **PARQUET_OPTIONS)
    return buf.getvalue()


# One writer configuration everywhere: the same rows give the same bytes.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "write_statistics": True}
ROW_GROUP_ROWS = 256 * 1024
# Objects above this size are uploaded in parts (bounded memory, resumable by a rerun).
_TRANSFER_CHUNK = 16 * 1024 * 1024


def write_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema, path: Path) -> int:
    """Stream record batches into one Parquet file; returns the number of rows written."""
    rows = 0
    with pq.ParquetWriter(path, schema, **PARQUET_OPTIONS) as writer:
        for batch in batches:
            if batch.num_rows:
                writer.write_batch(batch.cast(schema) if batch.schema != schema else batch,
                                   row_group_size=ROW_GROUP_ROWS)
                rows += batch.num_rows
    return rows


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_partition(
    df: pd.DataFrame,
    *,
    zone: str,
    dataset: str,
    ds: str,
    source: str = "",
    run_id: str = "",
    extra: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    settings: Settings | None = None,
    client: S3Client | None = None,
) -> Manifest:
    """Atomically replace one daily partition with ``df`` (see :func:`commit_file`)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    with tempfile.TemporaryDirectory(prefix="flywheel-part-") as tmp:
        path = Path(tmp) / "part.parquet"
        pq.write_table(table, path, row_group_size=ROW_GROUP_ROWS, **PARQUET_OPTIONS)
        return commit_file(path, zone=zone, dataset=dataset, ds=ds, rows=len(df), schema=table.schema,
                           source=source, run_id=run_id, extra=extra, inputs=inputs,
                           settings=settings, client=client)


def commit_file(
    path: Path,
    *,
    zone: str,
    dataset: str,
    ds: str,
    rows: int,
    schema: pa.Schema,
    source: str = "",
    run_id: str = "",
    extra: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    settings: Settings | None = None,
    client: S3Client | None = None,
) -> Manifest:
    """Atomically replace one daily partition with the Parquet file at ``path``.

    The data object is uploaded (in parts when large) under a content-addressed
    key first; the manifest put is the commit; objects of earlier attempts are
    removed afterwards. A writer killed at any point leaves the previous manifest,
    so readers see the old partition or the new one, never a mix.
    """
    from boto3.s3.transfer import TransferConfig

    settings = settings or get_settings()
    client = client or s3_client(settings)
    bucket = settings.bucket(zone)
    prefix = partition_prefix(dataset, ds)
    digest = file_sha256(path)
    key = f"{prefix}part-{digest[:16]}.parquet"
    client.upload_file(str(path), bucket, key, Config=TransferConfig(
        multipart_threshold=_TRANSFER_CHUNK, multipart_chunksize=_TRANSFER_CHUNK, max_concurrency=2))
    head = client.head_object(Bucket=bucket, Key=key)
    file_entry = {
        "key": key,
        "rows": rows,
        "bytes": path.stat().st_size,
        "sha256": digest,
        "etag": head.get("ETag", "").strip('"'),
        "version_id": head.get("VersionId"),
    }
    manifest = Manifest(
        dataset=dataset,
        zone=zone,
        ds=ds,
        rows=rows,
        content_hash=digest,
        schema=str(_plain_schema(schema)),
        files=[file_entry],
        source=source,
        run_id=run_id,
        extra=extra or {},
        inputs=inputs or [],
    )
    client.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=manifest.to_json())
    _remove_stale(client, bucket, prefix, keep={key, prefix + MANIFEST})
    _abort_uploads(client, bucket, prefix)
    return manifest


def _abort_uploads(client: S3Client, bucket: str, prefix: str) -> None:
    """Parts left by a killed writer of this partition are dropped by the next commit."""
    for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    """The schema without pandas metadata (which varies with the writer, not the data)."""
    return schema.remove_metadata()


def _remove_stale(client: S3Client, bucket: str, prefix: str, *, keep: set[str]) -> None:
    stale = [
        {"Key": obj["Key"]}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if obj["Key"] not in keep
    ]
    for start in range(0, len(stale), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": stale[start : start + 1000]})


def read_manifest(
    *, zone: str, dataset: str, ds: str, settings: Settings | None = None, client: S3Client | None = None
) -> Manifest:
    settings = settings or get_settings()
    client = client or s3_client(settings)
    key = partition_prefix(dataset, ds) + MANIFEST
    try:
        body = client.get_object(Bucket=settings.bucket(zone), Key=key)["Body"].read()
    except client.exceptions.NoSuchKey as exc:
        raise PartitionNotFound(f"no committed partition {zone}/{dataset}/ds={ds}") from exc
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in json.loads(body).items() if k in known})


def read_partition(
    *, zone: str, dataset: str, ds: str, settings: Settings | None = None, client: S3Client | None = None
) -> pd.DataFrame:
    """Read the committed files of one partition; raises :class:`PartitionNotFound`."""
    settings = settings or get_settings()
    client = client or s3_client(settings)
    manifest = read_manifest(zone=zone, dataset=dataset, ds=ds, settings=settings, client=client)
    frames = []
    for entry in manifest.files:
        body = client.get_object(Bucket=settings.bucket(zone), Key=entry["key"])["Body"].read()
        if hashlib.sha256(body).hexdigest() != entry["sha256"]:
            raise StorageError(f"content hash mismatch for {zone}/{entry['key']}")
        frames.append(pq.read_table(io.BytesIO(body)).to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def download_partition(
    *, zone: str, dataset: str, ds: str, dest: Path,
    settings: Settings | None = None, client: S3Client | None = None,
) -> tuple[Manifest, list[Path]]:
    """Stream the committed files of one partition to ``dest`` (hash-checked, bounded memory).

    For readers that scan instead of loading (duckdb, ``iter_batches``). Raises
    :class:`PartitionNotFound` or :class:`StorageError` on a content-hash mismatch.
    """
    settings = settings or get_settings()
    client = client or s3_client(settings)
    manifest = read_manifest(zone=zone, dataset=dataset, ds=ds, settings=settings, client=client)
    dest.mkdir(parents=True, exist_ok=True)
    paths = []
    for entry in manifest.files:
        target = dest / f"{dataset.replace('/', '_')}-{ds}-{entry['sha256'][:16]}.parquet"
        if not (target.is_file() and file_sha256(target) == entry["sha256"]):
            client.download_file(settings.bucket(zone), entry["key"], str(target))
            if file_sha256(target) != entry["sha256"]:
                raise StorageError(f"content hash mismatch for {zone}/{entry['key']}")
        paths.append(target)
    return manifest, paths


def list_partitions(
    *, zone: str, dataset: str, settings: Settings | None = None, client: S3Client | None = None
) -> list[str]:
    """Dates (``YYYY-MM-DD``) of the committed partitions of a dataset, sorted."""
    settings = settings or get_settings()
    client = client or s3_client(settings)
    dates = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=settings.bucket(zone), Prefix=f"{dataset}/ds="
    ):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/" + MANIFEST):
                dates.append(obj["Key"].split("ds=")[1].split("/")[0])
    return sorted(dates)


def put_bytes(
    zone: str, key: str, body: bytes, *, content_type: str = "application/octet-stream",
    settings: Settings | None = None, client: S3Client | None = None,
) -> str:
    """Put one object; returns its ``s3://`` URI."""
    settings = settings or get_settings()
    client = client or s3_client(settings)
    client.put_object(Bucket=settings.bucket(zone), Key=key, Body=body, ContentType=content_type)
    return f"s3://{settings.bucket(zone)}/{key}"


def get_bytes(zone: str, key: str, *, settings: Settings | None = None, client: S3Client | None = None) -> bytes:
    settings = settings or get_settings()
    client = client or s3_client(settings)
    return bytes(client.get_object(Bucket=settings.bucket(zone), Key=key)["Body"].read())


def list_keys(
    zone: str, prefix: str, *, settings: Settings | None = None, client: S3Client | None = None
) -> list[str]:
    settings = settings or get_settings()
    client = client or s3_client(settings)
    return [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=settings.bucket(zone), Prefix=prefix
        )
        for obj in page.get("Contents", [])
    ]


def utcnow() -> datetime:
    return datetime.now(UTC)


def delete_partition(
    *, zone: str, dataset: str, ds: str, settings: Settings | None = None, client: S3Client | None = None
) -> None:
    """Withdraw a partition: the manifest goes first, so readers never see a partial one."""
    settings = settings or get_settings()
    client = client or s3_client(settings)
    prefix = partition_prefix(dataset, ds)
    client.delete_object(Bucket=settings.bucket(zone), Key=prefix + MANIFEST)
    _remove_stale(client, settings.bucket(zone), prefix, keep=set())

