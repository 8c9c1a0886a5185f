"""The prediction log: every scored row, per use case, made durable before its request is
answered and uploaded to the object store exactly once.

Path of a row: :meth:`PredictionLogger.log` (on the request path) appends the request's scores
to a local write-ahead spool (:mod:`flywheel.serving.spool`: a segment file, ``fdatasync``'d, one
sync shared by concurrent requests) and returns once it is durable; a thread closes the segment
every ``prediction_flush_s`` (or at ``prediction_flush_rows`` rows), builds its frame and uploads
it, one object per event date, under a key derived from the segment's name
(:func:`flywheel.core.layout.prediction_part_key`): an upload retried after a failure or a crash
overwrites itself, so no row is stored twice. The segment is deleted only after the upload
succeeded. On shutdown (SIGTERM) the spool is drained for up to ``prediction_drain_s``; what is
left, and whatever a killed (SIGKILL) process left, is uploaded first by the next start.

When the store stays down, the spool grows up to ``prediction_spool_max_bytes``; then, by
``prediction_spool_full``, requests are refused (``reject``: :class:`PredictionLogUnavailable`,
a 503, so no acknowledged prediction goes unlogged) or served unlogged and counted (``drop``).
Metrics: ``flywheel_prediction_log_rows_total{outcome=written|rejected|dropped}``,
``flywheel_prediction_log_flush_failures_total``, ``flywheel_prediction_log_backlog_rows`` and
``flywheel_prediction_log_spool_bytes``; every refusal and failed upload is logged.

Layout: ``predictions/<use case>/dt=<event date>/part-<writer>-<segment>.parquet``. Its columns
come from the spec (:func:`flywheel.serving.logschema.log_dtypes`): the dataset's key columns,
the entity keys and the timestamp, the task's outputs, the model version, the request id, the
flags and every model feature as served.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from flywheel.core import storage
from flywheel.core.config import Settings
from flywheel.core.layout import prediction_part_key
from flywheel.core.spec import PipelineSpec
from flywheel.serving.logschema import ROLLOUT_COLUMNS, ROLLOUT_DEFAULTS, log_dtypes
from flywheel.serving.metrics import ServingMetrics
from flywheel.serving.spool import Segment, Spool, read_records


class Scores(Protocol):
    """What the log reads of one request's scores (``flywheel.serving.predictor.Scores``)."""

    columns: dict[str, list[Any]]
    feature_names: tuple[str, ...]
    matrix: np.ndarray
    outputs: dict[str, np.ndarray]
    request_ids: list[str]
    model: Any

    @property
    def any_miss(self) -> np.ndarray: ...

    @property
    def any_unknown(self) -> np.ndarray: ...

    @property
    def any_out_of_range(self) -> np.ndarray: ...

    def __len__(self) -> int: ...

log = logging.getLogger(__name__)
BUCKET = "predictions"


@dataclass(frozen=True)
class LogSchema:
    """The columns (name -> dtype) of one use case's prediction log, and its event-time column."""

    use_case: str
    columns: dict[str, str]
    timestamp: str  # the dataset's timestamp column: partitions are by its date

    def empty(self) -> pd.DataFrame:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in self.columns.items()})


def log_schema(spec: PipelineSpec) -> LogSchema:
    """The prediction log of ``spec`` (columns: :func:`flywheel.serving.logschema.log_dtypes`)."""
    return LogSchema(spec.name, log_dtypes(spec), spec.dataset.timestamp)


_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _times(values: list[Any]) -> pd.DatetimeIndex:
    micros = np.fromiter(((v - _EPOCH) // _MICROSECOND for v in values), dtype="int64", count=len(values))
    return pd.to_datetime(micros, unit="us", utc=True)


_OWN = ("request_id", "logged_at", "model_version", "feature_miss", "unknown_value", "out_of_range",
        *ROLLOUT_COLUMNS)


def _logged_at(scored: list[Scores]) -> Any:
    """When each request was logged: its spool record's time (now for live scores)."""
    stamps = [getattr(s, "logged_at", None) for s in scored]
    if all(t is None for t in stamps):
        return pd.Timestamp(datetime.now(UTC))
    now = datetime.now(UTC)
    return _times(list(np.repeat(np.array([t or now for t in stamps], dtype=object), [len(s) for s in scored])))


def log_frame(scored: list[Scores], schema: LogSchema) -> pd.DataFrame:
    """Prediction-log rows of many requests, built column-wise (little Python per row: this runs
    on the logger thread and shares the GIL with requests)."""
    first = scored[0]
    dtypes = schema.columns
    columns: dict[str, Any] = {"request_id": [r for s in scored for r in s.request_ids]}
    for name in dtypes:
        if name in _OWN:
            continue
        if name == schema.timestamp:
            columns[name] = _times([v for s in scored for v in s.columns[name]])
        elif name in first.columns:
            columns[name] = [v for s in scored for v in s.columns[name]]
        elif name in first.outputs:
            columns[name] = np.concatenate([s.outputs[name] for s in scored])
    frame = pd.DataFrame(columns)
    frame["logged_at"] = _logged_at(scored)
    frame["model_version"] = np.concatenate([_rollout(s).get("model_version", np.full(len(s), s.model.version,
                                                                                    dtype=object)) for s in scored])
    for name, dtype in ROLLOUT_COLUMNS.items():
        frame[name] = np.concatenate([_rollout(s).get(name, np.full(len(s), ROLLOUT_DEFAULTS[name], dtype=dtype))
                                      for s in scored])
    frame["feature_miss"] = np.concatenate([s.any_miss for s in scored])
    frame["unknown_value"] = np.concatenate([s.any_unknown for s in scored])
    frame["out_of_range"] = np.concatenate([s.any_out_of_range for s in scored])
    names = list(first.feature_names)
    features = pd.DataFrame(np.vstack([s.matrix for s in scored]), columns=names)
    wanted = [n for n in dtypes if n in features.columns and n not in frame.columns]
    return pd.concat([frame, features[wanted]], axis=1)[list(dtypes)].astype(dtypes)


def _rollout(scores: Scores) -> dict[str, np.ndarray]:
    """The request's rollout columns (flywheel.serving.challenger), {} when no challenger scored it."""
    return getattr(scores, "rollout", None) or {}


# ---- the spool record of one request's scores ------------------------------------------------------
# JSON (pydantic-core, ~16 µs for one row): what log_frame reads of Scores, nothing else. A new
# Scores attribute that log_frame reads must be added to encode/decode/Spooled too
# (tests/unit/test_prediction_spool.py compares log_frame of the live and the spooled scores; a
# segment whose rows cannot be built is set aside as <writer>-<segment>.unreadable, logged).

@dataclass(frozen=True)
class _Model:
    version: str


@dataclass
class Spooled:
    """A request's scores as read back from the spool (what :func:`log_frame` reads)."""

    columns: dict[str, list[Any]]
    feature_names: tuple[str, ...]
    matrix: np.ndarray
    outputs: dict[str, np.ndarray]
    request_ids: list[str]
    model: _Model
    any_miss: np.ndarray
    any_unknown: np.ndarray
    any_out_of_range: np.ndarray
    logged_at: datetime
    rollout: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.request_ids)


def _micros(values: list[Any]) -> list[int | None]:
    return [None if v is None else (v - _EPOCH) // _MICROSECOND for v in values]


def encode(scores: Scores, *, logged_at: datetime) -> bytes:
    """One spool record: the request's scores as JSON (datetimes as epoch microseconds)."""
    from pydantic_core import to_json

    times = [name for name, values in scores.columns.items()
             if isinstance(next((v for v in values if v is not None), None), datetime)]
    columns = {name: _micros(values) if name in times else values for name, values in scores.columns.items()}
    return to_json({
        "ids": scores.request_ids, "columns": columns, "times": times,
        "names": list(scores.feature_names), "shape": list(scores.matrix.shape),
        "matrix": scores.matrix.ravel().tolist(),
        "outputs": {k: [v.dtype.str, v.tolist()] for k, v in scores.outputs.items()},
        "version": str(scores.model.version), "miss": scores.any_miss.tolist(),
        "unknown": scores.any_unknown.tolist(), "range": scores.any_out_of_range.tolist(),
        "at": (logged_at - _EPOCH) // _MICROSECOND,
        "rollout": {k: [v.dtype.str, v.tolist()] for k, v in _rollout(scores).items()},
    }, inf_nan_mode="constants")


def decode(record: bytes) -> Spooled:
    """The scores of one spool record (raises ``ValueError``/``KeyError`` on a foreign record)."""
    from pydantic_core import from_json

    data = from_json(record)
    flag = {k: np.asarray(data.get(k, [False] * len(data["ids"])), dtype=bool) for k in ("miss", "unknown", "range")}
    columns = {name: [None if v is None else _EPOCH + v * _MICROSECOND for v in values]
               if name in data["times"] else values for name, values in data["columns"].items()}
    return Spooled(
        columns=columns, feature_names=tuple(data["names"]),
        matrix=np.asarray(data["matrix"], dtype="float64").reshape(data["shape"]),
        outputs={k: np.asarray(v, dtype=np.dtype(kind)) for k, (kind, v) in data["outputs"].items()},
        request_ids=list(data["ids"]), model=_Model(data["version"]),
        any_miss=flag["miss"], any_unknown=flag["unknown"], any_out_of_range=flag["range"],
        logged_at=_EPOCH + data["at"] * _MICROSECOND,
        rollout={k: np.asarray(v, dtype=np.dtype(kind)) for k, (kind, v) in data.get("rollout", {}).items()})


# ---- the logger ---------------------------------------------------------------------------------------

class PredictionLogUnavailable(RuntimeError):
    """The prediction log cannot keep this request's rows (spool full, or its disk failed) and is
    configured to refuse the request rather than answer it unlogged (``prediction_spool_full``)."""


class PredictionLogger:
    """One use case's prediction log in this process (see the module docstring).

    ``log`` raises :class:`PredictionLogUnavailable` when the spool cannot take the rows and
    ``prediction_spool_full`` is ``reject``. Counters: ``written`` (rows uploaded),
    ``rejected``, ``dropped`` (rows refused), ``failed_flushes`` (uploads that failed and will be
    retried), ``recovered`` (segments of a killed process taken over at start).
    """

    def __init__(self, schema: LogSchema, settings: Settings, *, metrics: ServingMetrics | None = None,
                 spool_dir: Path | None = None) -> None:
        self.use_case, self.schema = schema.use_case, schema
        self._settings, self._metrics = settings, metrics
        self.spool = Spool(spool_dir or settings.spool_dir / schema.use_case,
                           max_bytes=settings.prediction_spool_max_bytes,
                           sync=settings.prediction_spool_sync == "fsync")
        self._pending: deque[Segment] = deque()  # closed segments waiting for upload, oldest first
        self._rows = 0  # rows in the active segment
        self._pending_rows: dict[Path, int] = {}  # rows of each pending segment (requests, if recovered)
        self._client: Any = None
        self.written = self.rejected = self.dropped = self.failed_flushes = self.recovered = 0
        self._refusing_since = 0.0
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._recover()
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{schema.use_case}", daemon=True)
        self._thread.start()

    # ---- the request path -------------------------------------------------------------------------

    def log(self, scores: Scores) -> None:
        """Make the request's rows durable in the spool; returns once they are (group commit)."""
        try:
            self.spool.append(encode(scores, logged_at=datetime.now(UTC)))
        except OSError as exc:  # SpoolFull, or the disk refused
            self._refuse(len(scores), exc)
            return
        if self._refusing_since:
            log.warning("prediction log of %s: the spool takes rows again", self.use_case)
            self._refusing_since = 0.0
        self._rows += len(scores)
        if self._rows >= self._settings.prediction_flush_rows:
            self._wake.set()

    def _refuse(self, rows: int, exc: OSError) -> None:
        reject = self._settings.prediction_spool_full == "reject"
        outcome = "rejected" if reject else "dropped"
        if reject:
            self.rejected += rows
        else:
            self.dropped += rows
        self._count(outcome, rows)
        now = time.monotonic()
        if not self._refusing_since or now - self._refusing_since > 60:  # a line a minute, not per request
            self._refusing_since = now
            log.error("prediction log of %s cannot keep rows (%s): requests are %s "
                      "(%d rejected, %d dropped so far)", self.use_case, exc,
                      "refused with 503" if reject else "answered unlogged", self.rejected, self.dropped)
        if reject:
            raise PredictionLogUnavailable(
                f"the prediction log of {self.use_case} cannot keep this request ({exc})") from exc

    # ---- uploads ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.prediction_flush_s)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()

    def _recover(self) -> None:
        """Segments left by a killed (or undrained) process of this use case: claimed at start (local
        files only), uploaded first, by the first round (at once)."""
        orphans = self.spool.claim_orphans()
        if orphans:
            log.warning("prediction log of %s: %d spooled segments (%d bytes) of an earlier process found: "
                        "uploading them first", self.use_case, len(orphans), sum(s.size for s in orphans))
            self.recovered += len(orphans)
            self._pending.extend(orphans)
            self._pending_rows |= {s.path: len(read_records(s.path)[0]) for s in orphans}
            self._wake.set()

    def flush(self, *, deadline: float | None = None) -> int:
        """Close the active segment and upload every closed one, oldest first (until ``deadline``,
        a ``time.monotonic()``); returns the rows uploaded. A failed upload stops the round: its
        segment stays in the spool for the next one."""
        with self._flush_lock:
            closed = self.spool.rotate()
            if closed is not None:
                self._pending.append(closed)
                self._pending_rows[closed.path], self._rows = self._rows, 0
            uploaded = 0
            while self._pending and (deadline is None or time.monotonic() < deadline):
                segment = self._pending[0]
                try:
                    uploaded += self._upload(segment)
                except Exception:  # the store may be down: keep the segment for the next round
                    self._failed(segment)
                    break
                self._pending.popleft()
                self._pending_rows.pop(segment.path, None)
                self.spool.release(segment)
            self._gauges()
            return uploaded

    def _upload(self, segment: Segment) -> int:
        records, _ = read_records(segment.path)
        if not records:
            return 0
        try:
            frame = log_frame([decode(r) for r in records], self.schema)
        except Exception:  # a record this code cannot read: set aside (never retried forever, never deleted)
            aside = self.spool.root / f"{segment.writer}-{segment.seq:08d}.unreadable"
            log.exception("prediction log of %s: segment %s does not build log rows (%d records): moved to %s, "
                          "not uploaded", self.use_case, segment.path, len(records), aside)
            self._count("unreadable", len(records))
            segment.path.rename(aside)
            return 0
        # One S3 client per logger (creating one costs ~100 ms of CPU, taken from requests via
        # the GIL); short timeouts so that a drain at shutdown stays bounded; dropped after a
        # failure so the next attempt reconnects.
        if self._client is None:
            self._client = storage.s3_client(self._settings, max_attempts=2, connect_timeout=2, read_timeout=10)
        try:
            for dt, part in frame.groupby(frame[self.schema.timestamp].dt.strftime("%Y-%m-%d")):
                key = prediction_part_key(self.use_case, str(dt), segment.writer, segment.seq)
                storage.put_bytes(BUCKET, key, storage.df_to_parquet_bytes(part), settings=self._settings,
                                  client=self._client)
        except Exception:
            self._client = None
            raise
        self.written += len(frame)
        self._count("written", len(frame))
        return len(frame)

    def _failed(self, segment: Segment) -> None:
        self.failed_flushes += 1
        if self._metrics:
            self._metrics.log_failures.labels(self.use_case).inc()
        log.warning("prediction log of %s: upload of %s failed; %d segments (%d bytes) kept in the spool for "
                    "retry", self.use_case, segment.path, len(self._pending), self.spool.disk_bytes, exc_info=True)

    def _gauges(self) -> None:
        if self._metrics:
            self._metrics.log_spool_bytes.labels(self.use_case).set(self.spool.disk_bytes)
            self._metrics.log_backlog.labels(self.use_case).set(sum(self._pending_rows.values()) + self._rows)

    def _count(self, outcome: str, rows: int) -> None:
        if self._metrics:
            self._metrics.log_rows.labels(self.use_case, outcome).inc(rows)

    @property
    def backlog(self) -> int:
        """Closed segments waiting for upload."""
        return len(self._pending)

    def close(self) -> None:
        """Drain: upload what is spooled for up to ``prediction_drain_s``; what is left stays in the
        spool (logged) for the next start."""
        deadline = time.monotonic() + self._settings.prediction_drain_s
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self._settings.prediction_drain_s)
        if self._flush_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            self._flush_lock.release()
            self.flush(deadline=deadline)
        if self._pending:
            log.warning("prediction log of %s: %d segments (%d bytes) not uploaded at shutdown: left in %s, "
                        "uploaded at the next start", self.use_case, len(self._pending), self.spool.disk_bytes,
                        self.spool.root)
        self.spool.close()
