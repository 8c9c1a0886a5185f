"""The prediction log's schema, generated from the spec: one definition for writer and readers.

Columns: ``request_id``; the dataset's key columns (the caller's ids, echoed; they join the log to
labels that arrive later); the timestamp; ``logged_at``; the entities' join keys; ``model_version``;
the task's outputs (binary: ``probability`` + ``decision``; multiclass: ``predicted_class`` +
``probability`` of it; regression: ``value``); the flags ``feature_miss`` (an entity had no
online features), ``unknown_value`` (an out-of-contract categorical value was scored with the
reserved code) and ``out_of_range`` (a number outside its contract's min/max was scored as given);
the rollout's columns (:data:`ROLLOUT_COLUMNS`); and every model input, as served.
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
# The rollout's columns (flywheel.serving.challenger): the stage and version of the challenger
# that scored the row beside the champion ("" and NaN when none did), both scores, whether they
# agree, whether the challenger raised, and how long it took (ms, for the whole request).
# ``model_version`` is the version that answered: the challenger's on a canary row it served.
ROLLOUT_COLUMNS = {"rollout_stage": "object", "challenger_version": "object", "champion_score": "float64",
                   "challenger_score": "float64", "challenger_agrees": "bool", "challenger_error": "bool",
                   "challenger_ms": "float64"}
ROLLOUT_DEFAULTS = {"rollout_stage": "", "challenger_version": "", "champion_score": float("nan"),
                    "challenger_score": float("nan"), "challenger_agrees": False, "challenger_error": False,
                    "challenger_ms": float("nan")}


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
    out |= ROLLOUT_COLUMNS
    out |= {name: "float64" for name in featurizer_for(spec).names if name not in out}
    return out
