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

Long sections (a partition write: minutes) use :func:`keep`: a thread renews the lease every third
of its TTL (``If-Match`` on the ETag it holds), so a live writer keeps it however long it works
while a killed one's lease expires within one TTL; :meth:`Held.check` renews it once more right
before the section's commit and raises :class:`LeaseLost` if another holder took it meanwhile.
:func:`partition` is that lease for one day of a dataset (every zone of it), the one writer a
partition admits.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from flywheel.core import s3
from flywheel.core.config import Settings, get_settings
from flywheel.core.layout import partition_lease_key

log = logging.getLogger(__name__)


class LeaseBusy(s3.StorageError):
    """Another holder kept the lease for longer than we were willing to wait.

    ``holder`` and ``expires`` (epoch seconds) describe the lease as last read ("" / 0 if unknown).
    """

    def __init__(self, message: str, *, holder: str = "", expires: float = 0.0) -> None:
        super().__init__(message)
        self.holder, self.expires = holder, expires


class LeaseLost(s3.StorageError):
    """A lease this process held was taken over (it stalled past its TTL): its section must not commit."""


class PartitionBusy(LeaseBusy):
    """Another writer holds the partition (one day of a dataset) longer than this one would wait."""


@dataclass(frozen=True)
class Lease:
    key: str
    holder: str
    token: str
    etag: str


_conflict = s3.conditional_write_lost


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
    client = s3.s3_client(settings)
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
            holder, expires = _current(client, bucket, key)
            raise LeaseBusy(f"the lease s3://{bucket}/{key} is held by {holder or 'another process'}"
                            f"{_until(expires)} (waited {wait_s:.0f} s): try again shortly",
                            holder=holder, expires=expires)
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def _current(client: object, bucket: str, key: str) -> tuple[str, float]:
    """(holder, expires) of the lease object now, ("", 0.0) when it is gone or unreadable."""
    from botocore.exceptions import ClientError

    try:
        body = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())  # type: ignore[attr-defined]
        return str(body.get("holder", "")), float(body.get("expires", 0.0))
    except (ClientError, ValueError, TypeError, AttributeError):
        return "", 0.0


def _until(expires: float) -> str:
    if not expires:
        return ""
    return f" until {datetime.fromtimestamp(expires, UTC):%H:%M:%S} UTC"


def renew(lease: Lease, *, ttl_s: float, settings: Settings | None = None, client: object = None) -> Lease | None:
    """Extend ``lease`` to ``ttl_s`` from now; None when it is no longer ours (taken over)."""
    settings = settings or get_settings()
    client = client or s3.s3_client(settings)
    body = json.dumps({"holder": lease.holder, "token": lease.token, "expires": time.time() + ttl_s,
                       "taken_at": datetime.now(UTC).isoformat()}).encode()
    etag = _try_put(client, settings.bucket("reports"), lease.key, body, {"IfMatch": lease.etag})
    return None if etag is None else Lease(key=lease.key, holder=lease.holder, token=lease.token, etag=etag)


def release(lease: Lease, *, settings: Settings | None = None) -> None:
    """Give the lease back (only if it is still ours: a taken-over lease is left to its new holder)."""
    settings = settings or get_settings()
    client = s3.s3_client(settings)
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


class Held:
    """A lease kept alive by a renewing thread while its holder works (see :func:`keep`)."""

    def __init__(self, lease: Lease, *, ttl_s: float, settings: Settings) -> None:
        self.lease, self.ttl_s, self._settings = lease, ttl_s, settings
        self._client = s3.s3_client(settings, max_attempts=2, connect_timeout=2,
                                         read_timeout=max(2.0, ttl_s / 6))
        self._lock = threading.Lock()  # one renewal at a time: two racing If-Match puts would lose one
        self._renewed = time.monotonic()
        self._lost = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease {lease.key}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        with self._lock:
            if self._lost:
                return
            renewed = renew(self.lease, ttl_s=self.ttl_s, settings=self._settings, client=self._client)
            if renewed is None:
                holder, _ = _current(self._client, self._settings.bucket("reports"), self.lease.key)
                self._lost = f"taken over by {holder or 'another process'}"
                return
            self.lease, self._renewed = renewed, time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._renew()
            except Exception:  # noqa: BLE001 - a failed renewal is retried; check() judges by its age
                log.warning("renewing the lease %s failed; retrying", self.lease.key, exc_info=True)

    def check(self) -> None:
        """Renew the lease now (a full TTL for the commit that follows); raises :class:`LeaseLost`
        when another holder took it, or when it could not be renewed within its TTL."""
        try:
            self._renew()
        except Exception as exc:
            if time.monotonic() - self._renewed > self.ttl_s:
                raise LeaseLost(f"the lease {self.lease.key} could not be renewed for {self.ttl_s:.0f} s "
                                f"({exc}): another writer may hold it, not committing") from exc
            raise
        if self._lost:
            raise LeaseLost(f"the lease {self.lease.key} held by {self.lease.holder} was {self._lost} "
                            f"(this process stalled past its {self.ttl_s:.0f} s TTL): not committing")

    @property
    def lost(self) -> bool:
        """Whether another holder took the lease over (seen by a renewal)."""
        return bool(self._lost)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.ttl_s)


@contextmanager
def keep(key: str, *, holder: str, ttl_s: float = 60.0, wait_s: float = 30.0,
         settings: Settings | None = None) -> Iterator[Held]:
    """``with keep(key, holder=...) as held``: hold the lease for as long as the section runs,
    renewed every ``ttl_s / 3``; call ``held.check()`` right before the section commits.

    Raises :class:`LeaseBusy` when another holder keeps it longer than ``wait_s``.
    """
    settings = settings or get_settings()
    with _kept(acquire(key, holder=holder, ttl_s=ttl_s, wait_s=wait_s, settings=settings),
               ttl_s=ttl_s, settings=settings) as held:
        yield held


@contextmanager
def _kept(taken: Lease, *, ttl_s: float, settings: Settings) -> Iterator[Held]:
    held = Held(taken, ttl_s=ttl_s, settings=settings)
    failed = False
    try:
        yield held
    except BaseException:
        failed = True
        raise
    finally:
        held.stop()
        if not held.lost:  # a taken-over lease is left to its new holder
            try:
                release(held.lease, settings=settings)
            except Exception as exc:
                if not failed:
                    raise
                # the stage's own error is the one to raise; the lease expires on its own
                log.warning("could not release lease %s (%s); it expires within %.0f s", held.lease.key, exc, ttl_s)


def holder_name(run_id: str) -> str:
    """Who holds a lease, as a waiting writer's error names it: the run, the process and the host."""
    return f"{run_id or 'a run without id'} (pid {os.getpid()} on {socket.gethostname()})"


@contextmanager
def partition(dataset: str, ds: str, *, run_id: str, settings: Settings | None = None) -> Iterator[Held]:
    """The one writer of a dataset's day (raw, curated and quarantine alike), for the whole stage.

    Waits up to ``settings.partition_lease_wait_s`` for another writer to finish (a killed
    writer's lease expires after ``settings.partition_lease_ttl_s``); raises
    :class:`PartitionBusy`, naming the partition and its holder, when it does not.
    """
    settings = settings or get_settings()
    key = partition_lease_key(dataset, ds)
    ttl_s, wait_s = settings.partition_lease_ttl_s, settings.partition_lease_wait_s
    try:
        taken = acquire(key, holder=holder_name(run_id), ttl_s=ttl_s, wait_s=wait_s, settings=settings)
    except LeaseBusy as exc:
        raise PartitionBusy(f"partition {dataset}/ds={ds} is being written by {exc.holder or 'another writer'}"
                            f"{_until(exc.expires)}; waited {wait_s:.0f} s (lease {key}): rerun it once that "
                            "writer has finished", holder=exc.holder, expires=exc.expires) from exc
    from botocore.exceptions import ConnectionError as Unreachable
    from botocore.exceptions import HTTPClientError

    try:
        with _kept(taken, ttl_s=ttl_s, settings=settings) as held:
            yield held
    except (Unreachable, HTTPClientError) as exc:
        raise s3.StorageError(
            f"the object store stopped answering while partition {dataset}/ds={ds} was written ({exc}); "
            "nothing of this write was committed (readers keep the previous partition, if any): rerun the "
            f"stage once the store is back (this writer's lease expires within {ttl_s:.0f} s)") from exc
