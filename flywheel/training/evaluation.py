"""Model evaluation: holdout metrics, a cost-optimal threshold, slices, and a report.

Metrics: PR-AUC, ROC-AUC, recall at a fixed precision, expected calibration error and
expected cost per transaction (false positive / false negative costs from the spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.core.spec import PipelineSpec

AMOUNT_BUCKETS = [0, 20, 50, 100, 250, 1000, float("inf")]


@dataclass(frozen=True)
class Costs:
    false_positive: float
    false_negative: float


def expected_cost(y: np.ndarray, proba: np.ndarray, threshold: float, costs: Costs) -> float:
    """Average cost per transaction of deciding ``proba >= threshold``."""
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


def slice_columns(frame: pd.DataFrame, spec: PipelineSpec, first_seen: pd.Series) -> pd.DataFrame:
    """Slice keys per row: merchant category, amount bucket, country, new vs returning user."""
    return pd.DataFrame(
        {
            "merchant_category": frame["merchant_category"].astype(str),
            "amount_bucket": pd.cut(frame["amount"], AMOUNT_BUCKETS, right=False).astype(str),
            "country": frame["country"].astype(str),
            "user_tenure": np.where(first_seen.to_numpy(), "new", "returning"),
        },
        index=frame.index,
    )


def slice_metrics(slices: pd.DataFrame, y: np.ndarray, proba: np.ndarray, *,
                  min_positives: int = 5) -> pd.DataFrame:
    """PR-AUC per slice value (slices with too few positives are reported but not scored)."""
    from sklearn.metrics import average_precision_score

    rows = []
    for column in slices.columns:
        for value, idx in slices.groupby(column).indices.items():
            yy, pp = y[idx], proba[idx]
            positives = int(yy.sum())
            scored = positives >= min_positives and positives < len(yy)
            rows.append({"slice": column, "value": str(value), "rows": len(idx), "positives": positives,
                         "pr_auc": float(average_precision_score(yy, pp)) if scored else float("nan")})
    return pd.DataFrame(rows)


def slice_regressions(challenger: pd.DataFrame, champion: pd.DataFrame, *, tolerance: float) -> list[str]:
    """Slices where the challenger's PR-AUC is below the champion's by more than ``tolerance``."""
    merged = challenger.merge(champion, on=["slice", "value"], suffixes=("", "_champion"))
    merged = merged.dropna(subset=["pr_auc", "pr_auc_champion"])
    worse = merged[merged["pr_auc"] < merged["pr_auc_champion"] - tolerance]
    return [f"{r.slice}={r.value}: {r.pr_auc:.3f} < {r.pr_auc_champion:.3f}" for r in worse.itertuples()]


def write_report(folder: Path, *, y: np.ndarray, proba: np.ndarray, baseline: np.ndarray,
                 metrics_: dict[str, dict[str, float]], slices: pd.DataFrame, importance: dict[str, float],
                 threshold: float, families: dict[str, dict[str, float]] | None = None) -> Path:
    """Markdown report with PR and calibration curves, slice table and feature importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve

    folder.mkdir(parents=True, exist_ok=True)
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
    ax.set(xlabel="predicted probability", ylabel="observed fraud rate", title="Calibration (holdout)")
    fig.savefig(folder / "calibration.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    lines = ["# Evaluation report", "", f"Decision threshold (min expected cost on validation): {threshold:.4f}",
             "", "## Holdout metrics", "", _table(pd.DataFrame(metrics_).T.round(4)), "",
             "![PR curve](pr_curve.png) ![Calibration](calibration.png)", "", "## Slices (PR-AUC)", "",
             _table(slices.round(4).set_index(["slice", "value"])), "",
             "## Feature importance (permutation: PR-AUC lost on validation when shuffled)", "",
             _table(pd.Series(importance, name="pr_auc_drop", dtype="float64").sort_values(ascending=False)
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
