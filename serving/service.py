"""The Flywheel model server: a thin BentoML shell around ``flywheel.serving.server.ModelServer``.

Endpoints, per served use case (the spec's ``name``): ``POST /<use case>/predict`` (one request)
and ``POST /<use case>/predict_batch`` (a list), with request/response schemas generated from
the spec; ``/predict`` and ``/predict_batch`` too when exactly one use case is served. Plus
BentoML's ``/healthz``, ``/readyz`` (ready once every served champion is loaded), ``/metrics``
(Prometheus, labelled by use case) and the Swagger UI at ``/`` (OpenAPI at ``/docs.json``).
Every prediction endpoint requires the ``X-API-Key`` header, and the server does not start
without a key unless told to serve insecure (``FLYWHEEL_SERVING_INSECURE=true`` or
``bentoml serve ... --arg insecure=true``). A body over ``FLYWHEEL_SERVING_MAX_BODY_BYTES`` is a
413 (on its Content-Length before reading, or counted while it streams), one slower than
``FLYWHEEL_SERVING_BODY_TIMEOUT_S`` a 408; invalid input is a 422 that names the offending fields
(:mod:`flywheel.serving.edge`). Which use cases: ``FLYWHEEL_SERVING_USE_CASES`` (default: every one
with a champion). CPU or GPU is configuration (``FLYWHEEL_SERVING_GPUS``, ``FLYWHEEL_TORCH_DEVICE``),
not a second service: see docs/serving.md.

The prediction routes are a small FastAPI app mounted in the bento (``@bentoml.asgi_app``),
registered when the worker has loaded its use cases: a request goes from the middleware straight
to ``flywheel.serving.routes.ScoringRoutes`` (bytes in, bytes out), skipping BentoML's per-API IO
layer, while the bento still builds, serves the probes and /metrics, and publishes the routes in
its OpenAPI document.
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
from flywheel.serving import edge, registry_events
from flywheel.serving.online import OnlineStoreUnavailable
from flywheel.serving.prediction_log import PredictionLogUnavailable
from flywheel.serving.predictor import tune_gc
from flywheel.serving.routes import RUNTIME_HEADER
from flywheel.serving.schemas import MAX_BATCH
from flywheel.serving.server import ModelServer, Route, ServingError

QUIET = ("/metrics", "/healthz", "/readyz", "/livez")
NOT_LOADED = b'{"error": "the models are not loaded yet"}'
LOG_FULL = b'{"error": "the prediction log cannot keep this request (its spool is full): retry later"}'
FEATURES_DOWN = b'{"error": "the online feature store is unavailable: retry later"}'
access_log = logging.getLogger("flywheel.access")
log = logging.getLogger("flywheel.serving")
_warned = [0.0]


def _warn_every(seconds: float, message: str, *args: Any) -> None:
    """One warning per ``seconds`` (a down store would otherwise log every request)."""
    now = time.monotonic()
    if now - _warned[0] >= seconds:
        _warned[0] = now
        log.warning(message, *args)


def _server() -> ModelServer | None:
    return getattr(scoring.state, "server", None)


def _is_prediction_path(path: str) -> bool:
    return path.endswith(("/predict", "/predict_batch"))


class FlywheelHttpMiddleware:
    """The edge of the prediction routes, before any work: the API key (401), the body limit
    (413, on Content-Length before reading, then counted while reading) and the body deadline
    (408); then the routes themselves, and one structured (JSON) access-log line per request:
    never the body, the key or any other header.

    With no key it answers 401 to every prediction request unless ``insecure`` (fail closed,
    should the start-up check ever be skipped). BentoML places this middleware inside its own
    (metrics, tracing, timeout, concurrency limit). The prediction routes are answered here by
    the very ASGI handlers the mounted ``scoring`` app routes them to: the request skips the
    context middleware, two routers and FastAPI's request/response layer (~0.1 ms of a ~0.6 ms
    request), nothing else.
    """

    def __init__(self, app, api_key: bytes | None = None, insecure: bool = False, *,  # type: ignore[no-untyped-def]
                 max_body_bytes: int, body_timeout_s: float) -> None:
        self.app = app
        self.api_key = api_key
        self.open = api_key is None and insecure
        self.reader = edge.BodyReader(limit=max_body_bytes, timeout_s=body_timeout_s)

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope["path"]
        server = _server()
        handler = server.async_handler(path) if server is not None else None
        guarded = handler is not None or (server is None and _is_prediction_path(path))
        if guarded and not self.open:
            given = next((v for k, v in scope.get("headers") or () if k == b"x-api-key"), b"")
            if self.api_key is None or not hmac.compare_digest(given, self.api_key):
                await _send(send, 401, b'{"error": "missing or wrong X-API-Key header"}')
                return _log(scope, 401, started)
        if guarded and scope["method"] == "POST":
            return _log(scope, await _answer(handler, scope, receive, send, self.reader), started)
        if path == registry_events.PATH and scope["method"] == "POST":  # HMAC-signed, not API-keyed
            return _log(scope, await _registry_event(server, scope, receive, send, self.reader), started)
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


async def _read_body(scope: Any, receive: Any, send: Any, reader: edge.BodyReader) -> bytes | int:
    """The request body within the edge's limits, or the status already answered (a refused body
    closes the connection: the rest of it is never read) or 499 (the client went away)."""
    try:
        edge.check_declared_length(edge.content_length(scope.get("headers") or ()), reader.limit)
        return await reader.read(receive)
    except edge.EdgeError as exc:
        await _send(send, exc.status, exc.payload(), close=True)
        return exc.status
    except edge.ClientDisconnected:
        return 499  # nobody to answer (nginx's code for it, in the access log only)


async def _answer(handler: Any, scope: Any, receive: Any, send: Any, reader: edge.BodyReader) -> int:
    """Read the body within the edge's limits, await the route's ``bytes -> (status, bytes,
    runtime)`` handler, send its answer (with the runtime that scored in the
    ``x-flywheel-runtime`` header). A refused body closes the connection: the rest of it is
    never read."""
    body = await _read_body(scope, receive, send, reader)
    if isinstance(body, int):
        return body
    try:
        status, payload, runtime = (503, NOT_LOADED, "") if handler is None else await handler(body)
    except PredictionLogUnavailable:  # not answered: its prediction could not be logged
        status, payload, runtime = 503, LOG_FULL, ""
    except OnlineStoreUnavailable as exc:  # down or hung: a 503 within the timeout, never a default
        _warn_every(60.0, "answering 503: %s", exc)
        status, payload, runtime = 503, FEATURES_DOWN, ""
    await _send(send, status, payload, runtime)
    return status


async def _registry_event(server: ModelServer | None, scope: Any, receive: Any, send: Any,
                          reader: edge.BodyReader) -> int:
    """An MLflow registry webhook: the server verifies its signature and refreshes the model."""
    body = await _read_body(scope, receive, send, reader)
    if isinstance(body, int):
        return body
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or ()}
    status, payload = (503, NOT_LOADED) if server is None else server.registry_event(body, headers)
    await _send(send, status, payload)
    return status


def _log(scope: dict[str, Any], status: int, started: float) -> None:
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(json.dumps({
            "ts": time.time(), "method": scope.get("method"), "path": scope["path"], "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "client": (scope.get("client") or ("", 0))[0]}))


async def _send(send: Any, status: int, payload: bytes, runtime: str = "", *, close: bool = False) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if runtime:
        headers.append((RUNTIME_HEADER, runtime.encode()))
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# ---- the prediction routes ----------------------------------------------------------------------
# Bytes in, bytes out: ScoringRoutes validates the JSON body in pydantic-core and serializes the
# response from column arrays. Each route is a FastAPI APIRoute, so FastAPI documents it (request
# schema = what ScoringRoutes validates against; response model, both generated from the spec)
# and BentoML publishes it in /docs.json, but it is *served* by a plain ASGI handler: FastAPI
# neither parses nor serializes.

class _AsgiRoute(APIRoute):
    """A route FastAPI documents like any other, answered by a plain ASGI handler."""

    def __init__(self, path: str, endpoint: Any, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            server = _server()
            await _answer(server.async_handler(path) if server is not None else None, scope, receive, send,
                          _route_reader)

        self.app = app  # type: ignore[assignment]


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or wrong X-API-Key header"},
    408: {"description": "The request body did not arrive within `serving_body_timeout_s`"},
    413: {"description": "The request body is over `serving_max_body_bytes` (declared or counted); `limit_bytes` "
                         "says the limit"},
    422: {"description": "Invalid input: `fields` names the offending fields (batch rows as `3.<column>`); a batch "
                         f"of more than {MAX_BATCH} rows; with `serving.out_of_contract: reject` in the spec, a "
                         "value outside the contract's range or allowed set"},
    503: {"description": "The models are not loaded yet, or the prediction log cannot keep the request"},
}
scoring = FastAPI(title="flywheel", openapi_url=None, docs_url=None, redoc_url=None)


def _document(server: ModelServer) -> None:
    """Add every served route to the ``scoring`` app, for FastAPI's and BentoML's OpenAPI."""
    for route in server.table:
        schemas = server.predictors[route.use_case].schemas
        item = schemas.openapi_request()
        body = item if route.endpoint == "predict" else {"type": "array", "items": item, "minItems": 1,
                                                         "maxItems": MAX_BATCH}
        response: Any = schemas.response if route.endpoint == "predict" else list[schemas.response]  # type: ignore
        scoring.router.routes.append(_AsgiRoute(
            route.path, _endpoint(route), methods=["POST"], response_model=response, responses=_ERRORS,
            tags=[route.use_case], summary=_summary(route, server),
            openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}},
            operation_id=f"{route.endpoint}{'' if route.alias else '_' + route.use_case}"))


def _endpoint(route: Route) -> Any:
    async def endpoint() -> None:  # documentation only: _AsgiRoute answers
        """Score with the use case's champion and its entities' online features."""

    endpoint.__name__ = route.endpoint
    return endpoint


def _summary(route: Route, server: ModelServer) -> str:
    spec = server.predictors[route.use_case].spec
    what = "one request" if route.endpoint == "predict" else f"up to {MAX_BATCH} requests"
    outputs = {"binary": "probability and decision", "multiclass": "class probabilities and class",
               "regression": "value"}[spec.task]
    alias = f" (alias of /{route.use_case}/{route.endpoint})" if route.alias else ""
    return f"{spec.name}: score {what}: {outputs}{alias}"


def _start_access_log() -> None:
    """One JSON line per request on stderr, written inline: ~15 µs. (A writer thread cost more:
    waking it after every request competed with the next request for the GIL.)"""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO if _settings.serving_access_log else logging.WARNING)
    access_log.propagate = False


_settings = get_settings()
# Serving without a key is asked for by a setting or on BentoML's command line (`--arg insecure=true`).
_insecure = _settings.serving_insecure or edge.is_true(getattr(bentoml.use_arguments(), "insecure", ""))
_key = edge.configured_api_key(_settings)
_route_reader = edge.BodyReader(limit=_settings.serving_max_body_bytes, timeout_s=_settings.serving_body_timeout_s)
_resources: dict[str, object] = {"cpu": str(_settings.serving_cpus)}
if _settings.serving_gpus:
    _resources["gpu"] = _settings.serving_gpus
# Paths BentoML's access log and tracing skip (OpenTelemetry matches them anywhere in the URL:
# every use case's routes).
_PREDICTION_PATHS = ["/predict", "/predict_batch"]


@bentoml.asgi_app(scoring, path="/")
@bentoml.service(
    name="flywheel_model_server",
    workers=_settings.serving_workers,
    # timeout: a request not answering by then is cancelled with a 504 (BentoML's); a body still
    # arriving is a 408 before that (serving_body_timeout_s, the middleware's).
    traffic={"timeout": _settings.serving_request_timeout_s, "max_concurrency": 256},
    resources=_resources,
    # Our middleware writes the structured access log; BentoML's own would be a second line.
    # BentoML's request metrics and tracing spans skip the prediction routes (~0.12 ms per
    # request): flywheel_request_latency_seconds and flywheel_predictions_total cover them.
    logging={"access": {"enabled": False, "skip_paths": _PREDICTION_PATHS}},
    tracing={"excluded_urls": _PREDICTION_PATHS},
)
class ModelService:
    @bentoml.on_deployment
    def refuse_to_serve_open() -> None:
        """Once, in the `bentoml serve` process, before any worker starts or port opens: no key
        and no explicit --insecure stops the server with one line saying how to set a key."""
        try:
            edge.check_api_key(_settings, insecure=_insecure)
        except ServingError as exc:
            raise SystemExit(f"flywheel model server: {exc}") from None

    def __init__(self) -> None:
        if not access_log.handlers:
            _start_access_log()
        edge.check_api_key(_settings, insecure=_insecure)  # each worker warns when serving insecure
        self.server = ModelServer(_settings)
        _document(self.server)
        scoring.state.server = self.server
        tune_gc()

    def __is_ready__(self) -> bool:
        return self.server.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        self.server.close()


# mypy reads the decorated class as the plain class; at run time it is a bentoml Service.
ModelService.add_asgi_middleware(FlywheelHttpMiddleware,  # type: ignore[attr-defined]
                                 api_key=_key, insecure=_insecure,
                                 max_body_bytes=_settings.serving_max_body_bytes,
                                 body_timeout_s=_settings.serving_body_timeout_s)
