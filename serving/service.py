"""The Flywheel model server: a thin BentoML shell around ``flywheel.serving.predictor``.

Endpoints: ``POST /predict`` (one transaction), ``POST /predict_batch`` (a list),
plus BentoML's ``/healthz``, ``/readyz`` (ready once the champion is loaded),
``/metrics`` (Prometheus) and the Swagger UI at ``/`` (OpenAPI at ``/docs.json``).
Every prediction endpoint requires the ``X-API-Key`` header; invalid input is a 422
that names the offending fields. CPU or GPU is configuration (``FLYWHEEL_SERVING_GPUS``,
``FLYWHEEL_TORCH_DEVICE``), not a second service: see docs/serving.md.

The two prediction routes are a small FastAPI app mounted in the bento
(``@bentoml.asgi_app``): a request goes from the middleware straight to
``flywheel.serving.predictor.ScoringRoutes`` (bytes in, bytes out), skipping BentoML's per-API IO layer,
while the bento still builds, serves the probes and /metrics, and publishes the routes in its
OpenAPI document.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

import bentoml
from fastapi import FastAPI
from fastapi.routing import APIRoute

from flywheel.core.config import get_settings
from flywheel.serving.predictor import MAX_BATCH, Prediction, Predictor, ScoringRoutes, Transaction, tune_gc

QUIET = ("/metrics", "/healthz", "/readyz", "/livez")
access_log = logging.getLogger("flywheel.access")


class FlywheelHttpMiddleware:
    """API key check (401, before any work) on the prediction routes, the prediction routes
    themselves, and one structured (JSON) access-log line per request: never the body, the key
    or any other header.

    BentoML places this middleware inside its own (metrics, tracing, timeout, concurrency
    limit). The two prediction routes are answered here by the very ASGI handlers the mounted
    ``scoring`` app routes them to: the request skips the context middleware, two routers and
    FastAPI's request/response layer (~0.1 ms of a ~0.6 ms request), nothing else.
    """

    def __init__(self, app, api_key: str | None = None) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        handler = HANDLERS.get(path)
        if handler is not None and self.api_key:
            given = next((v for k, v in scope.get("headers") or () if k == b"x-api-key"), b"")
            if not hmac.compare_digest(given, self.api_key):
                await _send(send, 401, b'{"error": "missing or wrong X-API-Key header"}')
                return _log(scope, 401, started)
        if handler is not None and scope["method"] == "POST":
            return _log(scope, await handler(scope, receive, send), started)
        if path in QUIET:
            return await self.app(scope, receive, send)
        status = [0]

        async def record(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            _log(scope, status[0], started)


def _log(scope: dict[str, Any], status: int, started: float) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps({
            "ts": time.time(), "method": scope.get("method"), "path": scope["path"], "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "client": (scope.get("client") or ("", 0))[0]}))


async def _send(send: Any, status: int, payload: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]})
    await send({"type": "http.response.body", "body": payload})


# ---- the prediction routes ----------------------------------------------------------------------
# Bytes in, bytes out: ScoringRoutes validates the JSON body in pydantic-core and serializes the
# response from column arrays. Each route is a FastAPI APIRoute, so FastAPI documents it (request
# schema below = what ScoringRoutes validates against; response model) and BentoML publishes it
# in /docs.json, but it is *served* by a plain ASGI handler: FastAPI neither parses nor serializes.

def _handler(name: str) -> Any:
    async def handle(scope: Any, receive: Any, send: Any) -> int:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        routes: ScoringRoutes | None = getattr(scoring.state, "routes", None)
        if routes is None:  # not started yet (the readiness probe says so too)
            status, payload = 503, b'{"error": "the model is not loaded yet"}'
        else:
            status, payload = getattr(routes, name)(b"".join(chunks))
        await _send(send, status, payload)
        return status

    return handle


HANDLERS = {"/predict": _handler("predict"), "/predict_batch": _handler("predict_batch")}


class _AsgiRoute(APIRoute):
    """A route FastAPI documents like any other, answered by a plain ASGI handler."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.app = HANDLERS[path]  # type: ignore[assignment]


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong X-API-Key header"},
    422: {"description": "Invalid input: `fields` names the offending fields (batch rows as `3.amount`)"},
}
_TRANSACTION = Transaction.model_json_schema()
scoring = FastAPI(title="fraud_detector", openapi_url=None, docs_url=None, redoc_url=None)
scoring.router.route_class = _AsgiRoute


# The endpoint functions carry the documentation (summary, response model); _AsgiRoute serves them.
@scoring.post("/predict", response_model=Prediction, responses=_ERRORS, openapi_extra=_body(_TRANSACTION))
async def predict() -> None:
    """Score one transaction: fraud probability, decision at the model's threshold, version.
    Unknown users/merchants are scored with default features and flagged in ``unknown_entities``."""


@scoring.post("/predict_batch", response_model=list[Prediction], responses=_ERRORS,
              openapi_extra=_body({"type": "array", "items": _TRANSACTION, "minItems": 1, "maxItems": MAX_BATCH}))
async def predict_batch() -> None:
    """Score up to 1000 transactions with one online-feature round trip for all entities."""


def _start_access_log() -> None:
    """One JSON line per request on stderr, written inline: ~15 µs. (A writer thread cost more:
    waking it after every request competed with the next request for the GIL.)"""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO if _settings.serving_access_log else logging.WARNING)
    access_log.propagate = False


_settings = get_settings()
_resources: dict[str, object] = {"cpu": str(_settings.serving_cpus)}
if _settings.serving_gpus:
    _resources["gpu"] = _settings.serving_gpus


@bentoml.asgi_app(scoring, path="/")
@bentoml.service(
    name="fraud_detector",
    workers=_settings.serving_workers,
    traffic={"timeout": 10, "max_concurrency": 256},
    resources=_resources,
    # Our middleware writes the structured access log; BentoML's own would be a second line.
    # BentoML's request metrics and tracing spans skip the prediction routes (~0.12 ms per
    # request): flywheel_request_latency_seconds and flywheel_predictions_total cover them.
    logging={"access": {"enabled": False, "skip_paths": list(HANDLERS)}},
    tracing={"excluded_urls": list(HANDLERS)},
)
class FraudDetector:
    def __init__(self) -> None:
        if not access_log.handlers:
            _start_access_log()
        self.predictor = Predictor.from_settings()
        scoring.state.routes = ScoringRoutes(self.predictor)
        tune_gc()

    def __is_ready__(self) -> bool:
        return self.predictor.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.predictor.close()


_key = _settings.api_key
# mypy reads the decorated class as the plain class; at run time it is a bentoml Service.
FraudDetector.add_asgi_middleware(FlywheelHttpMiddleware,  # type: ignore[attr-defined]
                                  api_key=_key.get_secret_value() if _key else None)
