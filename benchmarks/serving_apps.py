"""The comparison services of ``benchmarks/serving.py``, with the same model and the same
online-feature reads as the Flywheel service:

* ``floor``  — a hand-written minimal FastAPI app, run with uvicorn: the fraud request model and
  the numpy featurization written by hand for fraud (what the engine did before use cases were
  data; kept here, outside the engine, as the fixed floor the generic path is measured against);
* ``DefaultBento`` — a default, untuned BentoML service (sync endpoint, default config), same scorer;
* ``null``   — a raw ASGI app under uvicorn that answers a constant body without reading
  features or scoring: what this machine and load generator allow any Python server.

Neither logs predictions nor exports metrics: they are the work a request cannot avoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import bentoml
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from flywheel.core.config import get_settings
from flywheel.core.spec import load_spec
from flywheel.features.featurizer import featurizer_for
from flywheel.serving.online import OnlineFeatures
from flywheel.serving.predictor import limit_threads, predict_array
from flywheel.training import registry


class Transaction(BaseModel):
    """The fraud request, written by hand (the floor's; the engine generates its own from the spec)."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str | None = Field(None, max_length=128)
    user_id: int = Field(ge=0, le=2**63 - 1)
    merchant_id: int = Field(ge=0, le=2**63 - 1)
    amount: float = Field(ge=0.01, le=50_000)
    event_timestamp: datetime
    merchant_category: str = Field(max_length=64)
    country: str = Field(max_length=256)
    device: Literal["mobile", "desktop", "pos", "unknown"] = "unknown"


class Scorer:
    """Features + model matrix + model, nothing else: the engine's feature read and array scoring,
    with fraud's featurization written by hand in numpy (:func:`fraud_array`)."""

    def __init__(self) -> None:
        from flywheel.features.store import feature_store

        settings = get_settings()
        limit_threads(settings.serving_threads)  # same model runtime as the Flywheel service
        self.spec = load_spec(settings=settings)
        fz = featurizer_for(self.spec)
        self.names, self.defaults = list(fz.names), fz.entity_defaults
        self.codes = {name: fz.vocabularies[name] for name in ("merchant_category_code", "device_code")}
        self.features = OnlineFeatures(feature_store(settings), self.spec)
        self.model = registry.load_alias(self.spec.model_name, settings=settings)

    def fraud_array(self, transactions: Sequence[Transaction], online: dict[str, Any]) -> np.ndarray:
        """The fraud model matrix of validated requests, by hand (the engine's former ``serving_array``)."""
        n = len(transactions)
        amount = np.fromiter((t.amount for t in transactions), dtype="float64", count=n)
        hour = np.fromiter((t.event_timestamp.astimezone(UTC).hour for t in transactions), dtype="float64", count=n)

        def numeric(name: str) -> np.ndarray:
            values = online.get(name)
            if values is None:
                default = self.defaults.get(name)
                return np.full(n, np.nan if default is None else default, dtype="float64")
            if isinstance(values, np.ndarray) and values.dtype.kind == "f":
                return values
            return np.array([np.nan if v is None or isinstance(v, str) else v for v in values], dtype="float64")

        top = online.get("user_top_country", [None] * n)
        mean = numeric("user_amount_mean_7d")
        cat, dev = self.codes["merchant_category_code"], self.codes["device_code"]
        cols = {
            "amount": amount,
            "log_amount": np.log1p(np.clip(amount, 0, None)),
            "hour": hour,
            "is_night": ((hour < 6) | (hour == 23)).astype("float64"),
            "merchant_category_code": np.fromiter((cat.get(t.merchant_category, -1) for t in transactions),
                                                  dtype="float64", count=n),
            "device_code": np.fromiter((dev.get(t.device, -1) for t in transactions), dtype="float64", count=n),
            "is_foreign": np.fromiter((c is not None and t.country != c for t, c in zip(transactions, top,
                                                                                      strict=True)),
                                      dtype="float64", count=n),
            "amount_to_user_mean": amount / np.where(mean > 0, mean, np.nan),
        }
        matrix = np.empty((n, len(self.names)), dtype="float64")
        for j, feature in enumerate(self.names):
            matrix[:, j] = cols[feature] if feature in cols else numeric(feature)
        return matrix

    def score(self, t: Transaction) -> dict[str, Any]:
        online, misses = self.features.fetch_keys({"user_id": [t.user_id], "merchant_id": [t.merchant_id]})
        p = float(predict_array(self.model, self.fraud_array([t], online), self.names)[0])
        return {"transaction_id": t.transaction_id, "probability": p, "decision": p >= self.model.threshold,
                "model_version": self.model.version,
                "unknown_entities": [e for e, flags in misses.items() if flags[0]]}


def create_floor() -> Any:
    """uvicorn --factory benchmarks.serving_apps:create_floor"""
    from fastapi import FastAPI

    app = FastAPI()
    scorer = Scorer()

    @app.post("/predict")
    async def predict(transaction: Transaction) -> dict[str, Any]:  # inline, no thread hop: a true floor
        return scorer.score(transaction)

    return app


def create_null() -> Any:
    """uvicorn --factory benchmarks.serving_apps:create_null"""
    body = b'{"probability": 0.0}'

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


@bentoml.service(name="default_bento")
class DefaultBento:
    def __init__(self) -> None:
        self.scorer = Scorer()

    @bentoml.api(route="/predict")
    def predict(self, transaction: Transaction, /) -> dict[str, Any]:
        return self.scorer.score(transaction)
