"""The comparison services of ``benchmarks/serving.py``, with the same model and the same
online-feature lookups as the Flywheel service (``flywheel.serving.predictor`` pieces):

* ``floor``  — a hand-written minimal FastAPI app, run with uvicorn (the floor);
* ``DefaultBento`` — a default, untuned BentoML service (sync endpoint, default config);
* ``null``   — a raw ASGI app under uvicorn that answers a constant body without reading
  features or scoring: what this machine and load generator allow any Python server.

Neither logs predictions nor exports metrics: they are the work a request cannot avoid.
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from flywheel.core.config import get_settings
from flywheel.core.spec import load_spec
from flywheel.features.featurize import MODEL_FEATURES
from flywheel.serving.predictor import OnlineFeatures, Transaction, limit_threads, serving_array
from flywheel.training import registry


class Scorer:
    """Features + model matrix + model, nothing else: the engine's own fast paths (the same
    feature read, numpy featurisation and array scoring the Flywheel service uses)."""

    def __init__(self) -> None:
        from flywheel.features.store import feature_store

        settings = get_settings()
        limit_threads(settings.serving_threads)  # same model runtime as the Flywheel service
        self.spec = load_spec(settings=settings)
        self.features = OnlineFeatures(feature_store(settings), self.spec)
        self.model = registry.load_alias(self.spec.model_name, settings=settings)

    def score(self, t: Transaction) -> dict[str, Any]:
        online, misses = self.features.fetch_keys({"user_id": [t.user_id], "merchant_id": [t.merchant_id]})
        p = float(np.asarray(self.model.predict_proba_array(serving_array([t], online), MODEL_FEATURES))[0])
        return {"transaction_id": t.transaction_id, "fraud_probability": p, "is_fraud": p >= self.model.threshold,
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
    body = b'{"fraud_probability": 0.0}'

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
