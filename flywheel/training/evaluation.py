"""Model evaluation per task type: holdout metrics, a cost-optimal threshold, slices, a report.

Binary: PR-AUC, ROC-AUC, recall at a fixed precision, expected calibration error and expected
cost per row (false positive / false negative costs from the spec) at the cost-optimal
threshold. Multiclass (class probabilities (n, k) against codes 0..k-1): log loss, macro-F1,
accuracy. Regression: RMSE, MAE, R². Lower is better for the metrics in ``LOWER_IS_BETTER``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.core.spec import LOWER_IS_BETTER, TASK_METRICS, PipelineSpec

QUANTILE_BUCKETS = 4
# A numeric slice column with at most this many distinct values is sliced by value, not bucketed.
MAX_VALUES_UNBUCKETED = 12


def metric_of(spec: PipelineSpec) -> str:
    """The selection and gate metric: ``training.metric`` or the task's default."""
    return spec.training.metric or TASK_METRICS[spec.task][0]


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is strictly better than ``b`` on ``metric``."""
    return a < b if lower_is_better(metric) else a > b


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


def _two_classes(y: np.ndarray) -> bool:
    return len(np.unique(y)) > 1


def _pr_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, p)) if _two_classes(y) else float("nan")


def _roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if _two_classes(y) else float("nan")


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    if len(y) == 0:
        return float("nan")
    if p.ndim == 2:  # float32 softmax outputs sum to 1 only within ~1e-7
        return float(log_loss(y, p / p.sum(axis=1, keepdims=True), labels=list(range(p.shape[1]))))
    return float(log_loss(y, p, labels=[0, 1]))


def _decided(p: np.ndarray) -> np.ndarray:
    """Class codes of class probabilities (binary: the 0.5 rule, for a decision-free score)."""
    return p.argmax(axis=1) if p.ndim == 2 else (p >= 0.5).astype("int64")


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, _decided(p), average="macro", zero_division=0)) if len(y) else float("nan")


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(_decided(p) == y)) if len(y) else float("nan")


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2))) if len(y) else float("nan")


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(y - p))) if len(y) else float("nan")


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    spread = float(np.sum((y - y.mean()) ** 2)) if len(y) > 1 else 0.0
    return 1.0 - float(np.sum((y - p) ** 2)) / spread if spread > 0 else float("nan")


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "pr_auc": _pr_auc, "roc_auc": _roc_auc, "log_loss": _log_loss, "macro_f1": _macro_f1,
    "accuracy": _accuracy, "rmse": _rmse, "mae": _mae, "r2": _r2,
}


def score(metric: str, y: np.ndarray, pred: np.ndarray) -> float:
    """``metric`` of the task's raw output ``pred`` for encoded labels ``y`` (NaN where it is
    undefined: one class for PR-AUC, no rows). Raises ``KeyError`` for an unknown metric."""
    y, pred = np.asarray(y), np.asarray(pred, dtype="float64")
    return SCORERS[metric](y.astype("float64") if metric in {"rmse", "mae", "r2"} else y, pred)


def metrics(y: np.ndarray, pred: np.ndarray, *, task: str = "binary", threshold: float = 0.5,
            costs: Costs | None = None, precision_target: float = 0.5) -> dict[str, float]:
    """Every metric of the task. Binary adds recall at ``precision_target``, calibration error
    and (with ``costs``) the expected cost per row of deciding ``pred >= threshold``."""
    if task != "binary":
        return {m: score(m, y, pred) for m in TASK_METRICS[task]}
    out = {
        "pr_auc": score("pr_auc", y, pred),
        "roc_auc": score("roc_auc", y, pred),
        f"recall_at_p{int(precision_target * 100)}": recall_at_precision(y, pred, precision_target),
        "calibration_error": calibration_error(y, pred),
    }
    if costs is not None:
        out["expected_cost"] = expected_cost(y, pred, threshold, costs)
    return out


def slice_names(spec: PipelineSpec) -> list[str]:
    """What the gate slices by: ``training.slices``, else the columns of the category features."""
    if spec.training.slices is not None:
        return list(spec.training.slices)
    columns = [f.column for f in spec.features.request.values() if f.fn == "category" and f.column]
    return list(dict.fromkeys(columns))


def _slice_values(values: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values) \
            and values.nunique() > MAX_VALUES_UNBUCKETED:
        labels = pd.qcut(values, QUANTILE_BUCKETS, duplicates="drop").astype(str)
    else:
        labels = values.astype(str)
    return labels.where(values.notna(), "missing")


def slice_columns(frame: pd.DataFrame, names: list[str], *, features: pd.DataFrame | None = None) -> pd.DataFrame:
    """The slice key of every row per name: a column of ``frame`` or a feature of ``features``;
    strings and few-valued numbers by value, other numbers in quantile buckets, nulls ``missing``.
    Raises ``KeyError`` naming a slice that is neither."""
    out = {}
    for name in names:
        if name in frame.columns:
            values = frame[name]
        elif features is not None and name in features.columns:
            values = features[name]
        else:
            raise KeyError(f"training.slices: {name!r} is not a column of the training frame or a model feature")
        out[name] = _slice_values(values.reset_index(drop=True)).to_numpy()
    return pd.DataFrame(out, index=range(len(frame)))


def _scorable(metric: str, y: np.ndarray, *, min_rows: int, min_positives: int) -> bool:
    if metric in {"pr_auc", "roc_auc"}:
        positives = int(np.sum(y))
        return min_positives <= positives < len(y)
    return len(y) >= min_rows


def slice_metrics(slices: pd.DataFrame, y: np.ndarray, pred: np.ndarray, *, metric: str = "pr_auc",
                  min_rows: int = 30, min_positives: int = 5) -> pd.DataFrame:
    """``metric`` per slice value (slices too small to score are reported with NaN)."""
    rows = []
    for column in slices.columns:
        for value, idx in slices.groupby(column).indices.items():
            yy, pp = y[idx], pred[idx]
            ok = _scorable(metric, yy, min_rows=min_rows, min_positives=min_positives)
            row = {"slice": column, "value": str(value), "rows": len(idx)}
            if metric in {"pr_auc", "roc_auc"}:
                row["positives"] = int(np.sum(yy))
            rows.append(row | {metric: score(metric, yy, pp) if ok else float("nan")})
    return pd.DataFrame(rows)


def slice_regressions(challenger: pd.DataFrame, champion: pd.DataFrame, *, tolerance: float,
                      metric: str = "pr_auc") -> list[str]:
    """Slices where the challenger is worse than the champion by more than ``tolerance``: absolute
    for bounded metrics (AUCs, F1, accuracy, R²), a share of the champion's value for the
    unbounded lower-is-better ones (log loss, RMSE, MAE)."""
    if challenger.empty or champion.empty:
        return []
    merged = challenger.merge(champion, on=["slice", "value"], suffixes=("", "_champion"))
    merged = merged.dropna(subset=[metric, f"{metric}_champion"])
    ours, theirs = merged[metric], merged[f"{metric}_champion"]
    if lower_is_better(metric):
        worse = merged[ours > theirs + tolerance * theirs.abs()]
        sign = ">"
    else:
        worse = merged[ours < theirs - tolerance]
        sign = "<"
    return [f"{r['slice']}={r['value']}: {metric} {r[metric]:.3f} {sign} {r[f'{metric}_champion']:.3f}"
            for _, r in worse.iterrows()]


def _binary_plots(folder: Path, y: np.ndarray, pred: np.ndarray, baseline: np.ndarray) -> list[str]:
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, scores in (("candidate", pred), ("baseline", baseline)):
        prec, rec, _ = precision_recall_curve(y, scores)
        ax.plot(rec, prec, label=name)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (holdout)")
    ax.legend()
    fig.savefig(folder / "pr_curve.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    frac, mean = calibration_curve(y, pred, n_bins=10, strategy="quantile")
    ax.plot(mean, frac, marker="o", label="candidate")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.set(xlabel="predicted probability", ylabel="observed positive rate", title="Calibration (holdout)")
    fig.savefig(folder / "calibration.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return ["![PR curve](pr_curve.png) ![Calibration](calibration.png)"]


def _multiclass_tables(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list[str]:
    k = pred.shape[1]
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    counts = pd.crosstab(pd.Categorical(y, categories=range(k)), pd.Categorical(pred.argmax(axis=1),
                         categories=range(k)), dropna=False)
    counts.index, counts.columns = pd.Index(names, name="actual \\ predicted"), names
    return ["## Confusion matrix (holdout rows)", "", _table(counts)]


def _regression_plot(folder: Path, y: np.ndarray, pred: np.ndarray) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(y, pred, s=4, alpha=0.4)
    low, high = float(np.nanmin(y)), float(np.nanmax(y))
    ax.plot([low, high], [low, high], linestyle="--", color="grey")
    ax.set(xlabel="actual", ylabel="predicted", title="Predicted vs actual (holdout)")
    fig.savefig(folder / "predicted_vs_actual.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return ["![Predicted vs actual](predicted_vs_actual.png)"]


def write_report(folder: Path, *, y: np.ndarray, pred: np.ndarray, baseline: np.ndarray,
                 metrics_: dict[str, dict[str, float]], slices: pd.DataFrame, importance: dict[str, float],
                 threshold: float, families: dict[str, dict[str, float]] | None = None,
                 task: str = "binary", metric: str = "pr_auc", classes: list[str] | None = None) -> Path:
    """Markdown report: the task's plots (binary: PR and calibration curves; multiclass: confusion
    matrix; regression: predicted vs actual), slice table and feature importance."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    if task == "binary":
        shown = _binary_plots(folder, y, pred, baseline)
        intro = f"Decision threshold (min expected cost on validation): {threshold:.4f}"
    elif task == "multiclass":
        shown, intro = _multiclass_tables(y, pred, classes or []), "Decision: the most probable class"
    else:
        shown, intro = _regression_plot(folder, y, pred), "Prediction: the value"
    lines = [f"# Evaluation report ({task})", "", intro, "", "## Holdout metrics", "",
             _table(pd.DataFrame(metrics_).T.round(4)), "", *shown, "", f"## Slices ({metric})", "",
             _table(slices.round(4).set_index(["slice", "value"])) if not slices.empty else "(no slices)", "",
             f"## Feature importance (permutation: {metric} lost on validation when shuffled)", "",
             _table(pd.Series(importance, name=f"{metric}_lost", dtype="float64").sort_values(ascending=False)
                    .round(4).to_frame())]
    if families:
        lines += ["", "## Candidate families (best of each search; selected by validation score)", "",
                  _table(pd.DataFrame(families).T.round(4))]
    path = folder / "evaluation.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join([str(frame.index.name or ""), *map(str, frame.columns)]) + " |"
    rule = "|" + "---|" * (len(frame.columns) + 1)
    body = ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(frame.index, frame.values,
                                                                                 strict=True)]
    return "\n".join([header, rule, *body])
