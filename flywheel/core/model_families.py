"""The model families a spec may name, and the task types each one learns.

Names only (pure data, no imports): specs are validated against these tables at load time
without importing training code. The classes live in :mod:`flywheel.training.families`.
"""

from __future__ import annotations

# name -> "module:Class"; the class is imported only when the family is used.
FAMILIES: dict[str, str] = {
    "logistic_regression": "flywheel.training.families.baseline:LogisticRegressionFamily",
    "linear_regression": "flywheel.training.families.baseline:LinearRegressionFamily",
    "majority": "flywheel.training.families.baseline:MajorityFamily",
    "mean": "flywheel.training.families.baseline:MeanFamily",
    "xgboost": "flywheel.training.families.xgb:XGBoostFamily",
    "torch_mlp": "flywheel.training.families.torch_mlp:TorchMLPFamily",
}
# name -> the task types it can learn.
TASKS: dict[str, frozenset[str]] = {
    "logistic_regression": frozenset({"binary", "multiclass"}),
    "linear_regression": frozenset({"regression"}),
    "majority": frozenset({"binary", "multiclass"}),
    "mean": frozenset({"regression"}),
    "xgboost": frozenset({"binary", "multiclass", "regression"}),
    "torch_mlp": frozenset({"binary", "multiclass", "regression"}),
}
DEFAULT_BASELINE = {"binary": "logistic_regression", "multiclass": "logistic_regression",
                    "regression": "linear_regression"}


def check_task(name: str, task: str) -> None:
    """Raise ``ValueError`` when family ``name`` cannot learn ``task``."""
    if task not in TASKS.get(name, frozenset()):
        able = sorted(n for n, tasks in TASKS.items() if task in tasks)
        raise ValueError(f"model family {name!r} does not do {task} (families that do: {', '.join(able)})")


def baseline_name(name: str | None, task: str) -> str:
    """The baseline family: the spec's, or the task's default."""
    return name or DEFAULT_BASELINE[task]
