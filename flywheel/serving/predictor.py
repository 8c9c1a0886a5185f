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
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec, load_spec
from flywheel.datagen import CATEGORIES, DEVICES
from flywheel.features.featurize import ENTITY_DEFAULTS, MODEL_FEATURES
from flywheel.training import registry

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
    Feast configured (its key encoding, its field hashing, its value protos), skipping the
    per-call registry lookups and response building of ``FeatureStore.get_online_features``.
    On Redis every view and entity is one pipelined ``HMGET`` batch (one network round trip,
    see :class:`_RedisHashReader`); other stores get one ``online_read`` per view.
    """

    def __init__(self, store: Any, spec: PipelineSpec) -> None:
        service = store.get_feature_service(spec.feature_service)
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
        self._reader = _RedisHashReader(self.online, self.config, self.views) if self.redis else None

    def fetch(self, rows: Sequence[dict[str, int]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Feature columns and, per entity, which rows missed (no feature of its view found).

        A column is a float64 array (NaN where missing) or a list (``None`` where missing).
        """
        return self.fetch_keys({view.join_key: [r[view.join_key] for r in rows] for view, _ in self.views})

    def fetch_keys(self, keys: Mapping[str, Sequence[int]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """:meth:`fetch` of join-key columns (``{"user_id": [...], "merchant_id": [...]}``)."""
        if self._reader is not None:
            return self._reader.read([keys[view.join_key] for view, _ in self.views])
        columns: dict[str, Any] = {}
        misses: dict[str, np.ndarray] = {}
        for view, fv in self.views:
            ids = keys[view.join_key]
            reply = self.online.online_read(self.config, fv, [_entity_key(view.join_key, v) for v in ids],
                                            list(view.features))
            for feature in view.features:
                columns[feature] = [_python(values.get(feature)) if values else None for _, values in reply]
            # Missed = no feature of the view (SQLite answers no row at all).
            missing = [np.fromiter((v is None for v in columns[f]), dtype=bool, count=len(ids))
                       for f in view.features]
            misses[view.entity] = np.logical_and.reduce(missing) if missing else np.ones(len(ids), bool)
        return columns, misses

    def frame(self, rows: Sequence[dict[str, int]]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        columns, misses = self.fetch(rows)
        return pd.DataFrame(columns, columns=self.columns), misses


def _entity_key(join_key: str, value: int) -> Any:
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    return EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=int(value))])


class _RedisHashReader:
    """Feast's Redis layout, read with one hand-packed pipeline and decoded column-wise.

    Feast stores an entity as a hash at ``serialize_entity_key(key) + project`` with one field
    per feature (murmur3 of ``view:feature``) holding a ``ValueProto``. For a single int64 join
    key the serialized key is a fixed prefix plus the value's 8 little-endian bytes; that is
    checked against Feast's own ``serialize_entity_key`` at start-up (any other layout falls back
    to it per key). The ``HMGET`` commands are packed as RESP bytes in one ``join`` and sent on
    one connection (one round trip); replies are parsed by redis-py (hiredis when installed).
    Values are decoded per column: doubles in one numpy call, others by protobuf.
    """

    def __init__(self, online: Any, config: Any, views: list[tuple[_View, Any]]) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key

        self.client = online._get_client(config.online_store)
        self.version = config.entity_key_serialization_version
        self.project = config.project.encode()
        self.views = [view for view, _ in views]
        self._serialize = serialize_entity_key
        self._commands: list[_HmgetCommand] = []
        for view, fv in views:
            _, fields = online._generate_hset_keys_for_features(fv, list(view.features))
            blob = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in (_bytes(f) for f in fields))
            self._commands.append(_HmgetCommand(2 + len(fields), b"\r\n" + blob, self._prefix(view.join_key)))

    def _prefix(self, join_key: str) -> bytes | None:
        """The key bytes before the int64 value, if Feast's encoding is prefix + little-endian value."""
        probes = (0, 1, 12, 2**40 + 7, 2**63 - 1)
        encoded = [self._serialize(_entity_key(join_key, v), entity_key_serialization_version=self.version)
                   for v in probes]
        prefix = encoded[0][:-8]
        ok = all(e == prefix + v.to_bytes(8, "little", signed=True) for e, v in zip(encoded, probes, strict=True))
        return prefix if ok else None

    def _packed(self, ids_per_view: list[Sequence[int]]) -> bytes:
        parts = []
        for command, view, ids in zip(self._commands, self.views, ids_per_view, strict=True):
            if command.prefix is not None:  # header + prefix + id bytes + project + fields, joined once
                head = command.header(len(command.prefix) + 8 + len(self.project)) + command.prefix
                raw = np.asarray(ids, dtype="<i8").tobytes()
                middle = self.project + command.fields + head
                parts.append(head + middle.join(raw[i:i + 8] for i in range(0, len(raw), 8))
                             + self.project + command.fields)
                continue
            for value in ids:
                key = self._serialize(_entity_key(view.join_key, value),
                                      entity_key_serialization_version=self.version) + self.project
                parts.append(command.header(len(key)) + key + command.fields)
        return b"".join(parts)

    def _roundtrip(self, packed: bytes, n: int) -> list[Any]:
        """Send all commands, read ``n`` replies; one reconnect+retry when a pooled connection is stale."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        pool = self.client.connection_pool
        for attempt in (1, 2):
            conn = pool.get_connection()
            try:
                conn.send_packed_command([packed])
                return [conn.read_response() for _ in range(n)]
            except (RedisConnectionError, RedisTimeoutError):
                conn.disconnect()
                if attempt == 2:
                    raise
            except BaseException:
                conn.disconnect()  # the connection's reply stream is out of step: never reuse it
                raise
            finally:
                pool.release(conn)
        raise AssertionError("unreachable")

    def read(self, ids_per_view: list[Sequence[int]]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        n_rows = len(ids_per_view[0]) if ids_per_view else 0
        replies = self._roundtrip(self._packed(ids_per_view), n_rows * len(self.views))
        columns: dict[str, Any] = {}
        misses: dict[str, np.ndarray] = {}
        for k, view in enumerate(self.views):
            rows = replies[k * n_rows:(k + 1) * n_rows]
            # Missed = no feature of the view in the hash (the last field is Feast's timestamp).
            misses[view.entity] = np.fromiter((not any(r[:-1]) for r in rows), dtype=bool, count=n_rows)
            # Rows of HMGET replies to columns in C (zip), then decoded a column at a time.
            for feature, raw in zip(view.features, zip(*rows, strict=True), strict=False):
                columns[feature] = _decode_values(raw)
        return columns, misses


@dataclass(frozen=True)
class _HmgetCommand:
    """One view's ``HMGET key field…`` in RESP: the field part is fixed, the key varies."""

    args: int  # HMGET, the key and the fields
    fields: bytes  # "\r\n" ending the key, then every field as a RESP bulk string
    prefix: bytes | None  # serialized entity key before the int64 value (None: not that layout)

    def header(self, key_len: int) -> bytes:
        return b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n" % (self.args, key_len)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


_DOUBLE_TAG = 0x29  # ValueProto field 5 (double_val), wire type 1 (64-bit): 1 tag byte + 8 bytes
_unpack_double = struct.Struct("<d").unpack_from


def _decode_values(raw: Sequence[bytes | None]) -> Any:
    """One column of Redis replies (serialized ``ValueProto`` or nothing) as Python values: a
    float64 array (NaN where missing) when there are many and all present ones are doubles, else
    a list with ``None`` where missing."""
    if len(raw) > 8:
        values = [b for b in raw if b]
        if values and all(len(b) == 9 and b[0] == _DOUBLE_TAG for b in values):
            doubles = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, 9)[:, 1:].copy().view("<f8")
            if len(values) == len(raw):
                return doubles.ravel()
            out = np.full(len(raw), np.nan)
            out[[bool(b) for b in raw]] = doubles.ravel()
            return out
    return [_decode_value(b) for b in raw]


def _decode_value(raw: bytes | None) -> Any:
    """One serialized ``ValueProto``: doubles by hand, others by protobuf, remembered by their
    bytes (counts and country codes repeat endlessly; the memo is bounded)."""
    if not raw:
        return None
    if raw[0] == _DOUBLE_TAG and len(raw) == 9:
        return _unpack_double(raw, 1)[0]
    value = _DECODED.get(raw, _UNSEEN)
    if value is _UNSEEN:
        from feast.protos.feast.types.Value_pb2 import Value

        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        value = _DECODED[raw] = _python(Value.FromString(raw))
    return value


_DECODED: dict[bytes, Any] = {}  # serialized ValueProto -> its (immutable) Python value
_DECODED_MAX = 65_536
_UNSEEN = object()


def _python(value: Any) -> Any:
    if value is None:
        return None
    kind = value.WhichOneof("val")
    return None if kind in (None, "null_val") else getattr(value, kind)


# ---- model matrix -------------------------------------------------------------------------------

_CATEGORY_CODES = {v: i for i, v in enumerate(CATEGORIES)}
_DEVICE_CODES = {v: i for i, v in enumerate(DEVICES)}


def serving_matrix(transactions: Sequence[Transaction], online: dict[str, Any]) -> pd.DataFrame:
    """``featurize.model_matrix`` for validated requests: :func:`serving_array` as a DataFrame."""
    return pd.DataFrame(serving_array(transactions, online), columns=MODEL_FEATURES)


def serving_array(transactions: Sequence[Transaction], online: dict[str, Any]) -> np.ndarray:
    """The model matrix (rows x ``MODEL_FEATURES``, float64) of validated requests, in numpy.

    Same features, same order, same values (NaN where an entity is unknown) as
    ``featurize.model_matrix``, ~100x faster for one row: pandas' per-column machinery cost
    ~9 ms of a 12 ms request. Equality with ``model_matrix`` over random requests is a unit
    test, so the two cannot drift apart. ``online`` columns are lists (``None`` = missing) or
    float arrays (NaN = missing), as :meth:`OnlineFeatures.fetch` returns them.
    """
    n = len(transactions)
    amount = np.fromiter((t.amount for t in transactions), dtype="float64", count=n)
    hour = np.fromiter((t.event_timestamp.astimezone(UTC).hour for t in transactions), dtype="float64", count=n)

    def numeric(name: str) -> np.ndarray:
        values = online.get(name)
        if values is None:
            return np.full(n, ENTITY_DEFAULTS[name], dtype="float64")
        if isinstance(values, np.ndarray) and values.dtype.kind == "f":
            return values
        return np.array([np.nan if v is None or isinstance(v, str) else v for v in values], dtype="float64")

    top = online.get("user_top_country", [ENTITY_DEFAULTS["user_top_country"]] * n)
    mean = numeric("user_amount_mean_7d")
    cols = {
        "amount": amount,
        "log_amount": np.log1p(np.clip(amount, 0, None)),
        "hour": hour,
        "is_night": ((hour < 6) | (hour == 23)).astype("float64"),
        "merchant_category_code": np.fromiter((_CATEGORY_CODES.get(t.merchant_category, -1) for t in transactions),
                                              dtype="float64", count=n),
        "device_code": np.fromiter((_DEVICE_CODES.get(t.device, -1) for t in transactions), dtype="float64", count=n),
        "is_foreign": np.fromiter((c is not None and t.country != c for t, c in zip(transactions, top, strict=True)),
                                  dtype="float64", count=n),
        "amount_to_user_mean": amount / np.where(mean > 0, mean, np.nan),
    }
    matrix = np.empty((n, len(MODEL_FEATURES)), dtype="float64")
    for j, feature in enumerate(MODEL_FEATURES):
        matrix[:, j] = cols[feature] if feature in cols else numeric(feature)
    return matrix


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
class Scores:
    """The predictions of one request, column-wise: nothing is built per row on the request
    path except the response itself (:meth:`to_json`)."""

    transactions: Sequence[Transaction]
    matrix: np.ndarray  # rows x MODEL_FEATURES
    proba: np.ndarray
    misses: dict[str, np.ndarray]  # entity -> which rows had no online features
    request_ids: list[str]
    model: registry.LoadedModel

    def __len__(self) -> int:
        return len(self.proba)

    @cached_property
    def is_fraud(self) -> np.ndarray:
        return self.proba >= self.model.threshold

    @cached_property
    def any_miss(self) -> np.ndarray:
        flags = list(self.misses.values())
        return np.logical_or.reduce(flags) if flags else np.zeros(len(self), dtype=bool)

    def records(self) -> list[dict[str, Any]]:
        """``Prediction`` fields per row, as plain dicts in request order."""
        m = self.model
        unknown = self._unknown()
        return [{"transaction_id": t.transaction_id, "request_id": rid, "fraud_probability": p, "is_fraud": f,
                 "threshold": m.threshold, "model_name": m.name, "model_version": m.version,
                 "unknown_entities": u, "defaults_used": bool(u)}
                for t, rid, p, f, u in zip(self.transactions, self.request_ids, self.proba.tolist(),
                                           self.is_fraud.tolist(), unknown, strict=True)]

    def predictions(self) -> list[Prediction]:
        return [Prediction.model_construct(**r) for r in self.records()]

    def to_json(self, *, single: bool = False) -> bytes:
        """The response body: one ``Prediction`` (``single``) or a list, serialized in Rust."""
        from pydantic_core import to_json

        records = self.records()
        return to_json(records[0] if single else records)

    def _unknown(self) -> list[list[str]]:
        entities = list(self.misses)
        out: list[list[str]] = [[] for _ in range(len(self))]
        for row in np.flatnonzero(self.any_miss).tolist():
            out[row] = [e for e in entities if self.misses[e][row]]
        return out


def request_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex characters (one ``os.urandom`` call for all)."""
    import os

    raw = os.urandom(16 * n).hex()
    return [raw[i:i + 32] for i in range(0, 32 * n, 32)]


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
        self._queue: queue.Queue[Scores] = queue.Queue(maxsize=max_queue)
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
        from flywheel.features.store import feature_store

        self.spec, self.settings = spec, settings
        limit_threads(settings.serving_threads)
        self.metrics = ServingMetrics.get()
        self.features = OnlineFeatures(feature_store(settings), spec)
        self.join_keys = list(dict(spec.features.entities).values())
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
        """Score ``transactions``; one ``Prediction`` per transaction, in order."""
        return self.score(transactions, endpoint=endpoint).predictions()

    def score(self, transactions: Sequence[Transaction], *, endpoint: str = "predict") -> Scores:
        """Score ``transactions`` column-wise (what the HTTP routes serialize directly).

        Unknown entities are scored with the training defaults and flagged, never an error.
        Raises whatever the online store raises when it is unreachable.
        """
        started = time.perf_counter()
        model = self.models.get()  # this request keeps this model even if the champion moves
        keys = {key: [getattr(t, key) for t in transactions] for key in self.join_keys}
        online, misses = self.features.fetch_keys(keys)
        matrix = serving_array(transactions, online)
        proba = np.asarray(model.predict_proba_array(matrix, MODEL_FEATURES), dtype="float64")
        scores = Scores(transactions, matrix, proba, misses, request_ids(len(transactions)), model)
        if self.logger is not None:
            self.logger.log(scores)
        self._observe(endpoint, scores, time.perf_counter() - started)
        return scores

    def _observe(self, endpoint: str, scores: Scores, seconds: float) -> None:
        m = self.metrics
        m.latency.labels(endpoint).observe(seconds)
        fraud = int(scores.is_fraud.sum())
        version = scores.model.version
        if fraud:
            m.predictions.labels(version, "fraud").inc(fraud)
        if len(scores) - fraud:
            m.predictions.labels(version, "legit").inc(len(scores) - fraud)
        for entity, flags in scores.misses.items():
            m.lookups.labels(entity).inc(len(flags))
            missed = int(flags.sum())
            if missed:
                m.misses.labels(entity).inc(missed)

    def close(self) -> None:
        self.models.close()
        if self.logger is not None:
            self.logger.close()


# ---- HTTP bodies --------------------------------------------------------------------------------

class ScoringRoutes:
    """The prediction routes as bytes in, (status, bytes) out: what a web framework hands over.

    Validation is pydantic's, straight from the JSON bytes (no intermediate dicts); a bad body
    is a 422 whose ``fields`` name what is wrong (``amount``; batch rows as ``3.amount``). The
    response is serialized from the scores' columns, without a pydantic model per row.
    """

    def __init__(self, predictor: Predictor) -> None:
        from pydantic import TypeAdapter

        self.predictor = predictor
        self._batch: TypeAdapter[list[Transaction]] = TypeAdapter(TransactionBatch)

    def predict(self, body: bytes) -> tuple[int, bytes]:
        from pydantic import ValidationError

        try:
            transaction = Transaction.model_validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc)
        return 200, self.predictor.score([transaction]).to_json(single=True)

    def predict_batch(self, body: bytes) -> tuple[int, bytes]:
        from pydantic import ValidationError

        try:
            transactions = self._batch.validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc)
        return 200, self.predictor.score(transactions, endpoint="predict_batch").to_json()


def field_paths(errors: Sequence[Any]) -> list[str]:
    """Dotted paths of the fields named by pydantic errors (``amount``, ``2.user_id``)."""
    paths: list[str] = []
    for error in errors:
        loc = [str(p) for p in (error.get("loc") or ()) if p not in ("root", "body")] \
            if isinstance(error, dict) else []
        if loc and ".".join(loc) not in paths:
            paths.append(".".join(loc))
    return paths


def unprocessable(exc: Any) -> bytes:
    """The 422 body of a pydantic ``ValidationError``: what is wrong, and which fields."""
    from pydantic_core import to_json

    detail = exc.errors(include_url=False, include_context=False, include_input=False)
    fields = field_paths(detail)
    message = f"invalid field(s): {', '.join(fields)}" if fields else \
        (detail[0]["msg"] if detail else "invalid request")
    return to_json({"error": message, "fields": fields, "detail": detail})


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
    """Keep collector and background threads out of request latency.

    Everything allocated so far (libraries, the model) is frozen out of the collector's view,
    so a young collection only walks request garbage: the default 700-allocation threshold
    keeps each one in the tens of microseconds. (A 50 000 threshold, tried earlier, made each
    collection ~1-2 ms: the p99 at concurrency 1 once a request took < 1 ms.) Older
    generations are collected rarely. The GIL is handed over every 1 ms instead of 5 ms, so a
    background thread (prediction-log flush, champion check) delays a request by ~1 ms per turn
    at most.
    """
    import sys

    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 50, 100)
    sys.setswitchinterval(0.001)


_MICROSECOND = timedelta(microseconds=1)


def _log_frame(scored: list[Scores]) -> pd.DataFrame:
    """Prediction-log rows of many requests, built column-wise (little Python per row: this runs
    on the logger thread and shares the GIL with requests)."""
    txns = [t for s in scored for t in s.transactions]
    frame = pd.DataFrame({
        "request_id": [r for s in scored for r in s.request_ids],
        "transaction_id": [t.transaction_id for t in txns],
        "event_timestamp": pd.to_datetime(np.fromiter(((t.event_timestamp - EARLIEST) // _MICROSECOND for t in txns),
                                                      dtype="int64", count=len(txns)), unit="us", utc=True),
        "logged_at": pd.Timestamp(datetime.now(UTC)),
        "user_id": np.fromiter((t.user_id for t in txns), dtype="int64", count=len(txns)),
        "merchant_id": np.fromiter((t.merchant_id for t in txns), dtype="int64", count=len(txns)),
        "model_version": np.repeat([s.model.version for s in scored], [len(s) for s in scored]).astype(object),
        "probability": np.concatenate([s.proba for s in scored]),
        "decision": np.concatenate([s.is_fraud for s in scored]),
        "feature_miss": np.concatenate([s.any_miss for s in scored]),
    })
    features = pd.DataFrame(np.vstack([s.matrix for s in scored]), columns=MODEL_FEATURES)
    return pd.concat([frame, features], axis=1)


__all__ = ["ENTITY_DEFAULTS", "MAX_BATCH", "ModelHolder", "OnlineFeatures", "Prediction", "PredictionLogger",
           "Predictor", "Scores", "ScoringRoutes", "ServingMetrics", "Transaction", "TransactionBatch", "field_paths",
           "limit_threads", "model_device", "request_ids", "serving_array", "serving_matrix", "tune_gc",
           "unprocessable"]
