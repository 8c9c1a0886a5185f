"""The Flywheel model server: a thin BentoML shell around ``flywheel.serving.Predictor``.

Endpoints: ``POST /predict`` (one transaction), ``POST /predict_batch`` (a list),
plus BentoML's ``/healthz``, ``/readyz`` (ready once the champion is loaded),
``/metrics`` (Prometheus) and the Swagger UI at ``/`` (OpenAPI at ``/docs.json``).
Every prediction endpoint requires the ``X-API-Key`` header; invalid input is a 422
that names the offending fields. CPU or GPU is configuration (``FLYWHEEL_SERVING_GPUS``,
``FLYWHEEL_TORCH_DEVICE``), not a second service: see docs/serving.md.
"""

from __future__ import annotations

import hmac
import json
import logging
import time

import bentoml

from flywheel.config import get_settings
from flywheel.serving import Prediction, Predictor, Transaction, TransactionBatch, tune_gc

PROTECTED = ("/predict", "/predict_batch")
access_log = logging.getLogger("flywheel.access")


def _field_paths(detail: object) -> list[str]:
    """Dotted paths of the fields named by pydantic errors (``amount``, ``2.user_id``)."""
    paths = []
    for error in detail if isinstance(detail, list) else []:
        loc = [str(p) for p in (error.get("loc") or ()) if p not in ("root", "body", "transactions",
                                                                      "transaction")] if isinstance(error, dict) else []
        if loc and ".".join(loc) not in paths:
            paths.append(".".join(loc))
    return paths


def _unprocessable(body: bytes) -> bytes:
    """BentoML's 400 body rewritten as our 422: what is wrong, and which fields."""
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": body.decode(errors="replace")}
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    detail = data.get("detail", []) if isinstance(data, dict) else []
    fields = _field_paths(detail)
    message = data.get("error", "invalid request") if isinstance(data, dict) else "invalid request"
    if fields:
        message = f"invalid field(s): {', '.join(fields)}"
    return json.dumps({"error": message, "fields": fields, "detail": detail}).encode()


class FlywheelHttpMiddleware:
    """API key check (401, before any work), 400 → 422 naming the fields on the prediction
    routes, and one structured (JSON) access-log line per request: never the body, the key
    or any other header."""

    def __init__(self, app, api_key: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path, status = scope["path"], [0]
        protected = path in PROTECTED
        if protected and self.api_key:
            given = dict(scope.get("headers") or []).get(b"x-api-key", b"").decode(errors="replace")
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                await _json(send, 401, {"error": "missing or wrong X-API-Key header"})
                return self._log(scope, 401, started)
        held: dict = {}

        async def wrapped(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if protected and message["status"] == 400:
                    held["start"], held["body"] = message, b""
                    return
            elif held and message["type"] == "http.response.body":
                held["body"] += message.get("body", b"")
                if message.get("more_body"):
                    return
                status[0] = 422
                return await _json(send, 422, raw=_unprocessable(held["body"]))
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            if path not in ("/metrics", "/healthz", "/readyz", "/livez"):
                self._log(scope, status[0], started)

    @staticmethod
    def _log(scope, status: int, started: float) -> None:  # type: ignore[no-untyped-def]
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(json.dumps({
                "ts": time.time(), "method": scope.get("method"), "path": scope["path"], "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "client": (scope.get("client") or ("", 0))[0],
            }))


async def _json(send, status: int, body: dict | None = None, *, raw: bytes | None = None) -> None:  # type: ignore[no-untyped-def]
    payload = raw if raw is not None else json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


_settings = get_settings()
_resources: dict[str, object] = {"cpu": str(_settings.serving_cpus)}
if _settings.serving_gpus:
    _resources["gpu"] = _settings.serving_gpus


@bentoml.service(
    name="fraud_detector",
    workers=_settings.serving_workers,
    traffic={"timeout": 10, "max_concurrency": 256},
    resources=_resources,
    # Our middleware writes the structured access log; BentoML's own would be a second line.
    logging={"access": {"enabled": False}},
)
class FraudDetector:
    def __init__(self) -> None:
        if not access_log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            access_log.addHandler(handler)
            access_log.setLevel(logging.INFO if _settings.serving_access_log else logging.WARNING)
            access_log.propagate = False
        self.predictor = Predictor.from_settings()
        tune_gc()

    # Scoring is a few hundred microseconds of CPU: run it on the event loop instead of
    # paying a thread hop per request (the model swap happens on its own thread).
    @bentoml.api(route="/predict")
    async def predict(self, transaction: Transaction, /) -> Prediction:
        """Score one transaction: fraud probability, decision at the model's threshold, version.
        Unknown users/merchants are scored with default features and flagged in ``unknown_entities``."""
        return self.predictor.predict([transaction])[0]

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, transactions: TransactionBatch, /) -> list[Prediction]:
        """Score up to 1000 transactions with one online-feature round trip for all entities."""
        return self.predictor.predict(transactions, endpoint="predict_batch")

    def __is_ready__(self) -> bool:
        return self.predictor.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.predictor.close()


_key = _settings.api_key
FraudDetector.add_asgi_middleware(FlywheelHttpMiddleware, api_key=_key.get_secret_value() if _key else None)
