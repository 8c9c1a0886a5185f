"""The prediction routes of one use case as bytes in, (status, bytes) out: what a web
framework hands over."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flywheel.serving.batching import MicroBatcher
from flywheel.serving.predictor import Predictor

# The response header naming the runtime that scored (onnxruntime, or the family's native one).
RUNTIME_HEADER = b"x-flywheel-runtime"
Answer = tuple[int, bytes, str]  # status, body, runtime ("" when nothing was scored)


class ScoringRoutes:
    """``predict`` (one request) and ``predict_batch`` (a list) of one use case.

    Validation is pydantic's, straight from the JSON bytes into the use case's generated
    request model (no intermediate dicts); a bad body is a 422 whose ``fields`` name what is
    wrong (``amount``; batch rows as ``3.amount``). The response is serialized from the scores'
    columns, without a pydantic model per row.

    ``predict_async`` / ``predict_batch_async`` are what the server calls: concurrent
    ``predict_async`` requests are micro-batched (:mod:`flywheel.serving.batching`) when
    ``settings.serving_batch_max_rows`` > 1. The sync ``predict`` / ``predict_batch`` score one
    request alone.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.use_case = predictor.use_case
        self._request = predictor.schemas.request
        self._batch = predictor.schemas.batch
        settings = predictor.settings
        self.batcher = MicroBatcher(self._score_rows, max_rows=settings.serving_batch_max_rows,
                                    max_wait_s=settings.serving_batch_wait_ms / 1000) \
            if settings.serving_batch_max_rows > 1 else None

    def predict(self, body: bytes) -> tuple[int, bytes]:
        status, payload, _ = self.predict_one(body)
        return status, payload

    def predict_one(self, body: bytes) -> Answer:
        """One request scored alone, with the runtime that scored it."""
        from pydantic import ValidationError

        try:
            row = self._request.model_validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc), ""
        scores = self.predictor.score([row])
        return 200, scores.to_json(single=True), scores.runtime

    async def predict_async(self, body: bytes) -> Answer:
        if self.batcher is None:
            return self.predict_one(body)
        from pydantic import ValidationError

        started = time.perf_counter()
        try:
            row = self._request.model_validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc), ""
        payload, runtime = await self.batcher.submit(row)
        self.predictor.observe_latency("predict", time.perf_counter() - started)
        return 200, payload, runtime

    def _score_rows(self, rows: Sequence[Any]) -> list[tuple[bytes, str]]:
        """A micro-batch of validated single requests: each one's own response body."""
        scores = self.predictor.score(rows, timed=False)
        return [(payload, scores.runtime) for payload in scores.to_json_rows()]

    def predict_batch(self, body: bytes) -> tuple[int, bytes]:
        status, payload, _ = self.predict_many(body)
        return status, payload

    def predict_many(self, body: bytes) -> Answer:
        from pydantic import ValidationError

        try:
            rows = self._batch.validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc), ""
        scores = self.predictor.score(rows, endpoint="predict_batch")
        return 200, scores.to_json(), scores.runtime

    async def predict_batch_async(self, body: bytes) -> Answer:
        return self.predict_many(body)


def field_paths(errors: Sequence[Any]) -> list[str]:
    """Dotted paths of the fields named by pydantic errors (``amount``, ``2.user_id``)."""
    paths: list[str] = []
    for error in errors:
        loc = [str(p) for p in (error.get("loc") or ()) if p not in ("root", "body")] \
            if isinstance(error, dict) else []
        # A Literal's alternatives are reported as one more loc part: the field is enough.
        loc = [p for p in loc if not p.startswith("literal[")]
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
