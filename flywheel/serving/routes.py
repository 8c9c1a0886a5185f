"""The prediction routes of one use case as bytes in, (status, bytes) out: what a web
framework hands over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flywheel.serving.predictor import Predictor


class ScoringRoutes:
    """``predict`` (one request) and ``predict_batch`` (a list) of one use case.

    Validation is pydantic's, straight from the JSON bytes into the use case's generated
    request model (no intermediate dicts); a bad body is a 422 whose ``fields`` name what is
    wrong (``amount``; batch rows as ``3.amount``). The response is serialized from the scores'
    columns, without a pydantic model per row.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.use_case = predictor.use_case
        self._request = predictor.schemas.request
        self._batch = predictor.schemas.batch

    def predict(self, body: bytes) -> tuple[int, bytes]:
        from pydantic import ValidationError

        try:
            row = self._request.model_validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc)
        return 200, self.predictor.score([row]).to_json(single=True)

    def predict_batch(self, body: bytes) -> tuple[int, bytes]:
        from pydantic import ValidationError

        try:
            rows = self._batch.validate_json(body)
        except ValidationError as exc:
            return 422, unprocessable(exc)
        return 200, self.predictor.score(rows, endpoint="predict_batch").to_json()


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
