"""Object storage (any S3 API) and the partition contract.

Layout: one bucket per zone (``<prefix>-raw``, ``-curated``, ``-quarantine``,
``-features``, ``-predictions``, ``-reports``, ``-mlflow``); inside it
``<dataset>/ds=<YYYY-MM-DD>/``. A partition is committed by its manifest
(``_manifest.json``): readers only read the files the manifest lists, so a
partition is never seen half-written, and a rerun of the same date replaces it.

One writer at a time: a commit runs under the partition's lease
(:func:`flywheel.core.lease.partition`, held by the whole stage or taken for the call) and puts
its manifest with a compare-and-set (``If-Match`` the manifest it read before uploading, or
``If-None-Match: *``), so even a writer that lost its lease cannot overwrite a newer commit.
Zones committed together (:data:`~flywheel.core.layout.UNIT_RECORD`: quarantine with curated)
have one commit: the curated manifest carries the quarantine manifest, and readers of quarantine
read it from there (:func:`read_manifest`), so both zones always show the same commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.core.config import Settings, get_settings
from flywheel.core.layout import MANIFEST, UNIT_RECORD, ZONES, partition_prefix  # the layout's one home
from flywheel.core.lease import Held
from flywheel.core.lease import partition as partition_lease
from flywheel.core.s3 import S3Client, StorageError, conditional_write_lost, s3_client  # re-exported


class PartitionNotFound(StorageError):
    """No committed manifest exists for the partition."""


class PartitionConflict(StorageError):
    """Another writer committed the partition while this one wrote it (the compare-and-set lost)."""


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
    # The manifests committed with this one (zone -> manifest), on the unit's record (curated).
    unit: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Part:
    """One local file of a commit: its zone, its rows (-1: not Parquet) and schema (or a label).

    ``name`` is the object's file name in the partition (default ``part-<sha256[:16]>.parquet``:
    content-addressed, so the same rows give the same key); ``sha256`` skips hashing it again.
    """

    zone: str
    path: Path
    rows: int
    schema: pa.Schema | str
    name: str = ""
    sha256: str = ""
    source_uri: str = ""


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
    lease: Held | None = None,
) -> Manifest:
    """Atomically replace one daily partition with the Parquet file at ``path`` (see :func:`commit`)."""
    return commit([Part(zone, path, rows, schema)], dataset=dataset, ds=ds, source=source, run_id=run_id,
                  extra=extra, inputs=inputs, settings=settings, client=client, lease=lease)[zone]


def commit(
    parts: Sequence[Part],
    *,
    dataset: str,
    ds: str,
    source: str = "",
    run_id: str = "",
    extra: dict[str, Any] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    settings: Settings | None = None,
    client: S3Client | None = None,
    lease: Held | None = None,
) -> dict[str, Manifest]:
    """Atomically replace one day of a dataset in each zone of ``parts``, all visible together.

    The first part's zone holds the commit: with parts of several zones, the others must be
    that zone's unit members (``UNIT_RECORD``), and its manifest carries theirs. Under the
    partition's lease (``lease``: the stage's, or one taken for the call), the data objects are
    uploaded (in parts when large) under content-addressed keys; the lease is renewed (a writer
    that lost it stops here); the manifest put is the commit, conditional on the manifest read
    before the upload; each member's manifest is then copied to its own zone for listings. Objects
    referenced neither by the new manifests nor by those they replace (a reader may still be
    fetching those) are removed afterwards, with multipart uploads of killed writers. A writer
    killed at any point leaves the previous manifests, so readers see the old partition or the
    new one, never a mix.

    Raises :class:`PartitionConflict` when another writer committed meanwhile,
    :class:`~flywheel.core.lease.LeaseLost` when this one lost the lease, and
    :class:`~flywheel.core.lease.PartitionBusy` when the lease stays taken.
    """
    settings = settings or get_settings()
    client = client or s3_client(settings)
    zones = list(dict.fromkeys(p.zone for p in parts))
    record, members = zones[0], zones[1:]
    if any(UNIT_RECORD.get(z) != record for z in members):
        raise ValueError(f"zones {members} are not committed with {record!r} (layout.UNIT_RECORD)")
    prefix = partition_prefix(dataset, ds)
    with _writer(dataset, ds, run_id=run_id, settings=settings, lease=lease) as held:
        before = {z: _committed_state(client, settings, z, dataset, ds) for z in zones}
        files = {z: [_upload(client, settings.bucket(z), prefix, p) for p in parts if p.zone == z] for z in zones}
        common = {"dataset": dataset, "ds": ds, "source": source, "run_id": run_id, "extra": extra or {},
                  "inputs": inputs or []}
        manifests = {z: _manifest(z, files[z], [p for p in parts if p.zone == z], common) for z in zones}
        manifests[record] = replace(manifests[record], unit={z: asdict(manifests[z]) for z in members})
        held.check()
        _put_manifest(client, settings.bucket(record), prefix, manifests[record], etag=before[record][0])
        for z in members:
            client.put_object(Bucket=settings.bucket(z), Key=prefix + MANIFEST, Body=manifests[z].to_json())
        for z in zones:
            keep = {f["key"] for f in manifests[z].files} | before[z][1] | {prefix + MANIFEST}
            _remove_stale(client, settings.bucket(z), prefix, keep=keep)
            _abort_uploads(client, settings.bucket(z), prefix)
    return manifests


@contextmanager
def _writer(dataset: str, ds: str, *, run_id: str, settings: Settings, lease: Held | None) -> Iterator[Held]:
    """The lease the caller holds for the partition, or one held for this call."""
    if lease is not None:
        yield lease
        return
    with partition_lease(dataset, ds, run_id=run_id, settings=settings) as held:
        yield held


def _upload(client: S3Client, bucket: str, prefix: str, part: Part) -> dict[str, Any]:
    """Upload one file of a commit; its manifest entry (key, rows, bytes, sha256, etag, version)."""
    from boto3.s3.transfer import TransferConfig

    digest = part.sha256 or file_sha256(part.path)
    key = prefix + (part.name or f"part-{digest[:16]}.parquet")
    client.upload_file(str(part.path), bucket, key, Config=TransferConfig(
        multipart_threshold=_TRANSFER_CHUNK, multipart_chunksize=_TRANSFER_CHUNK, max_concurrency=2))
    head = client.head_object(Bucket=bucket, Key=key)
    entry = {"key": key, "rows": part.rows, "bytes": part.path.stat().st_size, "sha256": digest,
             "etag": head.get("ETag", "").strip('"'), "version_id": head.get("VersionId")}
    return entry | ({"source_uri": part.source_uri} if part.source_uri else {})


def _manifest(zone: str, files: list[dict[str, Any]], parts: list[Part], common: dict[str, Any]) -> Manifest:
    digests = [str(f["sha256"]) for f in files]
    content_hash = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    rows = -1 if any(p.rows < 0 for p in parts) else sum(p.rows for p in parts)
    schema = parts[0].schema
    return Manifest(zone=zone, rows=rows, content_hash=content_hash, files=files,
                    schema=schema if isinstance(schema, str) else str(_plain_schema(schema)), **common)


def _put_manifest(client: S3Client, bucket: str, prefix: str, manifest: Manifest, *, etag: str | None) -> None:
    """The commit: put the manifest only if the partition's manifest is still the one read first."""
    from botocore.exceptions import ClientError

    condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
    try:
        client.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=manifest.to_json(),
                          ContentType="application/json", **condition)  # type: ignore[arg-type]
    except ClientError as exc:
        if not conditional_write_lost(exc):
            raise
        now = _get_manifest(client, bucket, prefix + MANIFEST)
        by = now[0].run_id if now else "a writer that has since withdrawn it"
        raise PartitionConflict(
            f"partition {manifest.zone}/{manifest.dataset}/ds={manifest.ds} was committed by {by!r} while "
            f"{manifest.run_id!r} wrote it: not overwriting; rerun the day to replace it") from exc


def _committed_state(client: S3Client, settings: Settings, zone: str, dataset: str,
                     ds: str) -> tuple[str | None, set[str]]:
    """(ETag of the zone's own manifest or None, every key its readers may be fetching now)."""
    key = partition_prefix(dataset, ds) + MANIFEST
    own = _get_manifest(client, settings.bucket(zone), key)
    keys = {str(f["key"]) for f in own[0].files} if own else set()
    record_zone = UNIT_RECORD.get(zone)
    record = _get_manifest(client, settings.bucket(record_zone), key) if record_zone else None
    if record is not None and zone in record[0].unit:
        keys |= {str(f["key"]) for f in record[0].unit[zone].get("files", [])}
    return (own[1] if own else None), keys


def _get_manifest(client: S3Client, bucket: str, key: str) -> tuple[Manifest, str] | None:
    """A manifest and its ETag, or None when there is none."""
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
    except client.exceptions.NoSuchKey:
        return None
    return Manifest.from_dict(json.loads(obj["Body"].read())), str(obj["ETag"])


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
    """The committed manifest of one partition; raises :class:`PartitionNotFound`.

    A zone committed with another (``UNIT_RECORD``: quarantine with curated) is read from that
    one's manifest while it carries it: both zones then always show the same commit. Without
    it (a batch quarantined whole, or written before units), the zone's own manifest stands.
    """
    settings = settings or get_settings()
    client = client or s3_client(settings)
    key = partition_prefix(dataset, ds) + MANIFEST
    record_zone = UNIT_RECORD.get(zone)
    if record_zone is not None:
        record = _get_manifest(client, settings.bucket(record_zone), key)
        if record is not None and zone in record[0].unit:
            return Manifest.from_dict(record[0].unit[zone])
    found = _get_manifest(client, settings.bucket(zone), key)
    if found is None:
        raise PartitionNotFound(f"no committed partition {zone}/{dataset}/ds={ds}")
    return found[0]


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
    dates = set(_manifest_dates(client, settings.bucket(zone), dataset))
    record_zone = UNIT_RECORD.get(zone)
    if record_zone is not None:  # committed by the record before its copy landed here
        for day in set(_manifest_dates(client, settings.bucket(record_zone), dataset)) - dates:
            record = _get_manifest(client, settings.bucket(record_zone), partition_prefix(dataset, day) + MANIFEST)
            if record is not None and zone in record[0].unit:
                dates.add(day)
    return sorted(dates)


def _manifest_dates(client: S3Client, bucket: str, dataset: str) -> list[str]:
    return [
        obj["Key"].split("ds=")[1].split("/")[0]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{dataset}/ds=")
        for obj in page.get("Contents", [])
        if obj["Key"].endswith("/" + MANIFEST)
    ]


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
    *, zone: str, dataset: str, ds: str, settings: Settings | None = None, client: S3Client | None = None,
    lease: Held | None = None,
) -> None:
    """Withdraw a partition: the manifest goes first, so readers never see a partial one.

    With ``lease`` (the writer's), raises :class:`~flywheel.core.lease.LeaseLost` instead of
    withdrawing when another writer took the partition over.
    """
    settings = settings or get_settings()
    client = client or s3_client(settings)
    prefix = partition_prefix(dataset, ds)
    if lease is not None:
        lease.check()
    client.delete_object(Bucket=settings.bucket(zone), Key=prefix + MANIFEST)
    _remove_stale(client, settings.bucket(zone), prefix, keep=set())

