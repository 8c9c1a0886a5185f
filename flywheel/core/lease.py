"""A lease in the object store: mutual exclusion between processes that share only S3.

The registry (MLflow 3.17) has no compare-and-set on aliases, so every move of a guarded alias
holds this lease while it reads, checks and moves (flywheel.training.promotion). The lease is one
object, created with S3's conditional write ``If-None-Match: *`` (only if absent: exactly one of
several racing writers succeeds, the others get 412) and taken over, once expired, with
``If-Match: <the stale lease's ETag>`` (only one of several takers wins). S3, SeaweedFS (≥ 3.96)
and MinIO implement both headers; a store that ignores them breaks the guarantee, which
``tests/integration/test_registry_safety.py`` checks on the SeaweedFS the stack runs.

Hand-rolled because no maintained Python library offers a lease on plain S3 (the known ones
need DynamoDB or Redis, which the embedded profile does not run); it is these two conditional
writes and a delete.

Guarantee: while a holder is inside :func:`hold` and within its ``ttl_s``, no other holder of
the same key is. A holder that stalls past ``ttl_s`` (a paused process) can lose the lease to
another without knowing: keep the guarded section to a few calls, far below the TTL.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings


class LeaseBusy(storage.StorageError):
    """Another holder kept the lease for longer than we were willing to wait."""


@dataclass(frozen=True)
class Lease:
    key: str
    holder: str
    token: str
    etag: str


def _conflict(exc: Exception) -> bool:
    """A conditional write lost: 412 (precondition failed) or 409 (a concurrent write)."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return status in (409, 412) or code in {"PreconditionFailed", "ConditionalRequestConflict"}


def _missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) in {"NoSuchKey", "404", "NotFound"}


def _try_put(client: object, bucket: str, key: str, body: bytes, condition: dict[str, str]) -> str | None:
    """The new object's ETag, or None when the condition did not hold."""
    from botocore.exceptions import ClientError

    try:
        out = client.put_object(Bucket=bucket, Key=key, Body=body,  # type: ignore[attr-defined]
                                ContentType="application/json", **condition)
    except ClientError as exc:
        if _conflict(exc):
            return None
        raise
    return str(out["ETag"])


def _stale_etag(client: object, bucket: str, key: str, now: float) -> str | None:
    """The ETag of the current lease object when it has expired (or vanished: ""), else None."""
    from botocore.exceptions import ClientError

    try:
        obj = client.get_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    except ClientError as exc:
        if _missing(exc):
            return ""
        raise
    try:
        expires = float(json.loads(obj["Body"].read())["expires"])
    except (ValueError, KeyError, TypeError):
        expires = 0.0  # an unreadable lease object protects nobody: treat it as expired
    return str(obj["ETag"]) if expires < now else None


def acquire(key: str, *, holder: str, ttl_s: float = 60.0, wait_s: float = 30.0,
            settings: Settings | None = None) -> Lease:
    """Take the lease ``key`` (reports zone) for ``ttl_s`` seconds, waiting up to ``wait_s``.

    Raises :class:`LeaseBusy` when another holder keeps it longer than ``wait_s``.
    """
    settings = settings or get_settings()
    client = storage.s3_client(settings)
    bucket = settings.bucket("reports")
    token = secrets.token_hex(8)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        now = time.time()
        body = json.dumps({"holder": holder, "token": token, "expires": now + ttl_s,
                           "taken_at": datetime.now(UTC).isoformat()}).encode()
        etag = _try_put(client, bucket, key, body, {"IfNoneMatch": "*"})
        if etag is None:
            stale = _stale_etag(client, bucket, key, now)
            if stale:  # expired: take it over, unless another taker was faster
                etag = _try_put(client, bucket, key, body, {"IfMatch": stale})
        if etag is not None:
            return Lease(key=key, holder=holder, token=token, etag=etag)
        if time.monotonic() > deadline:
            raise LeaseBusy(f"the lease s3://{bucket}/{key} is held by another process "
                            f"(waited {wait_s:.0f} s): try again shortly")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def release(lease: Lease, *, settings: Settings | None = None) -> None:
    """Give the lease back (only if it is still ours: a taken-over lease is left to its new holder)."""
    settings = settings or get_settings()
    client = storage.s3_client(settings)
    bucket = settings.bucket("reports")
    from botocore.exceptions import ClientError

    try:
        current = json.loads(client.get_object(Bucket=bucket, Key=lease.key)["Body"].read())
    except ClientError as exc:
        if _missing(exc):
            return
        raise
    if current.get("token") == lease.token:
        client.delete_object(Bucket=bucket, Key=lease.key)


@contextmanager
def hold(key: str, *, holder: str, ttl_s: float = 60.0, wait_s: float = 30.0,
         settings: Settings | None = None) -> Iterator[Lease]:
    """``with hold(key, holder=...)``: the section runs while this process holds the lease."""
    lease = acquire(key, holder=holder, ttl_s=ttl_s, wait_s=wait_s, settings=settings)
    try:
        yield lease
    finally:
        release(lease, settings=settings)
