"""Serving support: request/response models, champion-following model holder,
online feature lookup and an off-request-path prediction logger.

The BentoML service in ``serving/`` is a thin shell around :class:`Predictor`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from flywheel import registry, storage
from flywheel.config import Settings, get_settings
from flywheel.featurize import ENTITY_DEFAULTS, MODEL_FEATURES, model_matrix
from flywheel.spec import PipelineSpec, load_spec

log = logging.getLogger(__name__)


class Transaction(BaseModel):
    """One card transaction to score."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str | None = Field(None, max_length=128, description="Caller's id, echoed back")
    user_id: int = Field(ge=0, description="Card holder id")
    merchant_id: int = Field(ge=0, description="Merchant id")
    amount: float = Field(gt=0, le=1_000_000, description="Amount in the card's currency")
    event_timestamp: datetime = Field(description="When the transaction happened (ISO 8601)")
    merchant_category: str = Field(max_length=64)
    country: str = Field(min_length=2, max_length=3, description="ISO country code")
    device: Literal["mobile", "desktop", "pos", "unknown"] = "unknown"


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


class ModelHolder:
    """Holds the champion and swaps it when the alias moves (checked every ``refresh_s``)."""

    def __init__(self, model_name: str, settings: Settings) -> None:
        self._name, self._settings = model_name, settings
        self._lock = threading.Lock()
        self.current = registry.load_alias(model_name, settings=settings)
        self._checked = time.monotonic()

    def get(self) -> registry.LoadedModel:
        if time.monotonic() - self._checked >= self._settings.champion_refresh_s:
            self.refresh()
        return self.current

    def refresh(self) -> bool:
        """Load the champion if the alias moved; returns True when the model changed."""
        with self._lock:
            self._checked = time.monotonic()
            mv = registry.alias_version(self._name, registry.CHAMPION, settings=self._settings)
            if mv is None or str(mv.version) == self.current.version:
                return False
            loaded = registry.load_version(self._name, str(mv.version), settings=self._settings)
            self.current = loaded  # one reference swap: in-flight requests keep their model
            log.info("champion of %s moved to v%s", self._name, loaded.version)
            return True


class PredictionLogger:
    """Batches prediction records to the object store off the request path.

    The queue is bounded: when it is full a record is dropped and counted
    (``dropped``); a failed upload is retried on the next flush and counted
    (``failed_flushes``). Nothing is lost silently.
    """

    def __init__(self, model_name: str, settings: Settings, *, max_queue: int = 50_000) -> None:
        self._name, self._settings = model_name, settings
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=max_queue)
        self._pending: list[dict[str, Any]] = []
        self.dropped = 0
        self.failed_flushes = 0
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-logger", daemon=True)
        self._thread.start()

    def log(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self.dropped += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(self._settings.prediction_flush_s)
            self.flush()

    def flush(self) -> int:
        """Upload everything queued so far, one object per event date; returns rows written."""
        while True:
            try:
                self._pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not self._pending:
            return 0
        batch, self._pending = self._pending, []
        try:
            frame = pd.DataFrame(batch)
            for dt, part in frame.groupby(frame["event_timestamp"].dt.strftime("%Y-%m-%d")):
                key = f"{self._name}/dt={dt}/part-{uuid.uuid4().hex}.parquet"
                storage.put_bytes("predictions", key, storage.df_to_parquet_bytes(part),
                                  settings=self._settings)
        except Exception:  # the store may be down: keep the rows for the next flush
            self.failed_flushes += 1
            self._pending = batch + self._pending
            log.exception("prediction log flush failed; %d rows kept for retry", len(self._pending))
            return 0
        self.written += len(batch)
        return len(batch)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


class Predictor:
    """Scores transactions with the champion and the entities' online features."""

    def __init__(self, spec: PipelineSpec, settings: Settings) -> None:
        from flywheel.features import feature_store

        self.spec, self.settings = spec, settings
        self.store = feature_store(settings)
        self.models = ModelHolder(spec.model_name, settings)
        self.logger = PredictionLogger(spec.model_name, settings)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Predictor:
        settings = settings or get_settings()
        return cls(load_spec(settings=settings), settings)

    def predict(self, transactions: list[Transaction]) -> list[Prediction]:
        from flywheel.features import online_features

        model = self.models.get()
        frame = pd.DataFrame([t.model_dump() for t in transactions])
        frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
        keys = self.spec.features.entities
        rows = [{col: int(r[col]) for col in keys.values()} for r in frame.to_dict("records")]
        online = online_features(self.store, self.spec, rows)
        matrix = model_matrix(frame, online)
        proba = model.predict_proba(matrix)
        misses = _misses(online, keys)
        predictions = [
            Prediction(
                transaction_id=t.transaction_id,
                request_id=uuid.uuid4().hex,
                fraud_probability=float(p),
                is_fraud=bool(p >= model.threshold),
                threshold=model.threshold,
                model_name=model.name,
                model_version=model.version,
                unknown_entities=miss,
            )
            for t, p, miss in zip(transactions, proba, misses, strict=True)
        ]
        self.logger.log(_log_records(frame, matrix, predictions))
        return predictions


def _misses(online: pd.DataFrame, keys: dict[str, str]) -> list[list[str]]:
    """Per row, the entities whose features were all missing (vectorised: on the request path)."""
    missing = {
        entity: online[cols].isna().all(axis=1).to_numpy()
        for entity in keys
        if (cols := [c for c in ENTITY_DEFAULTS if c.startswith(entity + "_") and c in online.columns])
    }
    return [[e for e, flags in missing.items() if flags[i]] for i in range(len(online))]


def _log_records(frame: pd.DataFrame, matrix: pd.DataFrame, preds: list[Prediction]) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    records = []
    for i, pred in enumerate(preds):
        record: dict[str, Any] = {
            "request_id": pred.request_id,
            "event_timestamp": frame["event_timestamp"].iloc[i],
            "logged_at": now,
            "user_id": int(frame["user_id"].iloc[i]),
            "merchant_id": int(frame["merchant_id"].iloc[i]),
            "model_version": pred.model_version,
            "probability": pred.fraud_probability,
            "decision": pred.is_fraud,
            "feature_miss": bool(pred.unknown_entities),
        }
        record.update({f: float(matrix[f].iloc[i]) for f in MODEL_FEATURES})
        records.append(record)
    return records
