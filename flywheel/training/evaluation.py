"""Model evaluation per task type: holdout metrics, a cost-optimal threshold, slices, a report.

Binary: PR-AUC, ROC-AUC, recall at a fixed precision, expected calibration error and expected
cost per row (false positive / false negative costs from the spec) at the threshold.
Multiclass: log loss, macro-F1, accuracy. Regression: RMSE, MAE, R².
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.spec import TASK_METRICS, PipelineSpec, SliceSpec
from flywheel.training import tasks

# A slice is scored only with at least this many rows (and, for a binary, positives).
MIN_SLICE_ROWS = 30


@dataclass(frozen=True)
class Costs:
    false_positive: float
    false_negative: float


def expected_cost(y: np.ndarray, proba: np.ndarray, threshold: float, costs: Costs) -> float:
    """Average cost per row of deciding ``proba >= threshold``."""
    flagged = proba >= threshold
    fp = np.sum(flagged & (y == 0))
    fn = np.sum(~flagged & (y == 1))
    return float((fp * costs.false_positive + fn * costs.false_negative) / max(len(y), 1))


def cost_threshold(y: np.ndarray, proba: np.ndarray, costs: Costs) -> float:
    """The threshold (among the observed scores) that minimises expected cost."""
    candidates = np.unique(np.r_[proba, 1.0 + 1e-9])
    costs_at = [expected_cost(y, proba, t, costs) for t in candidates]
    return float(candidates[int(np.argmin(costs_at))])


def recall_at_precision(y: np.ndarray, proba: np.ndarray, precision: float) -> float:
    """Best recall among thresholds whose precision reaches ``precision`` (0 if none does)."""
    from sklearn.metrics import precision_recall_curve

    if y.sum() == 0:
        return float("nan")
    prec, rec, _ = precision_recall_curve(y, proba)
    ok = prec >= precision
    return float(rec[ok].max()) if ok.any() else 0.0


def calibration_error(y: np.ndarray, proba: np.ndarray, *, bins: int = 10) -> float:
    """Expected calibration error over equal-width probability bins."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(proba[mask].mean() - y[mask].mean())
    return float(total)


def metrics(y: np.ndarray, proba: np.ndarray, *, threshold: float, costs: Costs,
            precision_target: float) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    both = len(np.unique(y)) > 1
    return {
        "pr_auc": float(average_precision_score(y, proba)) if both else float("nan"),
        "roc_auc": float(roc_auc_score(y, proba)) if both else float("nan"),
        f"recall_at_p{int(precision_target * 100)}": recall_at_precision(y, proba, precision_target),
        "calibration_error": calibration_error(y, proba),
        "expected_cost": expected_cost(y, proba, threshold, costs),
    }


def multiclass_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    return {m: tasks.score(m, y, proba) for m in TASK_METRICS["multiclass"]}


def regression_metrics(y: np.ndarray, values: np.ndarray) -> dict[str, float]:
    return {m: tasks.score(m, y, values) for m in TASK_METRICS["regression"]}


def task_metrics(task: str, y: np.ndarray, scores: np.ndarray, *, threshold: float, costs: Costs,
                 precision_target: float) -> dict[str, float]:
    """The holdout metrics of ``task`` (the threshold, costs and precision target are binary's)."""
    if task == "binary":
        return metrics(y, scores, threshold=threshold, costs=costs, precision_target=precision_target)
    return multiclass_metrics(y, scores) if task == "multiclass" else regression_metrics(y, scores)


def default_slices(spec: PipelineSpec) -> dict[str, SliceSpec]:
    """Every contract column with an allowed set, except the label's."""
    return {name: SliceSpec(column=name) for name, rule in spec.dataset.contract.columns.items()
            if rule.allowed and name != spec.label.column}


def slice_columns(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """Slice keys per row, one column per slice of the spec (``training.slices``)."""
    slices = default_slices(spec) if spec.training.slices is None else spec.training.slices
    out: dict[str, Any] = {}
    for name, sl in slices.items():
        values = frame[sl.column]
        if sl.missing:
            out[name] = np.where(values.isna().to_numpy(), "missing", "present")
        elif sl.bins:
            out[name] = pd.cut(values, [-np.inf, *sl.bins, np.inf], right=False).astype(str).to_numpy()
        else:
            out[name] = values.astype(str).to_numpy()
    return pd.DataFrame(out, index=frame.index)


def _scorable(task: str, y: np.ndarray, min_positives: int) -> bool:
    if len(y) < (min_positives if task == "binary" else MIN_SLICE_ROWS):
        return False
    if task == "binary":
        positives = int(y.sum())
        return min_positives <= positives < len(y)
    return task == "regression" or len(np.unique(y)) > 1


def slice_metrics(slices: pd.DataFrame, y: np.ndarray, scores: np.ndarray, *, metric: str = "pr_auc",
                  task: str = "binary", min_positives: int = 5) -> pd.DataFrame:
    """``metric`` per slice value (slices too small to score, or with one class, are reported
    with NaN); a binary also reports each slice's positives."""
    rows = []
    for column in slices.columns:
        for value, idx in slices.groupby(column).indices.items():
            yy, ss = y[idx], scores[idx]
            row: dict[str, Any] = {"slice": column, "value": str(value), "rows": len(idx)}
            if task == "binary":
                row["positives"] = int(yy.sum())
            row[metric] = tasks.score(metric, yy, ss) if _scorable(task, yy, min_positives) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows, columns=["slice", "value", "rows", *(["positives"] if task == "binary" else []),
                                       metric])


def slice_regressions(challenger: pd.DataFrame, champion: pd.DataFrame, *, tolerance: float,
                      metric: str = "pr_auc") -> list[str]:
    """Slices where the challenger's ``metric`` is worse than the champion's by more than
    ``tolerance`` (in the metric's own units and direction)."""
    merged = challenger.merge(champion, on=["slice", "value"], suffixes=("", "_champion"))
    merged = merged.dropna(subset=[metric, f"{metric}_champion"])
    ours, theirs = merged[metric], merged[f"{metric}_champion"]
    worse = merged[ours < theirs - tolerance] if tasks.higher_is_better(metric) else merged[ours > theirs + tolerance]
    sign = "<" if tasks.higher_is_better(metric) else ">"
    return [f"{r['slice']}={r['value']}: {r[metric]:.3f} {sign} {r[f'{metric}_champion']:.3f}"
            for _, r in worse.iterrows()]


def write_report(folder: Path, *, y: np.ndarray, proba: np.ndarray, baseline: np.ndarray,
                 metrics_: dict[str, dict[str, float]], slices: pd.DataFrame, importance: dict[str, float],
                 threshold: float, families: dict[str, dict[str, float]] | None = None,
                 task: str = "binary", classes: Sequence[Any] = (), metric: str = "pr_auc") -> Path:
    """Markdown report: the task's plots (binary: PR and calibration curves; multiclass: a
    confusion matrix; regression: predicted vs actual), slice table and feature importance.
    ``proba``/``baseline`` are the candidate's and the baseline's holdout scores."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    if task == "binary":
        figures = _binary_plots(folder, y, proba, baseline)
        header = f"Decision threshold (min expected cost on validation): {threshold:.4f}"
    elif task == "multiclass":
        figures = _confusion(y, proba, classes)
        header = f"Decision: the most probable of {len(classes)} classes"
    else:
        figures = _regression_plot(folder, y, proba)
        header = "Decision: the predicted value"
    lines = ["# Evaluation report", "", f"Task: {task}. {header}", "", "## Holdout metrics", "",
             _table(pd.DataFrame(metrics_).T.round(4)), "", *figures, "", f"## Slices ({metric})", "",
             _table(slices.round(4).set_index(["slice", "value"])) if len(slices) else "(no slices)", "",
             f"## Feature importance (permutation: {metric} lost on validation when shuffled)", "",
             _table(pd.Series(importance, name=f"{metric}_loss", dtype="float64").sort_values(ascending=False)
                    .round(4).to_frame())]
    if families:
        lines += ["", "## Candidate families (best of each search; selected by validation score)", "",
                  _table(pd.DataFrame(families).T.round(4))]
    path = folder / "evaluation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _binary_plots(folder: Path, y: np.ndarray, proba: np.ndarray, baseline: np.ndarray) -> list[str]:
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, scores in (("candidate", proba), ("baseline", baseline)):
        prec, rec, _ = precision_recall_curve(y, scores)
        ax.plot(rec, prec, label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
    ax.legend()
    fig.savefig(folder / "pr_curve.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    frac, mean = calibration_curve(y, proba, n_bins=10, strategy="quantile")
    ax.plot(mean, frac, marker="o", label="candidate")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="predicted probability", ylabel="observed positive rate", title="Calibration (holdout)")
    fig.savefig(folder / "calibration.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return ["![PR curve](pr_curve.png) ![Calibration](calibration.png)"]


def _confusion(y: np.ndarray, proba: np.ndarray, classes: Sequence[Any]) -> list[str]:
    from sklearn.metrics import confusion_matrix

    labels = list(range(len(classes)))
    matrix = confusion_matrix(y, np.argmax(proba, axis=1), labels=labels)
    names = [str(c) for c in classes]
    frame = pd.DataFrame(matrix, index=pd.Index(names, name="actual \\ predicted"), columns=names)
    return ["## Confusion matrix (holdout)", "", _table(frame)]


def _regression_plot(folder: Path, y: np.ndarray, values: np.ndarray) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(y, values, s=4, alpha=0.3)
    low, high = float(np.nanmin(y)), float(np.nanmax(y))
    ax.plot([low, high], [low, high], linestyle="--", color="grey")
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (holdout)")
    fig.savefig(folder / "predicted_vs_actual.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return ["![Predicted vs actual](predicted_vs_actual.png)"]


def _table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join([str(frame.index.name or ""), *map(str, frame.columns)]) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    body = ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(frame.index, frame.values,
                                                                                 strict=True)]
    return "\n".join([header, rule, *body])
