"""Request and response schemas of a use case's routes, generated from its spec.

The request carries the dataset columns the featurizer reads at scoring time
(``Featurizer.request_columns``: entity keys, the timestamp, the request-feature inputs),
each validated by its contract rule (type, allowed set, nullability; min/max as the spec's
``serving.out_of_contract`` says), plus the dataset's key columns as an optional caller id echoed
back. The response carries the task's outputs (binary: probability + decision; multiclass: class
probabilities + class; regression: value), the model version, a request id and the flags.
Nothing here names a column: every field comes from the spec.

Out-of-contract values (``serving.out_of_contract``): ``flag`` (default) accepts a number outside
its column's min/max and a value outside the allowed set of a column a ``category`` feature
codes; both are scored and flagged (``out_of_range``, ``unknown``). ``reject`` makes both a 422.
The generated schema, and so the OpenAPI document, holds exactly what is enforced: ``minimum``/
``maximum`` only under ``reject`` (the contract's range is ``x-contract-minimum``/``-maximum``
under ``flag``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, create_model

from flywheel.core.spec import ColumnRule, PipelineSpec

MAX_BATCH = 1000
MAX_STRING = 256
INT64 = (-(2**63), 2**63 - 1)
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(2200, 1, 1, tzinfo=UTC)

# Response fields every task has; a key column of the same name would be ambiguous.
COMMON_FIELDS = ("request_id", "model_name", "model_version", "unknown", "out_of_range", "unknown_entities",
                 "defaults_used")
TASK_FIELDS = {"binary": ("probability", "decision", "threshold"), "multiclass": ("probabilities", "class"),
               "regression": ("value",)}


class SchemaError(ValueError):
    """A spec cannot be turned into route schemas; the message names the use case and column."""


def _utc_in_range(value: datetime) -> datetime:
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    if not EARLIEST <= value < LATEST:  # features are computed with nanosecond timestamps
        raise ValueError(f"must be between {EARLIEST.date()} and {LATEST.date()} (exclusive)")
    return value


Timestamp = Annotated[datetime, AfterValidator(_utc_in_range)]


def _describe(rule: ColumnRule, *, categorical: bool, flagged: bool) -> str:
    parts: list[str] = [rule.type]
    if rule.min is not None:
        parts.append(f">= {rule.min:g}")
    if rule.max is not None:
        parts.append(f"<= {rule.max:g}")
    if flagged:
        parts.append("a value outside this range is scored as given and flagged in `out_of_range`")
    if rule.allowed is not None:
        shown = ", ".join(map(str, rule.allowed))
        parts.append(f"one of {shown}" + ("; another value is scored with the reserved code and flagged "
                                          "in `unknown`" if categorical else ""))
    if rule.type == "datetime":
        parts.append("ISO 8601, no zone = UTC, 1970-01-01 to 2199-12-31")
    return "Contract: " + ", ".join(parts)


def _numeric_range(rule: ColumnRule) -> tuple[float | None, float | None] | None:
    """The contract's (min, max) of a numeric column, or None when it has neither."""
    if rule.type not in ("int", "float") or (rule.min is None and rule.max is None):
        return None
    return rule.min, rule.max


def _type(rule: ColumnRule, *, categorical: bool, enforce_range: bool = True) -> tuple[Any, dict[str, Any]]:
    """The Python type and Field constraints of one contract column; the contract's min/max
    are constraints only with ``enforce_range`` (the type's own range always is)."""
    if rule.allowed is not None and not categorical:
        return Literal[tuple(rule.allowed)], {}
    if rule.type == "string":
        return str, {"max_length": MAX_STRING}
    if rule.type == "bool":
        return bool, {}
    if rule.type == "datetime":
        return Timestamp, {}
    low, high = (rule.min, rule.max) if enforce_range else (None, None)
    if rule.type == "int":
        return int, {"ge": INT64[0] if low is None else max(int(-(-low // 1)), INT64[0]),
                     "le": INT64[1] if high is None else min(int(high // 1), INT64[1])}
    # ge/le, not gt: BentoML publishes OpenAPI 3.0, where a numeric exclusiveMinimum is invalid.
    limits = {k: v for k, v in (("ge", low), ("le", high)) if v is not None}
    return float, {"allow_inf_nan": False, **limits}


def _field(rule: ColumnRule, *, categorical: bool, required: bool, enforce_range: bool,
           description: str | None = None) -> tuple[Any, Any]:
    kind, limits = _type(rule, categorical=categorical, enforce_range=enforce_range)
    flagged = not enforce_range and _numeric_range(rule) is not None
    extra = {f"x-contract-{name}": value for name, value in (("minimum", rule.min), ("maximum", rule.max))
             if flagged and value is not None}
    text = description or _describe(rule, categorical=categorical, flagged=flagged)
    schema = {"description": text, **({"json_schema_extra": extra} if extra else {}), **limits}
    if required and not rule.nullable:
        return kind, Field(**schema)
    return kind | None, Field(None, **schema)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def category_columns(spec: PipelineSpec) -> frozenset[str]:
    """Request columns coded against their contract's allowed set (under ``out_of_contract: flag``
    an unknown value is flagged, not rejected: a new category must not take the route down)."""
    return frozenset(f.column for f in spec.features.request.values() if f.fn == "category" and f.column)


@dataclass(frozen=True)
class RouteSchemas:
    """What one use case's routes validate and answer."""

    use_case: str
    task: str
    request: type[BaseModel]
    response: type[BaseModel]
    batch: TypeAdapter[list[Any]]
    columns: tuple[str, ...]  # request columns the featurizer reads
    id_columns: tuple[str, ...]  # the dataset's key columns, echoed back
    # Request fields whose contract range is flagged, not enforced (empty under "reject").
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def openapi_request(self) -> dict[str, Any]:
        return self.request.model_json_schema()


def route_schemas(spec: PipelineSpec, request_columns: list[str] | tuple[str, ...]) -> RouteSchemas:
    """The request/response models of ``spec``'s routes; ``request_columns`` are the
    featurizer's. Raises :class:`SchemaError` when a key column collides with a response field."""
    rules = spec.dataset.contract.columns
    flag = spec.serving.out_of_contract == "flag"
    categorical = category_columns(spec) if flag else frozenset()
    keys = tuple(spec.dataset.key_columns)
    fields: dict[str, Any] = {}
    for column in keys:
        if column not in request_columns:  # the caller's id: optional, echoed back
            fields[column] = _field(rules[column], categorical=True, required=False, enforce_range=not flag,
                                    description="Caller's id (the dataset key), echoed back")
    for column in request_columns:
        fields[column] = _field(rules[column], categorical=column in categorical, required=True,
                                enforce_range=not flag)
    request = create_model(f"{_camel(spec.name)}Request", __config__=ConfigDict(extra="forbid"), **fields)
    response = _response_model(spec, keys)
    batch: TypeAdapter[list[Any]] = TypeAdapter(
        Annotated[list[request], Field(min_length=1, max_length=MAX_BATCH)])  # type: ignore[valid-type]
    ranges = {c: r for c in fields if flag and (r := _numeric_range(rules[c])) is not None}
    return RouteSchemas(spec.name, spec.task, request, response, batch, tuple(request_columns), keys, ranges)


def _response_model(spec: PipelineSpec, keys: tuple[str, ...]) -> type[BaseModel]:
    rules = spec.dataset.contract.columns
    clash = set(keys) & {*COMMON_FIELDS, *TASK_FIELDS[spec.task]}
    if clash:
        raise SchemaError(f"use case {spec.name}: key column(s) {sorted(clash)} collide with response fields")
    fields: dict[str, Any] = {}
    for column in keys:
        kind, _ = _type(rules[column], categorical=True)
        fields[column] = (kind | None, Field(None, description="The request's key, echoed back"))
    fields["request_id"] = (str, Field(description="This prediction's id (32 hex characters), in the prediction log"))
    fields.update(_task_fields(spec.task))
    fields["model_name"] = (str, Field(description="The registered model"))
    fields["model_version"] = (str, Field(description="The registered version that scored the request"))
    fields["unknown"] = (list[str], Field(default_factory=list,
                                          description="Columns whose value is outside the contract's allowed set "
                                                      "(scored with the reserved code)"))
    fields["out_of_range"] = (list[str], Field(default_factory=list,
                                               description="Columns whose value is outside the contract's min/max "
                                                           "(scored as given)"))
    fields["unknown_entities"] = (list[str], Field(default_factory=list,
                                                   description="Entities without online features (defaults used)"))
    fields["defaults_used"] = (bool, Field(False, description="True when any entity feature fell back to its "
                                                              "default"))
    return create_model(f"{_camel(spec.name)}Prediction", __config__=ConfigDict(populate_by_name=True), **fields)


def _task_fields(task: str) -> dict[str, Any]:
    if task == "binary":
        return {"probability": (float, Field(ge=0, le=1, description="Probability of the positive class")),
                "decision": (bool, Field(description="probability >= threshold")),
                "threshold": (float, Field(description="The model's decision threshold"))}
    if task == "multiclass":
        return {"probabilities": (dict[str, float], Field(description="Probability of each class")),
                "class_": (str, Field(alias="class", description="The most probable class"))}
    return {"value": (float, Field(description="The predicted value"))}
