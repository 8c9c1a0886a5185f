"""Task types: what a label is, what a model outputs, how it is scored and which way is better.

One home for what differs between ``binary``, ``multiclass`` and ``regression``:

- **labels**: classification labels are encoded as codes ``0..k-1`` of ``classes`` (their
  values in sorted order; a binary label of 0/1 or False/True keeps 0 = negative, 1 = positive);
  a regression label is a float.
- **scores** (what a model outputs): binary, the positive-class probability (1-d); multiclass,
  one probability per class (``n x k``, columns in ``classes`` order); regression, the value.
- **decisions** (what a response carries): binary, ``probability >= threshold``; multiclass,
  the class of highest probability; regression, the value itself.
- **metrics**: binary PR-AUC / ROC-AUC (plus recall at a precision, calibration and expected
  cost at the cost-optimal threshold); multiclass log loss / macro-F1 / accuracy; regression
  RMSE / MAE / R². ``log_loss``, ``rmse`` and ``mae`` are better when lower.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.spec import LOWER_IS_BETTER, TASK_METRICS, PipelineSpec

CLASSIFICATION = frozenset({"binary", "multiclass"})
# The model-output columns a reference frame (and a prediction log) carries, per task.
PROBABILITY = "probability"
PREDICTION = "prediction"


class LabelError(ValueError):
    """The labels of a training frame do not fit the spec's task; the message says how."""


def metric_of(spec: PipelineSpec) -> str:
    """The selection and gate metric: the spec's, or the task's default."""
    return spec.training.metric or TASK_METRICS[spec.task][0]


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def improves(metric: str, value: float, over: float, *, by: float = 0.0) -> bool:
    """``value`` is better than ``over`` by more than ``by`` (in the metric's direction)."""
    return value > over + by if higher_is_better(metric) else value < over - by


def worst(metric: str) -> float:
    """A value every real score improves on (the start of a search)."""
    return -np.inf if higher_is_better(metric) else np.inf


def classes_of(task: str, labels: pd.Series) -> list[Any]:
    """The class values of a classification label, in code order ([] for regression).

    Raises :class:`LabelError` when a binary label does not have exactly two values or a
    multiclass label has fewer than three.
    """
    if task not in CLASSIFICATION:
        return []
    values = pd.unique(labels.dropna())
    if task == "binary" and set(values.tolist()) <= {0, 1}:  # 0/1 and False/True: 1 is positive
        return [False, True] if labels.dtype == bool else [0, 1]
    classes = sorted(values.tolist(), key=lambda v: (str(type(v)), v))
    if task == "binary" and len(classes) != 2:
        raise LabelError(f"a binary label needs exactly two values, found {len(classes)}: {classes[:10]}")
    if task == "multiclass" and len(classes) < 3:
        raise LabelError(f"a multiclass label needs at least three classes, found {classes} "
                         "(use task: binary for two)")
    return [_plain(c) for c in classes]


def _plain(value: Any) -> Any:
    """numpy scalars as Python values (class lists go into JSON tags)."""
    return value.item() if isinstance(value, np.generic) else value


def encode(task: str, labels: pd.Series, classes: Sequence[Any]) -> pd.Series:
    """Labels as model targets: class codes (int64) or floats; raises :class:`LabelError` on a
    class outside ``classes`` or a value that is not a number for a regression."""
    if task not in CLASSIFICATION:
        try:
            return labels.astype("float64")
        except (TypeError, ValueError) as exc:
            raise LabelError(f"a regression label must be numeric: {exc}") from None
    index = {c: i for i, c in enumerate(classes)}
    codes = labels.map(lambda v: index.get(_plain(v), -1))
    if (codes < 0).any():
        unknown = sorted({str(v) for v in labels[codes < 0]})[:10]
        raise LabelError(f"label values {unknown} are not among the classes {list(classes)}")
    return codes.astype("int64")


def check_classes_trained(task: str, y_train: pd.Series, classes: Sequence[Any]) -> None:
    """Every class must occur in the training split (models cannot learn an absent class)."""
    if task not in CLASSIFICATION:
        return
    seen = set(np.unique(y_train.to_numpy()).tolist())
    missing = [classes[i] for i in range(len(classes)) if i not in seen]
    if missing:
        raise LabelError(f"classes {missing} do not occur in the training split: widen the training "
                         "window (training.lookback_days) or merge rare classes in the label expression")


def decisions(task: str, scores: np.ndarray, *, classes: Sequence[Any], threshold: float) -> np.ndarray:
    """What a response decides: binary flags, multiclass class values, regression values."""
    if task == "binary":
        return np.asarray(scores) >= threshold
    if task == "multiclass":
        return np.asarray(classes, dtype=object)[np.argmax(scores, axis=1)]
    return np.asarray(scores, dtype="float64")


def output_columns(task: str, scores: np.ndarray, *, classes: Sequence[Any]) -> dict[str, np.ndarray]:
    """A model's outputs as frame columns (reference frames): binary ``probability``; multiclass
    ``prediction`` (the class) and ``probability`` (its probability); regression ``prediction``."""
    if task == "binary":
        return {PROBABILITY: np.asarray(scores, dtype="float64")}
    if task == "multiclass":
        return {PREDICTION: decisions(task, scores, classes=classes, threshold=0.5),
                PROBABILITY: np.max(scores, axis=1).astype("float64")}
    return {PREDICTION: np.asarray(scores, dtype="float64")}


def score(metric: str, y: np.ndarray, scores: np.ndarray) -> float:
    """One metric of ``scores`` against encoded labels ``y`` (NaN where it is undefined, e.g.
    PR-AUC of a single class)."""
    from sklearn import metrics as m

    y = np.asarray(y)
    if len(y) == 0:
        return float("nan")
    if metric in {"pr_auc", "roc_auc"}:
        if len(np.unique(y)) < 2:
            return float("nan")
        fn = m.average_precision_score if metric == "pr_auc" else m.roc_auc_score
        return float(fn(y, scores))
    if metric == "log_loss":
        k = scores.shape[1]
        return float(m.log_loss(y, np.clip(scores, 1e-15, 1), labels=list(range(k))))
    if metric in {"macro_f1", "accuracy"}:
        predicted = np.argmax(scores, axis=1)
        if metric == "accuracy":
            return float(np.mean(predicted == y))
        return float(m.f1_score(y, predicted, average="macro", labels=np.unique(np.r_[y, predicted]),
                                zero_division=0))
    if metric == "rmse":
        return float(np.sqrt(np.mean((np.asarray(scores) - y) ** 2)))
    if metric == "mae":
        return float(np.mean(np.abs(np.asarray(scores) - y)))
    if metric == "r2":
        return float(m.r2_score(y, scores)) if len(y) > 1 else float("nan")
    raise ValueError(f"unknown metric {metric!r}")
