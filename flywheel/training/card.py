"""The model card of a version: what it is for, what it was trained on, how good it is and how sure.

Written by training for every registered version (Markdown, an artifact of the run at
:data:`ARTIFACT`; the version's :data:`TAG` tag holds an HTTP URL into MLflow's artifact view).
It holds intended use and known misuses (the spec's ``card``), the data window and lineage,
holdout metrics with bootstrap confidence intervals, slices, calibration (a reliability table
and ECE for classification, residuals for regression), a feature-group ablation (permutation
importance per Feast feature view and for the request features), inference latency (the gate's
measurement) and the ML Test Score rubric (:mod:`flywheel.training.testscore`).

The rubric is the part after :data:`RUBRIC_MARK`: ``flywheel report`` rewrites it as evidence
arrives after training (a reproduction, a rollback drill, monitoring).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.config import Settings
from flywheel.core.spec import NOT_STATED, PipelineSpec
from flywheel.training import evaluation
from flywheel.training.families.base import Trained

ARTIFACT = "model_card/model_card.md"
FACTS = "model_card/card.json"
TAG = "flywheel.model_card"
ABLATION_TAG = "evidence.ablation"
RUBRIC_MARK = "<!-- flywheel: ML Test Score -->"
REQUEST_GROUP = "request features"
BOOTSTRAP_ROUNDS = 100
BOOTSTRAP_ROWS = 20_000


def bootstrap_ci(metric: str, y: np.ndarray, pred: np.ndarray, *, seed: int, rounds: int = BOOTSTRAP_ROUNDS,
                 level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of ``metric`` on holdout rows (at most
    :data:`BOOTSTRAP_ROWS` per resample); NaN bounds when the metric cannot be computed."""
    rng = np.random.default_rng(seed)
    n = len(y)
    size = min(n, BOOTSTRAP_ROWS)
    values = []
    for _ in range(rounds):
        at = rng.integers(0, n, size=size)
        value = evaluation.score(metric, y[at], pred[at])
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def reliability(task: str, y: np.ndarray, pred: np.ndarray, *, bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Classification: per bin of predicted probability (multiclass: of the top class's), the
    rows, mean prediction and observed rate, and the expected calibration error. Raises
    ``ValueError`` for regression (see :func:`residuals`)."""
    if task == "regression":
        raise ValueError("a regression model has no reliability table: see residuals()")
    if task == "multiclass":
        confidence = pred.max(axis=1)
        hit = (pred.argmax(axis=1) == y).astype(float)
    else:
        confidence, hit = pred.astype(float), y.astype(float)
    edges = np.linspace(0, 1, bins + 1)
    at = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = at == b
        if mask.any():
            rows.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "rows": int(mask.sum()),
                         "mean_predicted": float(confidence[mask].mean()), "observed": float(hit[mask].mean())})
    table = pd.DataFrame(rows, columns=["bin", "rows", "mean_predicted", "observed"])
    ece = float((table["rows"] * (table["mean_predicted"] - table["observed"]).abs()).sum() / max(len(y), 1))
    return table, ece


def residuals(y: np.ndarray, pred: np.ndarray, *, bins: int = 5) -> pd.DataFrame:
    """Regression residuals (label − prediction) per quantile bucket of the prediction."""
    frame = pd.DataFrame({"pred": pred, "residual": y - pred})
    frame["bucket"] = pd.qcut(frame["pred"].rank(method="first"), q=min(bins, max(1, len(frame))), labels=False)
    out = frame.groupby("bucket").agg(rows=("residual", "size"), prediction_from=("pred", "min"),
                                      prediction_to=("pred", "max"), mean_residual=("residual", "mean"),
                                      std_residual=("residual", "std"))
    return out.reset_index(drop=True)


def feature_groups(spec: PipelineSpec, features: list[str]) -> dict[str, list[str]]:
    """The model's features by group: one per Feast feature view (an entity's aggregates), and
    the request features."""
    from flywheel.features.repo import view_name

    groups: dict[str, list[str]] = {}
    for entity, definition in spec.features.entities.items():
        mine = [f for f in features if f in definition.aggregations]
        if mine:
            groups[view_name(spec, entity)] = mine
    grouped = {f for names in groups.values() for f in names}
    rest = [f for f in features if f not in grouped]
    if rest:
        groups[REQUEST_GROUP] = rest
    return groups


def group_ablation(trained: Trained, x: pd.DataFrame, y: np.ndarray, groups: dict[str, list[str]], *,
                   metric: str, seed: int, max_rows: int = 5000) -> dict[str, float]:
    """How much ``metric`` worsens on holdout rows when one group's columns are shuffled together
    (one row permutation per group, seeded); positive means the group helps."""
    if len(x) > max_rows:
        at = np.random.default_rng(seed).choice(len(x), size=max_rows, replace=False)
        x, y = x.iloc[at].reset_index(drop=True), y[at]
    base = evaluation.score(metric, y, trained.scores(x))
    sign = -1.0 if evaluation.lower_is_better(metric) else 1.0
    rng = np.random.default_rng(seed)
    out = {}
    for group, columns in groups.items():
        shuffled = x.copy()
        order = rng.permutation(len(x))
        shuffled[columns] = x[columns].to_numpy()[order]
        out[group] = float(sign * (base - evaluation.score(metric, y, trained.scores(shuffled))))
    return out


@dataclass(frozen=True)
class CardFacts:
    """What the card says, as data (``model_card/card.json``)."""

    model: str
    version: str
    family: str
    task: str
    metric: str
    intended_use: str
    misuses: list[str]
    window: str
    lineage: dict[str, str]
    metrics: dict[str, dict[str, float]]  # name -> {value, low, high}
    baseline: dict[str, float]
    slices: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    ece: float | None
    ablation: dict[str, float]
    groups: dict[str, list[str]]
    latency_ms: dict[str, float]
    latency_budget_ms: dict[str, float]
    overfit: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not np.isfinite(value) else f"{value:.4g}"
    return str(value)


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "_none_\n"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render(facts: CardFacts) -> str:
    """The card's Markdown, up to and including :data:`RUBRIC_MARK` (the rubric follows)."""
    misuses = facts.misuses or [NOT_STATED]
    metrics = [{"metric": k, "holdout": v["value"], "95% CI low": v["low"], "95% CI high": v["high"],
                "baseline": facts.baseline.get(k, float("nan"))} for k, v in facts.metrics.items()]
    lineage = [{"what": k, "value": v} for k, v in sorted(facts.lineage.items()) if k != "lineage.packages"]
    ablation = [{"group": g, "features": len(facts.groups.get(g, [])), f"{facts.metric} drop when shuffled": v}
                for g, v in sorted(facts.ablation.items(), key=lambda kv: -kv[1])]
    latency = [{"batch": b, "p99 ms": v, "budget ms": facts.latency_budget_ms.get(b, float("nan"))}
               for b, v in facts.latency_ms.items()]
    calibration_title = ("Calibration (reliability table)" if facts.task != "regression"
                         else "Residuals (label − prediction, by prediction bucket)")
    ece = f"\nExpected calibration error: {_fmt(facts.ece)}\n" if facts.ece is not None else ""
    parts = [
        f"# Model card: {facts.model} v{facts.version}\n",
        f"Family **{facts.family}**, task **{facts.task}**, gate metric **{facts.metric}**.\n",
        "## Intended use\n", f"{facts.intended_use}\n",
        "## Known misuses\n", "\n".join(f"- {m}" for m in misuses) + "\n",
        "## Data and lineage\n", f"Training window: {facts.window}\n", _markdown_table(lineage),
        "## Holdout metrics (bootstrap 95% confidence intervals)\n", _markdown_table(metrics),
        "## Slices\n", _markdown_table(facts.slices[:40]),
        f"## {calibration_title}\n", _markdown_table(facts.calibration) + ece,
        "## Feature-group ablation (permutation importance on holdout)\n", _markdown_table(ablation),
        "## Inference latency (in-process, holdout rows)\n", _markdown_table(latency),
        "## Overfit-one-batch check\n", _markdown_table(facts.overfit),
        RUBRIC_MARK + "\n",
    ]
    return "\n".join(parts)


def with_rubric(card: str, rubric_markdown: str) -> str:
    """``card`` with everything after :data:`RUBRIC_MARK` replaced by ``rubric_markdown``."""
    head = card.split(RUBRIC_MARK, 1)[0]
    return f"{head}{RUBRIC_MARK}\n\n{rubric_markdown}"


def ui_url(settings: Settings, experiment_id: str, run_id: str, path: str = ARTIFACT) -> str:
    """An HTTP URL of an artifact in MLflow's UI (its artifact view of the run)."""
    base = str(settings.mlflow_tracking_uri).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}/artifactPath/{path}"


def attach(model_name: str, version: str, run_id: str, card: str, *, facts: CardFacts | None,
           settings: Settings) -> str:
    """Log the card (and its facts) to the version's run and point the version's :data:`TAG` at
    it; returns the URL."""
    from flywheel.training import registry

    client = registry.client(settings)
    client.log_text(run_id, card, ARTIFACT)
    if facts is not None:
        client.log_text(run_id, facts.to_json(), FACTS)
    url = ui_url(settings, client.get_run(run_id).info.experiment_id, run_id)
    client.set_model_version_tag(model_name, version, TAG, url)
    return url


def read(model_name: str, version: str, *, settings: Settings) -> str:
    """The card of a version (its run's :data:`ARTIFACT`); raises ``FileNotFoundError`` when the
    version has none (trained before model cards)."""
    import tempfile
    from pathlib import Path

    from flywheel.training import registry

    client = registry.client(settings)
    mv = client.get_model_version(model_name, version)
    run_id = mv.tags.get("run_id") or mv.run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, ARTIFACT, tmp)
        except Exception as exc:  # MLflow raises its own or an OSError per artifact store
            raise FileNotFoundError(f"{model_name} v{version} has no model card ({ARTIFACT} of run {run_id})") \
                from exc
        return Path(path).read_text()


def facts(spec: PipelineSpec, *, version: str, trained: Trained, metric: str, y: np.ndarray, scores: np.ndarray,
          candidate: dict[str, float], baseline: dict[str, float], slices: pd.DataFrame, tags: dict[str, str],
          ablation: dict[str, float], groups: dict[str, list[str]], latency: Any,
          overfit: list[dict[str, Any]]) -> CardFacts:
    """The card's facts from training's holdout evaluation (``latency``: a
    :class:`flywheel.training.latency.Latency`; ``tags``: the version's lineage and data tags)."""
    seed = spec.training.seed
    intervals = {}
    for name, value in candidate.items():
        if name in evaluation.SCORERS:
            low, high = bootstrap_ci(name, y, scores, seed=seed)
            intervals[name] = {"value": value, "low": low, "high": high}
    if spec.task == "regression":
        table, ece = residuals(y, scores), None
    else:
        table, ece = reliability(spec.task, y, scores)
    lineage = {k: v for k, v in tags.items() if k.startswith("lineage.") or k in ("data.feature_service",)}
    return CardFacts(
        model=spec.model_name, version=version, family=trained.name, task=spec.task, metric=metric,
        intended_use=spec.card.intended_use, misuses=list(spec.card.misuses), window=tags.get("data.window", "?"),
        lineage=lineage, metrics=intervals, baseline=baseline, slices=slices.to_dict(orient="records"),
        calibration=table.to_dict(orient="records"), ece=ece, ablation=ablation, groups=groups,
        latency_ms={str(b): v for b, v in latency.p99_ms.items()},
        latency_budget_ms={str(b): v for b, v in latency.budget_ms.items()}, overfit=overfit)
