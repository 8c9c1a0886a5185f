"""The prediction log: every scored row, per use case, batched to the object store off the
request path.

Layout: ``predictions/<use case>/dt=<event date>/part-<uuid>.parquet``
(:func:`flywheel.core.layout.prediction_prefix` spells it, keyed by the spec's ``name``). Its columns come from the spec
(:func:`flywheel.serving.logschema.log_dtypes`): the dataset's key columns, the entity keys and
the timestamp, the task's outputs, the model version, the request id, the flags and every
model feature as served.
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd

from flywheel.core import storage
from flywheel.core.config import Settings
from flywheel.core.layout import prediction_prefix
from flywheel.core.spec import PipelineSpec
from flywheel.serving.logschema import log_dtypes
from flywheel.serving.metrics import ServingMetrics


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


_OWN = ("request_id", "logged_at", "model_version", "feature_miss", "unknown_value")


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
    frame["logged_at"] = pd.Timestamp(datetime.now(UTC))
    frame["model_version"] = np.repeat([s.model.version for s in scored], [len(s) for s in scored]).astype(object)
    frame["feature_miss"] = np.concatenate([s.any_miss for s in scored])
    frame["unknown_value"] = np.concatenate([s.any_unknown for s in scored])
    names = list(first.feature_names)
    features = pd.DataFrame(np.vstack([s.matrix for s in scored]), columns=names)
    wanted = [n for n in dtypes if n in features.columns and n not in frame.columns]
    return pd.concat([frame, features[wanted]], axis=1)[list(dtypes)].astype(dtypes)


class PredictionLogger:
    """Batches one use case's prediction records to the object store off the request path.

    Requests hand over their scores (no per-row work on the request path). The queue is
    bounded: when it is full the rows are dropped and counted (``dropped``). A failed upload
    keeps its rows for the next flush (``failed_flushes``); the backlog kept for retries is
    bounded too, and rows pushed out of it are counted (``lost``). Nothing is lost silently.
    """

    def __init__(self, schema: LogSchema, settings: Settings, *, max_queue: int = 10_000,
                 max_backlog_rows: int = 200_000, metrics: ServingMetrics | None = None) -> None:
        self.use_case, self.schema = schema.use_case, schema
        self._settings, self._metrics = settings, metrics
        self._queue: queue.Queue[Scores] = queue.Queue(maxsize=max_queue)
        self._pending: deque[pd.DataFrame] = deque()  # built frames waiting for upload
        self._pending_rows = 0
        self._max_backlog = max_backlog_rows
        self._client: Any = None
        self.dropped = self.lost = self.failed_flushes = self.written = 0
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{schema.use_case}", daemon=True)
        self._thread.start()

    def log(self, scores: Scores) -> None:
        try:
            self._queue.put_nowait(scores)
        except queue.Full:
            self.dropped += len(scores)
            self._count("dropped", len(scores))
        if self._queue.qsize() * max(len(scores), 1) >= self._settings.prediction_flush_rows:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._settings.prediction_flush_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Upload everything queued so far, one object per event date; returns rows written."""
        with self._flush_lock:
            scored = []
            while True:
                try:
                    scored.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if scored:
                frame = log_frame(scored, self.schema)
                self._pending.append(frame)
                self._pending_rows += len(frame)
            self._trim_backlog()
            if not self._pending_rows:
                return 0
            batch = pd.concat(self._pending, ignore_index=True) if len(self._pending) > 1 else self._pending[0]
            try:
                self._upload(batch)
            except Exception:  # the store may be down: keep the rows for the next flush
                self.failed_flushes += 1
                if self._metrics:
                    self._metrics.log_failures.labels(self.use_case).inc()
                    self._metrics.log_backlog.labels(self.use_case).set(self._pending_rows)
                log.warning("prediction log flush of %s failed; %d rows kept for retry", self.use_case, len(batch),
                            exc_info=True)
                return 0
            self._pending.clear()
            self._pending_rows = 0
            self.written += len(batch)
            self._count("written", len(batch))
            if self._metrics:
                self._metrics.log_backlog.labels(self.use_case).set(0)
            return len(batch)

    def _trim_backlog(self) -> None:
        """Keep at most ``max_backlog_rows`` rows for retries: the oldest go first, counted."""
        overflow = self._pending_rows - self._max_backlog
        if overflow <= 0:
            return
        while overflow > 0:
            oldest = self._pending[0]
            if len(oldest) <= overflow:
                self._pending.popleft()
                cut = len(oldest)
            else:
                self._pending[0] = oldest.iloc[overflow:].reset_index(drop=True)
                cut = overflow
            self._pending_rows -= cut
            overflow -= cut
            self.lost += cut
            self._count("lost", cut)
        log.error("prediction log backlog of %s full: oldest rows lost (%d lost so far)", self.use_case, self.lost)

    def _upload(self, frame: pd.DataFrame) -> None:
        # One S3 client per logger (creating one costs ~100 ms of CPU, taken from requests via
        # the GIL); dropped after a failure so the next attempt reconnects.
        if self._client is None:
            self._client = storage.s3_client(self._settings)
        try:
            for dt, part in frame.groupby(frame[self.schema.timestamp].dt.strftime("%Y-%m-%d")):
                key = f"{prediction_prefix(self.use_case, str(dt))}part-{uuid.uuid4().hex}.parquet"
                storage.put_bytes(BUCKET, key, storage.df_to_parquet_bytes(part), settings=self._settings,
                                  client=self._client)
        except Exception:
            self._client = None
            raise

    def _count(self, outcome: str, rows: int) -> None:
        if self._metrics:
            self._metrics.log_rows.labels(self.use_case, outcome).inc(rows)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()
