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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.config import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client  # pragma: no cover
else:
    S3Client = Any

ZONES = ("raw", "curated", "quarantine", "features", "predictions", "reports", "mlflow")
MANIFEST = "_manifest.json"


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

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()


def s3_client(settings: Settings | None = None) -> S3Client:
    """A boto3 S3 client for the configured endpoint and credentials."""
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
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
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


def partition_prefix(dataset: str, ds: str) -> str:
    return f"{dataset}/ds={ds}/"


def df_to_parquet_bytes(df: pd.DataFrame) -> bytes:
    """Deterministic Parquet bytes for a frame (same frame → same bytes)."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def write_partition(
    df: pd.DataFrame,
    *,
    zone: str,
    dataset: str,
    ds: str,
    source: str = "",
    run_id: str = "",
    extra: dict[str, Any] | None = None,
    settings: Settings | None = None,
    client: S3Client | None = None,
) -> Manifest:
    """Atomically replace one daily partition with ``df``.

    The data object is written under a content-addressed key first; the manifest
    put is the commit; objects of earlier attempts are removed afterwards.
    """
    settings = settings or get_settings()
    client = client or s3_client(settings)
    bucket = settings.bucket(zone)
    prefix = partition_prefix(dataset, ds)
    body = df_to_parquet_bytes(df)
    digest = hashlib.sha256(body).hexdigest()
    key = f"{prefix}part-{digest[:16]}.parquet"
    put = client.put_object(Bucket=bucket, Key=key, Body=body)
    file_entry = {
        "key": key,
        "rows": len(df),
        "bytes": len(body),
        "sha256": digest,
        "etag": put.get("ETag", "").strip('"'),
        "version_id": put.get("VersionId"),
    }
    manifest = Manifest(
        dataset=dataset,
        zone=zone,
        ds=ds,
        rows=len(df),
        content_hash=digest,
        schema=str(pa.Schema.from_pandas(df, preserve_index=False)),
        files=[file_entry],
        source=source,
        run_id=run_id,
        extra=extra or {},
    )
    client.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=manifest.to_json())
    _remove_stale(client, bucket, prefix, keep={key, prefix + MANIFEST})
    return manifest


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
    return Manifest(**json.loads(body))


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

