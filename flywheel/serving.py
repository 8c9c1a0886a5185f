"""Serving support: request/response models, champion-following model holder,
one-round-trip online feature lookup, Prometheus metrics and an off-request-path
prediction logger.

The BentoML service in ``serving/`` is a thin shell around :class:`Predictor`; the
benchmark's FastAPI floor uses the same pieces, so the two differ only in framework.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flywheel import registry, storage
from flywheel.config import Settings, get_settings
from flywheel.datagen import CATEGORIES, DEVICES
from flywheel.featurize import ENTITY_DEFAULTS, MODEL_FEATURES
from flywheel.spec import PipelineSpec, load_spec

log = logging.getLogger(__name__)

MAX_BATCH = 1000
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)


class Transaction(BaseModel):
    """One card transaction to score."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str | None = Field(None, max_length=128, description="Caller's id, echoed back")
    user_id: int = Field(ge=0, le=2**63 - 1, description="Card holder id")
    merchant_id: int = Field(ge=0, le=2**63 - 1, description="Merchant id")
    # ge, not gt: BentoML publishes OpenAPI 3.0, where JSON Schema's numeric exclusiveMinimum is invalid.
    amount: float = Field(ge=0.01, le=1_000_000, description="Amount in the card's currency (at least 0.01)")
    event_timestamp: datetime = Field(description="When the transaction happened (ISO 8601; no zone = UTC; "
                                                  "1970-01-01 to 2199-12-31)")
    merchant_category: str = Field(max_length=64)
    country: str = Field(min_length=2, max_length=3, description="ISO country code")
    device: Literal["mobile", "desktop", "pos", "unknown"] = "unknown"

    @field_validator("event_timestamp")
    @classmethod
    def _in_range(cls, value: datetime) -> datetime:
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        if not EARLIEST <= value < LATEST:  # features are computed with nanosecond timestamps
            raise ValueError(f"must be between {EARLIEST.date()} and {LATEST.date()} (exclusive)")
        return value


TransactionBatch = Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)]


class Prediction(BaseModel):
    transaction_id: str | None
    request_id: str
    fraud_probability: float = Field(ge=0, le=1)
    is_fraud: bool
    threshold: float
    model_name: str
    model_version: str
    unknown_entities: list[str] = Field(default_factory=list,
                                        description="Entities without online features (defaults used)")
    defaults_used: bool = Field(False, description="True when any entity feature fell back to its default")


# ---- metrics ------------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class ServingMetrics:
    """The service's Prometheus metrics (one instance per process).

    ``prometheus_client`` is imported here, not at module import: BentoML workers set
    ``PROMETHEUS_MULTIPROC_DIR`` after importing the service module, and the client picks
    its storage mode on import.
    """

    _instance: ServingMetrics | None = None

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.latency = Histogram("flywheel_request_latency_seconds", "Scoring latency per request",
                                 ["endpoint"], buckets=LATENCY_BUCKETS)
        self.predictions = Counter("flywheel_predictions_total", "Predictions by decision",
                                   ["model_version", "decision"])
        self.lookups = Counter("flywheel_feature_lookups_total", "Online feature lookups by entity",
                               ["entity"])
        self.misses = Counter("flywheel_feature_misses_total",
                              "Lookups that found no online features (defaults used)", ["entity"])
        self.model_info = Gauge("flywheel_model_info", "The served model (1 = current)",
                                ["model_name", "model_version", "device"], multiprocess_mode="liveall")
        self.swaps = Counter("flywheel_model_swaps_total", "Champion changes picked up without restart")
        self.refresh_errors = Counter("flywheel_model_refresh_errors_total",
                                      "Failed checks of the champion alias (the current model keeps serving)")
        self.log_rows = Counter("flywheel_prediction_log_rows_total",
                                "Prediction log rows by outcome (written, dropped, lost)", ["outcome"])
        self.log_failures = Counter("flywheel_prediction_log_flush_failures_total",
                                    "Prediction log uploads that failed and will be retried")
        self.log_backlog = Gauge("flywheel_prediction_log_backlog_rows",
                                 "Prediction log rows waiting for upload", multiprocess_mode="liveall")

    @classmethod
    def get(cls) -> ServingMetrics:
        """The process-wide metrics (prometheus_client refuses to register a name twice)."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


# ---- online features ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _View:
    name: str
    entity: str  # entity name ("user"), also the prefix of its feature names
    join_key: str
    features: tuple[str, ...]


class OnlineFeatures:
    """Entity features from Feast's online store, resolved once, read in one round trip.

    The feature service is resolved at start-up. A read goes straight to the online store
    Feast configured (its own key encoding and value decoding), skipping the per-call
    registry lookups and response building of ``FeatureStore.get_online_features``. On
    Redis every view and entity is one pipelined ``HMGET`` batch (one network round trip);
    other stores get one ``online_read`` per view.
    """

    def __init__(self, store: Any, spec: PipelineSpec) -> None:
        service = store.get_feature_service(spec.features.service)
        entities = {e.name: e for e in store.list_entities()}
        self.store, self.config = store, store.config
        self.online = store._get_provider().online_store
        self.views: list[tuple[_View, Any]] = []
        for projection in service.feature_view_projections:
            view = store.get_feature_view(projection.name)
            entity = entities[view.entities[0]]
            names = tuple(f.name for f in projection.features)
            self.views.append((_View(view.name, entity.name, entity.join_key, names), view))
        self.columns = [f for v, _ in self.views for f in v.features]
        self.redis = type(self.online).__name__ == "RedisOnlineStore"
        # Redis hash fields (murmur3 of view:feature) are fixed per view: computed once.
        self._fields = {view.name: self.online._generate_hset_keys_for_features(fv, list(view.features))
                        for view, fv in self.views} if self.redis else {}

    def fetch(self, rows: Sequence[dict[str, int]]) -> tuple[dict[str, list[Any]], dict[str, np.ndarray]]:
        """Feature columns (``None`` where missing) and, per entity, which rows missed."""
        if self.redis:
            replies = self._read_redis(rows)
        else:
            replies = [self.online.online_read(self.config, fv, self._keys(view, rows), list(view.features))
                       for view, fv in self.views]
        columns: dict[str, list[Any]] = {}
        misses: dict[str, np.ndarray] = {}
        for (view, _), reply in zip(self.views, replies, strict=True):
            for feature in view.features:
                columns[feature] = [_python(values.get(feature)) if values else None for _, values in reply]
            # Missed = no feature of the view (Redis answers empty values, SQLite no row at all).
            missing = [np.fromiter((v is None for v in columns[f]), dtype=bool, count=len(rows))
                       for f in view.features]
            misses[view.entity] = np.logical_and.reduce(missing) if missing else np.ones(len(rows), bool)
        return columns, misses

    def frame(self, rows: Sequence[dict[str, int]]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        columns, misses = self.fetch(rows)
        return pd.DataFrame(columns, columns=self.columns), misses

    @staticmethod
    def _keys(view: _View, rows: Sequence[dict[str, int]]) -> list[Any]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        return [EntityKey(join_keys=[view.join_key], entity_values=[Value(int64_val=int(r[view.join_key]))])
                for r in rows]

    def _read_redis(self, rows: Sequence[dict[str, int]]) -> list[list[Any]]:
        online = self.online
        commands: list[tuple[bytes, list[Any]]] = []
        spans: list[tuple[_View, list[str], int, int]] = []
        for view, _ in self.views:
            names, fields = self._fields[view.name]
            keys = online._generate_redis_keys_for_entities(self.config, self._keys(view, rows))
            spans.append((view, names, len(commands), len(keys)))
            commands.extend((key, fields) for key in keys)
        values = online._read_hash_fields(self.config, commands)  # one pipeline: one round trip
        return [online._convert_redis_values_to_protobuf(values[start:start + n], view.name, names)
                for view, names, start, n in spans]


def _python(value: Any) -> Any:
    if value is None:
        return None
    kind = value.WhichOneof("val")
    return None if kind in (None, "null_val") else getattr(value, kind)


# ---- model matrix -------------------------------------------------------------------------------

_CATEGORY_CODES = {v: i for i, v in enumerate(CATEGORIES)}
_DEVICE_CODES = {v: i for i, v in enumerate(DEVICES)}


def serving_matrix(transactions: Sequence[Transaction], online: dict[str, list[Any]]) -> pd.DataFrame:
    """``featurize.model_matrix`` for validated requests, in numpy instead of pandas.

    Same features, same order, same values (NaN where an entity is unknown), ~100× faster for
    one row: pandas' per-column machinery cost ~9 ms of a 12 ms request. Equality with
    ``model_matrix`` over random requests is a unit test, so the two cannot drift apart.
    """
    n = len(transactions)
    amount = np.fromiter((t.amount for t in transactions), dtype="float64", count=n)
    hour = np.fromiter((t.event_timestamp.astimezone(UTC).hour for t in transactions), dtype="float64", count=n)

    def numeric(name: str) -> np.ndarray:
        values = online.get(name, [ENTITY_DEFAULTS[name]] * n)
        return np.array([np.nan if v is None or isinstance(v, str) else v for v in values], dtype="float64")

    top = online.get("user_top_country", [ENTITY_DEFAULTS["user_top_country"]] * n)
    mean = numeric("user_amount_mean_7d")
    cols = {
        "amount": amount,
        "log_amount": np.log1p(np.clip(amount, 0, None)),
        "hour": hour,
        "is_night": ((hour < 6) | (hour == 23)).astype("float64"),
        "merchant_category_code": np.array([_CATEGORY_CODES.get(t.merchant_category, -1) for t in transactions],
                                           dtype="float64"),
        "device_code": np.array([_DEVICE_CODES.get(t.device, -1) for t in transactions], dtype="float64"),
        "is_foreign": np.array([c is not None and t.country != c for t, c in zip(transactions, top, strict=True)],
                               dtype="float64"),
        "amount_to_user_mean": amount / np.where(mean > 0, mean, np.nan),
    }
    matrix = np.column_stack([cols[f] if f in cols else numeric(f) for f in MODEL_FEATURES])
    return pd.DataFrame(matrix, columns=MODEL_FEATURES)


# ---- model holder -------------------------------------------------------------------------------

class ModelHolder:
    """Holds the champion; a background thread swaps it when the alias moves.

    Requests only read ``current`` (one reference): a swap never blocks or fails a request
    in flight, which keeps the model object it started with. If the registry is
    unreachable the current model keeps serving and the failure is counted.
    """

    def __init__(self, model_name: str, settings: Settings, *, metrics: ServingMetrics | None = None,
                 watch: bool = True) -> None:
        self._name, self._settings, self._metrics = model_name, settings, metrics
        self._lock = threading.Lock()
        self.current = registry.load_alias(model_name, settings=settings)
        _warm(self.current)  # as every later swap is: the first request pays no lazy start-up
        self._publish(None, self.current)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if watch:
            self._thread = threading.Thread(target=self._watch, name="champion-watch", daemon=True)
            self._thread.start()

    def get(self) -> registry.LoadedModel:
        return self.current

    def refresh(self) -> bool:
        """Load the champion if the alias moved; returns True when the model changed."""
        with self._lock:
            mv = registry.alias_version(self._name, registry.CHAMPION, settings=self._settings)
            if mv is None or str(mv.version) == self.current.version:
                return False
            loaded = registry.load_version(self._name, str(mv.version), settings=self._settings)
            _warm(loaded)
            old, self.current = self.current, loaded  # one reference swap
            self._publish(old, loaded)
            log.info("champion of %s moved from v%s to v%s", self._name, old.version, loaded.version)
            return True

    def _watch(self) -> None:
        while not self._stop.wait(self._settings.champion_refresh_s):
            try:
                self.refresh()
            except Exception:  # registry down: keep serving the current model, count it
                if self._metrics:
                    self._metrics.refresh_errors.inc()
                log.warning("champion check for %s failed; serving v%s", self._name,
                            self.current.version, exc_info=True)

    def _publish(self, old: registry.LoadedModel | None, new: registry.LoadedModel) -> None:
        if self._metrics is None:
            return
        if old is not None:
            self._metrics.model_info.labels(old.name, old.version, model_device(old)).set(0)
            self._metrics.swaps.inc()
        self._metrics.model_info.labels(new.name, new.version, model_device(new)).set(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def model_device(model: registry.LoadedModel) -> str:
    """Where the model computes ("cpu", "cuda:0"); models without a device run on the CPU."""
    device = getattr(model, "device", None) or getattr(model.model, "device", None)
    if device is None and hasattr(model.model, "parameters"):  # a torch.nn.Module: where its weights are
        first = next(iter(model.model.parameters()), None)
        device = getattr(first, "device", None)
    return str(device) if device is not None else "cpu"


def _warm(model: registry.LoadedModel) -> None:
    """Score one all-default row so the first real request pays no lazy initialisation."""
    row = pd.DataFrame([[0.0] * len(model.features)], columns=model.features)
    model.predict_proba(row)


# ---- prediction log -----------------------------------------------------------------------------

@dataclass
class _Scored:
    transactions: Sequence[Transaction]
    matrix: np.ndarray  # rows x MODEL_FEATURES
    predictions: list[Prediction]


class PredictionLogger:
    """Batches prediction records to the object store off the request path.

    Requests hand over their scored frames (no per-row work on the request path). The
    queue is bounded: when it is full the rows are dropped and counted (``dropped``).
    A failed upload keeps its rows for the next flush (``failed_flushes``); the backlog
    kept for retries is bounded too, and rows pushed out of it are counted (``lost``).
    Nothing is lost silently.
    """

    def __init__(self, model_name: str, settings: Settings, *, max_queue: int = 10_000,
                 max_backlog_rows: int = 200_000, metrics: ServingMetrics | None = None) -> None:
        self._name, self._settings, self._metrics = model_name, settings, metrics
        self._queue: queue.Queue[_Scored] = queue.Queue(maxsize=max_queue)
        self._pending: deque[pd.DataFrame] = deque()  # built frames waiting for upload
        self._pending_rows = 0
        self._max_backlog = max_backlog_rows
        self._client: Any = None
        self.dropped = self.lost = self.failed_flushes = self.written = 0
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self._thread.start()

    def log(self, transactions: Sequence[Transaction], matrix: pd.DataFrame, predictions: list[Prediction]) -> None:
        try:
            self._queue.put_nowait(_Scored(transactions, matrix[MODEL_FEATURES].to_numpy(), predictions))
        except queue.Full:
            self.dropped += len(predictions)
            self._count("dropped", len(predictions))
        if self._queue.qsize() * max(len(predictions), 1) >= self._settings.prediction_flush_rows:
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
                frame = _log_frame(scored)
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
                    self._metrics.log_failures.inc()
                    self._metrics.log_backlog.set(self._pending_rows)
                log.warning("prediction log flush failed; %d rows kept for retry", len(batch), exc_info=True)
                return 0
            self._pending.clear()
            self._pending_rows = 0
            self.written += len(batch)
            self._count("written", len(batch))
            if self._metrics:
                self._metrics.log_backlog.set(0)
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
        log.error("prediction log backlog full: oldest rows lost (%d lost so far)", self.lost)

    def _upload(self, batch: list[dict[str, Any]]) -> None:
        # One S3 client per logger (creating one costs ~100 ms of CPU, taken from requests via
        # the GIL); dropped after a failure so the next attempt reconnects.
        if self._client is None:
            self._client = storage.s3_client(self._settings)
        try:
            frame = pd.DataFrame(batch)
            for dt, part in frame.groupby(frame["event_timestamp"].dt.strftime("%Y-%m-%d")):
                key = f"{self._name}/dt={dt}/part-{uuid.uuid4().hex}.parquet"
                storage.put_bytes("predictions", key, storage.df_to_parquet_bytes(part), settings=self._settings,
                                  client=self._client)
        except Exception:
            self._client = None
            raise

    def _count(self, outcome: str, rows: int) -> None:
        if self._metrics:
            self._metrics.log_rows.labels(outcome).inc(rows)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)
        self.flush()


# ---- predictor ----------------------------------------------------------------------------------

class Predictor:
    """Scores transactions with the champion and the entities' online features."""

    def __init__(self, spec: PipelineSpec, settings: Settings, *, watch: bool = True,
                 log_predictions: bool = True) -> None:
        from flywheel.features import feature_store

        self.spec, self.settings = spec, settings
        limit_threads(settings.serving_threads)
        self.metrics = ServingMetrics.get()
        self.features = OnlineFeatures(feature_store(settings), spec)
        self.keys = dict(spec.features.entities)  # entity -> join key
        self.models = ModelHolder(spec.model_name, settings, metrics=self.metrics, watch=watch)
        self.logger = PredictionLogger(spec.model_name, settings, metrics=self.metrics) if log_predictions else None

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> Predictor:
        settings = settings or get_settings()
        return cls(load_spec(settings=settings), settings, **kwargs)

    @property
    def ready(self) -> bool:
        return self.models.current is not None

    def predict(self, transactions: Sequence[Transaction], *, endpoint: str = "predict") -> list[Prediction]:
        started = time.perf_counter()
        model = self.models.get()  # this request keeps this model even if the champion moves
        rows = [{key: getattr(t, key) for key in self.keys.values()} for t in transactions]
        online, misses = self.features.fetch(rows)
        matrix = serving_matrix(transactions, online)
        proba = np.asarray(model.predict_proba(matrix), dtype="float64")
        predictions = self._predictions(transactions, proba, misses, model)
        if self.logger is not None:
            self.logger.log(transactions, matrix, predictions)
        self._observe(endpoint, predictions, misses, model, time.perf_counter() - started)
        return predictions

    @staticmethod
    def _predictions(transactions: Sequence[Transaction], proba: np.ndarray, misses: dict[str, np.ndarray],
                     model: registry.LoadedModel) -> list[Prediction]:
        out = []
        for i, (t, p) in enumerate(zip(transactions, proba.tolist(), strict=True)):
            unknown = [entity for entity, flags in misses.items() if flags[i]]
            out.append(Prediction(
                transaction_id=t.transaction_id, request_id=uuid.uuid4().hex, fraud_probability=p,
                is_fraud=p >= model.threshold, threshold=model.threshold, model_name=model.name,
                model_version=model.version, unknown_entities=unknown, defaults_used=bool(unknown)))
        return out

    def _observe(self, endpoint: str, predictions: list[Prediction], misses: dict[str, np.ndarray],
                 model: registry.LoadedModel, seconds: float) -> None:
        m = self.metrics
        m.latency.labels(endpoint).observe(seconds)
        fraud = sum(p.is_fraud for p in predictions)
        if fraud:
            m.predictions.labels(model.version, "fraud").inc(fraud)
        if len(predictions) - fraud:
            m.predictions.labels(model.version, "legit").inc(len(predictions) - fraud)
        for entity, flags in misses.items():
            m.lookups.labels(entity).inc(len(flags))
            if flags.any():
                m.misses.labels(entity).inc(int(flags.sum()))

    def close(self) -> None:
        self.models.close()
        if self.logger is not None:
            self.logger.close()


def limit_threads(threads: int) -> None:
    """Cap the native thread pools (OpenMP, BLAS) at ``threads`` per worker process.

    One-row scoring gains nothing from parallelism, and an OpenMP pool that spins for more
    cores than the worker owns costs milliseconds per call on a busy machine (XGBoost's
    one-row predict: 48 ms → 1.5 ms in benchmarks/serving.py). Call it before the model loads.
    """
    import os

    from threadpoolctl import threadpool_limits

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    threadpool_limits(limits=threads)


def tune_gc() -> None:
    """Move everything allocated so far (libraries, the model) out of the collector's view and
    collect young objects less often: request garbage is short-lived, and full collections
    over a loaded model are what made p99 spike."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _log_frame(scored: list[_Scored]) -> pd.DataFrame:
    """Prediction-log rows of many requests, built column-wise (little Python per row: this runs
    on the logger thread and shares the GIL with requests)."""
    txns = [t for s in scored for t in s.transactions]
    preds = [p for s in scored for p in s.predictions]
    frame = pd.DataFrame({
        "request_id": [p.request_id for p in preds],
        "transaction_id": [t.transaction_id for t in txns],
        "event_timestamp": pd.to_datetime([t.event_timestamp for t in txns], utc=True),
        "logged_at": pd.Timestamp(datetime.now(UTC)),
        "user_id": np.fromiter((t.user_id for t in txns), dtype="int64", count=len(txns)),
        "merchant_id": np.fromiter((t.merchant_id for t in txns), dtype="int64", count=len(txns)),
        "model_version": [p.model_version for p in preds],
        "probability": np.fromiter((p.fraud_probability for p in preds), dtype="float64", count=len(preds)),
        "decision": np.fromiter((p.is_fraud for p in preds), dtype="bool", count=len(preds)),
        "feature_miss": np.fromiter((bool(p.unknown_entities) for p in preds), dtype="bool", count=len(preds)),
    })
    features = pd.DataFrame(np.vstack([s.matrix for s in scored]), columns=MODEL_FEATURES)
    return pd.concat([frame, features], axis=1)


__all__ = ["ENTITY_DEFAULTS", "MAX_BATCH", "ModelHolder", "OnlineFeatures", "Prediction", "PredictionLogger",
           "Predictor", "ServingMetrics", "serving_matrix", "Transaction", "TransactionBatch", "limit_threads", "model_device",
           "tune_gc"]
