"""The Flywheel model server: a thin BentoML shell around ``flywheel.serving.Predictor``.

Endpoints: ``POST /predict`` (one transaction), ``POST /predict_batch`` (a list),
plus BentoML's ``/healthz``, ``/readyz``, ``/metrics`` and the Swagger UI at ``/``.
Every prediction endpoint requires the ``X-API-Key`` header.
"""

from __future__ import annotations

import hmac
import json
import os

import bentoml

from flywheel.config import get_settings
from flywheel.serving import Prediction, Predictor, Transaction

PROTECTED = ("/predict", "/predict_batch")


class ApiKeyMiddleware:
    """Rejects prediction calls without the configured API key (401), before any work."""

    def __init__(self, app, api_key: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] in PROTECTED and self.api_key:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"x-api-key", b"").decode()
            if not hmac.compare_digest(given, self.api_key):
                body = json.dumps({"error": "missing or wrong X-API-Key header"}).encode()
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


@bentoml.service(
    name="fraud_detector",
    workers=int(os.environ.get("FLYWHEEL_SERVING_WORKERS", "1")),
    traffic={"timeout": 10},
    resources={"cpu": "1"},
)
class FraudDetector:
    def __init__(self) -> None:
        self.predictor = Predictor.from_settings()

    @bentoml.api(route="/predict")
    def predict(self, transaction: Transaction, /) -> Prediction:
        """Score one transaction: fraud probability, decision at the model's threshold, version."""
        return self.predictor.predict([transaction])[0]

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, transactions: list[Transaction], /) -> list[Prediction]:
        """Score many transactions with one online-feature round trip."""
        return self.predictor.predict(transactions)

    @bentoml.on_shutdown
    def flush_logs(self) -> None:
        self.predictor.logger.close()


_key = get_settings().api_key
FraudDetector.add_asgi_middleware(ApiKeyMiddleware, api_key=_key.get_secret_value() if _key else None)
