"""Cross-field checks of a use-case spec: every name a spec refers to must exist.

A spec is data written by hand; a typo (a column that is not in the contract, a feature that
does not exist, a metric of another task) must fail at load with the field named, not at the
first training run. Raised as ``ValueError`` inside pydantic validation, so the loader reports
``invalid pipeline spec <file>: <field>: <what>``.
"""

from __future__ import annotations

import re
from typing import Any

# The spec model (flywheel.core.spec) imports this module; this one imports nothing of it.
PipelineSpec = Any
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("pr_auc", "roc_auc"),
    "multiclass": ("macro_f1", "log_loss", "accuracy"),
    "regression": ("rmse", "mae", "r2"),
}
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TIME_FNS = {"hour", "day_of_week", "is_weekend"}


def _check_name(name: str, where: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{where}: {name!r} is not a valid name (lower-case letters, digits, '_'; "
                         "starts with a letter)")


def feature_names(spec: PipelineSpec) -> dict[str, str]:
    """Every feature the spec defines -> where it is defined (``entity.user`` / ``request``)."""
    out: dict[str, str] = {}
    for entity_name, entity in spec.features.entities.items():
        for name in entity.aggregations:
            out[name] = f"entities.{entity_name}"
    for name in spec.features.request:
        out[name] = "request"
    return out


def check_references(spec: PipelineSpec) -> None:
    """Raise ``ValueError`` naming the first field that refers to something that does not exist."""
    columns = spec.dataset.contract.columns
    if spec.label.column and spec.label.column not in columns:
        raise ValueError(f"label.column: {spec.label.column!r} is not in the dataset contract")
    _check_entities(spec, columns)
    _check_request(spec, columns)
    _check_privacy(spec, columns)
    defined = feature_names(spec)
    for name in spec.features.model or []:
        if name not in defined:
            raise ValueError(f"features.model: {name!r} is not a defined feature")
    for name in spec.monitoring.features:
        if name not in defined:
            raise ValueError(f"monitoring.features: {name!r} is not a defined feature "
                             f"(known: {', '.join(sorted(defined))})")
    for name in spec.training.slices or []:
        if name not in defined and name not in columns:
            raise ValueError(f"training.slices: {name!r} is neither a contract column nor a defined feature")
    metric = spec.training.metric
    if metric is not None and metric not in TASK_METRICS[spec.task]:
        raise ValueError(f"training.metric: {metric!r} is not a {spec.task} metric "
                         f"(one of {', '.join(TASK_METRICS[spec.task])})")


def _check_entities(spec: PipelineSpec, columns: dict[str, Any]) -> None:
    _check_name(spec.name, "name")
    for entity_name, entity in spec.features.entities.items():
        _check_name(entity_name, "features.entities")
        for key in entity.keys:
            if key not in columns:
                raise ValueError(f"features.entities.{entity_name}.keys: {key!r} is not in the dataset contract")
        for name, agg in entity.aggregations.items():
            where = f"features.entities.{entity_name}.aggregations.{name}"
            _check_name(name, where)
            if agg.column and agg.column not in columns:
                raise ValueError(f"{where}.column: {agg.column!r} is not in the dataset contract")


def _check_request(spec: PipelineSpec, columns: dict[str, Any]) -> None:
    defined = feature_names(spec)
    seen: set[str] = set()
    for name, feature in spec.features.request.items():
        where = f"features.request.{name}"
        _check_name(name, where)
        if name in seen or defined.get(name, "request") != "request":
            raise ValueError(f"{where}: the name is defined twice")
        seen.add(name)
        if feature.column and feature.column not in columns and feature.column not in defined:
            raise ValueError(f"{where}.column: {feature.column!r} is neither a contract column nor a feature")
        if feature.fn in TIME_FNS and feature.column and columns.get(feature.column) is not None \
                and columns[feature.column].type != "datetime":
            raise ValueError(f"{where}.column: fn {feature.fn} needs a datetime column")
        if feature.fn == "category":
            rule = columns.get(feature.column or "")
            if rule is None or not rule.allowed:
                raise ValueError(f"{where}: fn category needs a contract column with an 'allowed' set "
                                 f"({feature.column!r} has none)")
        if feature.other and feature.other not in defined and feature.other not in columns:
            raise ValueError(f"{where}.other: {feature.other!r} is not a defined feature")
        for item in feature.inputs:
            if item not in defined and item not in columns:
                raise ValueError(f"{where}.inputs: {item!r} is neither a contract column nor a feature")


def _check_privacy(spec: PipelineSpec, columns: dict[str, Any]) -> None:
    """Where a PII column may be used: a join key only hashed; an aggregate's column unless
    dropped; never a label, a request feature's input or a slice (each would expose the values)."""
    def policy(column: str | None) -> str | None:
        rule = columns.get(column or "")
        return rule.privacy if rule is not None else None

    if policy(spec.label.column):
        raise ValueError(f"label.column: {spec.label.column!r} is tagged pii")
    for entity_name, entity in spec.features.entities.items():
        _check_private_entity(entity_name, entity, policy)
    for name, feature in spec.features.request.items():
        for column in (feature.column, feature.other, *feature.inputs):
            if policy(column):
                raise ValueError(f"features.request.{name}: {column!r} is tagged pii; a request feature's value "
                                 "is a model input, logged with every prediction (aggregate it instead)")
    for name in spec.training.slices or []:
        if policy(name):
            raise ValueError(f"training.slices: {name!r} is tagged pii (slice reports name their values)")


def _check_private_entity(entity_name: str, entity: Any, policy: Any) -> None:
    for key in entity.keys:
        if policy(key) not in (None, "hash"):
            raise ValueError(f"features.entities.{entity_name}.keys: {key!r} is pii with policy {policy(key)}; a "
                             "join key is logged with every prediction, so it can only be hashed")
    for name, agg in entity.aggregations.items():
        if policy(agg.column) == "drop":
            raise ValueError(f"features.entities.{entity_name}.aggregations.{name}.column: {agg.column!r} "
                             "is pii with policy drop (it is not in the curated zone)")
