"""The prediction log's schema, generated from the spec: one definition for writer and readers.

Columns: ``request_id``; the dataset's key columns (the caller's ids, echoed; they join the log to
labels that arrive later); the timestamp; ``logged_at``; the entities' join keys; ``model_version``;
the task's outputs (binary: ``probability`` + ``decision``; multiclass: ``predicted_class`` +
``probability`` of it; regression: ``value``); the flags ``feature_miss`` (an entity had no
online features), ``unknown_value`` (an out-of-contract categorical value was scored with the
reserved code) and ``out_of_range`` (a number outside its contract's min/max was scored as given);
and every model input, as served.
"""

from __future__ import annotations

from flywheel.core.spec import PipelineSpec
from flywheel.features.featurizer import featurizer_for

_PANDAS = {"int": "int64", "float": "float64", "bool": "bool", "string": "object", "datetime": "datetime64[ns, UTC]"}
OUTPUTS = {
    "binary": {"probability": "float64", "decision": "bool"},
    "multiclass": {"predicted_class": "object", "probability": "float64"},
    "regression": {"value": "float64"},
}


def prediction_column(spec: PipelineSpec) -> str:
    """The logged output whose drift monitoring watches (the score of the task)."""
    return "value" if spec.task == "regression" else "probability"


def log_dtypes(spec: PipelineSpec) -> dict[str, str]:
    """Column -> pandas dtype of the use case's prediction log (a fixed order)."""
    columns = spec.dataset.contract.columns
    out: dict[str, str] = {"request_id": "object"}
    out |= {key: "object" for key in spec.dataset.key_columns}
    out[spec.dataset.timestamp] = "datetime64[ns, UTC]"
    out["logged_at"] = "datetime64[ns, UTC]"
    for entity in spec.features.entities.values():
        for key in entity.keys:
            out.setdefault(key, _PANDAS.get(columns[key].type, "object"))
    out["model_version"] = "object"
    out |= OUTPUTS[spec.task]
    out["feature_miss"] = "bool"
    out["unknown_value"] = "bool"
    out["out_of_range"] = "bool"
    out |= {name: "float64" for name in featurizer_for(spec).names if name not in out}
    return out
