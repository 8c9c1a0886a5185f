"""Train a baseline and the candidate families on a temporal split for the spec's task type;
track, register and gate in MLflow."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.features import store as features
from flywheel.training import evaluation, families, lineage, promotion, registry, tasks, tuning
from flywheel.training.dataset import (
    Labelled,
    Matrices,
    Split,
    features_of,
    labelled,
    matrices,
    temporal_split,
)
from flywheel.training.families.base import Trained, permutation_importance

__all__ = ["Split", "TrainResult", "features_of", "select", "temporal_split", "train"]
log = logging.getLogger(__name__)
REFERENCE_ROWS = 20_000


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    family: str
    metrics: dict[str, float]
    threshold: float  # binary only (NaN otherwise)
    promoted: bool
    awaiting_approval: bool
    reason: str
    reference_uri: str
    families: dict[str, dict[str, float]]
    task: str = "binary"
    metric: str = "pr_auc"  # the selection and gate metric
    rows: int = 0  # labelled rows trained and evaluated on
    null_labels: int = 0  # rows left out because their label is null

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    candidate: dict[str, float]
    baseline: dict[str, float]
    champion: dict[str, float] | None
    slices: pd.DataFrame
    regressions: list[str]
    holdout_scores: np.ndarray
    baseline_scores: np.ndarray

    def logged_metrics(self) -> dict[str, float]:
        out = {f"holdout_{k}": v for k, v in self.candidate.items()}
        out |= {f"baseline_{k}": v for k, v in self.baseline.items()}
        out |= {f"champion_{k}": v for k, v in (self.champion or {}).items()}
        return out


def _costs(spec: PipelineSpec) -> evaluation.Costs:
    return evaluation.Costs(spec.training.costs.false_positive, spec.training.costs.false_negative)


@dataclass(frozen=True)
class Scored:
    """A model's holdout scores and metrics; a binary's cost-minimising threshold (on validation)."""

    threshold: float
    metrics: dict[str, float]
    holdout_scores: np.ndarray


def _measure(spec: PipelineSpec, y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    return evaluation.task_metrics(spec.task, y, scores, threshold=threshold, costs=_costs(spec),
                                   precision_target=spec.training.precision_target)


def score(spec: PipelineSpec, m: Matrices, model: Trained) -> Scored:
    threshold = float("nan")
    if spec.task == "binary":
        threshold = evaluation.cost_threshold(m.y["validation"].to_numpy(), model.predict(m.x["validation"]),
                                              _costs(spec))
    scores = model.predict(m.x["holdout"])
    return Scored(threshold, _measure(spec, m.y["holdout"].to_numpy(), scores, threshold), scores)


def _comparable_champion(spec: PipelineSpec, classes: list[Any], settings: Settings) -> registry.LoadedModel | None:
    """The champion, when it scores the same task and classes (else the gate has nothing to
    compare with: a spec that changed its task or classes starts over)."""
    mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if mv is None:
        return None
    current = registry.load_version(spec.model_name, str(mv.version), settings=settings)
    if current.task != spec.task or (spec.task != "regression" and current.classes != classes):
        log.warning("champion v%s (%s, classes %s) is not comparable with a %s model of classes %s",
                    current.version, current.task, current.classes, spec.task, classes)
        return None
    return current


def evaluate(spec: PipelineSpec, split: Split, m: Matrices, scored: Scored, baseline: Trained,
             classes: list[Any], settings: Settings) -> Evaluation:
    """The selected model's holdout scores (threshold from validation) against the baseline and
    the current champion on the same holdout, overall and per slice."""
    metric = tasks.metric_of(spec)
    yh = m.y["holdout"].to_numpy()
    base = baseline.predict(m.x["holdout"])
    slices = evaluation.slice_columns(split.holdout.reset_index(drop=True), spec)

    def per_slice(scores: np.ndarray) -> pd.DataFrame:
        return evaluation.slice_metrics(slices, yh, scores, metric=metric, task=spec.task)

    cand_slices = per_slice(scored.holdout_scores)
    champion, regressions = None, []
    current = _comparable_champion(spec, classes, settings)
    if current is not None:
        champ_scores = np.asarray(current.predict(m.x["holdout"]), dtype="float64")
        champion = _measure(spec, yh, champ_scores, current.threshold)
        regressions = evaluation.slice_regressions(cand_slices, per_slice(champ_scores),
                                                   tolerance=spec.training.slice_tolerance, metric=metric)
    return Evaluation(threshold=scored.threshold, candidate=scored.metrics,
                      baseline=_measure(spec, yh, base, scored.threshold), champion=champion,
                      slices=cand_slices, regressions=regressions, holdout_scores=scored.holdout_scores,
                      baseline_scores=base)


def train_candidates(
    spec: PipelineSpec, m: Matrices, settings: Settings,
) -> tuple[dict[str, Trained], dict[str, Scored], dict[str, dict[str, float]]]:
    """Each candidate family in its own child run (trials nested below it, training curves as
    step metrics); returns the families' best models, their holdout scores (for comparison,
    not for selection) and the logged per-family report."""
    import mlflow

    metric = tasks.metric_of(spec)
    trained: dict[str, Trained] = {}
    scores: dict[str, Scored] = {}
    report: dict[str, dict[str, float]] = {}
    for name, candidate in spec.training.candidates.items():
        family = families.get(name, spec.task)
        with mlflow.start_run(run_name=name, nested=True):
            started = time.perf_counter()
            best = tuning.tune(family, candidate, m.fit, spec=spec, settings=settings)
            search_seconds = time.perf_counter() - started
            scores[name] = scored = score(spec, m, best)
            report[name] = {f"val_{metric}": best.val_score, "train_seconds": best.seconds,
                            "search_seconds": search_seconds, "trials": float(best.trials),
                            **{f"holdout_{k}": v for k, v in scored.metrics.items()}}
            mlflow.set_tags({"family": name, "task": spec.task, "search.cut_by_timeout": str(best.extra.get(
                "search_cut_by_timeout", False)).lower()})
            mlflow.log_params({k: tuning.loggable(v) for k, v in best.params.items()}
                              | {"threshold": scored.threshold})
            mlflow.log_metrics(report[name])
            tuning.log_curves(best.curves)
        log.info("%s: val %s %.4f, holdout %s %.4f, %d trial(s) in %.1f s", name, metric, best.val_score,
                 metric, scored.metrics[metric], best.trials, search_seconds)
        trained[name] = best
    return trained, scores, report


def select(candidates: dict[str, Trained], *, metric: str = "pr_auc") -> Trained:
    """The family with the best validation ``metric`` (spec order breaks ties): the holdout
    stays untouched by selection, so the gate's comparison on it is fair."""
    chosen: Trained | None = None
    for trained in candidates.values():
        if chosen is None or tasks.improves(metric, trained.val_score, chosen.val_score):
            chosen = trained
    if chosen is None:
        raise ValueError("no candidate was trained")
    return chosen


def _gate(spec: PipelineSpec, ev: Evaluation) -> registry.GateDecision:
    metric = tasks.metric_of(spec)
    return registry.decide(challenger=ev.candidate[metric], baseline=ev.baseline[metric],
                           champion=ev.champion[metric] if ev.champion else None,
                           min_improvement=spec.training.min_improvement, regressions=ev.regressions,
                           metric=metric)


def train(spec: PipelineSpec, *, end: date, reason: str = "scheduled",
          settings: Settings | None = None) -> TrainResult:
    """Train the baseline and every candidate family; register the best; gate it.

    Raises :class:`~flywheel.training.dataset.TrainingDataError` or
    :class:`~flywheel.training.tasks.LabelError` when the window cannot train the task.
    """
    import mlflow

    settings = settings or get_settings()
    frame, identity = features.training_frame(spec, end=end, settings=settings)
    data = labelled(spec, frame)
    split = temporal_split(data.frame, spec)
    m = matrices(spec, split, data.classes)
    registry.client(settings)
    mlflow.set_experiment(spec.model_name)
    with mlflow.start_run(run_name=f"train-{end.isoformat()}") as run:
        baseline_name = families.baseline_name(spec.training.baseline, spec.task)
        baseline = families.get(baseline_name, spec.task).train(m.fit, {}, seed=spec.training.seed,
                                                                settings=settings)
        candidates, scores, per_family = train_candidates(spec, m, settings)
        best = select(candidates, metric=tasks.metric_of(spec))
        ev = evaluate(spec, split, m, scores[best.name], baseline, data.classes, settings)
        decision = _gate(spec, ev)
        version = log_run(spec, end=end, reason=reason, data=data, identity=identity, model=best, ev=ev, m=m,
                          per_family=per_family, decision=decision, settings=settings)
    run_id = run.info.run_id
    awaiting = decision.promote and spec.training.approval.required
    tag_version(spec, version, settings, threshold=ev.threshold, run_id=run_id, family=best.name,
                decision=decision, identity=identity, features=m.features, classes=data.classes,
                awaiting_approval=awaiting)
    reference_uri = write_reference(spec, version, recent_days(data.frame, spec), best, data.classes, settings)
    if decision.promote and not awaiting:
        promotion.promote(spec.model_name, version, reason=decision.reason,
                          actor=f"training-gate:{run_id}", settings=settings)
    else:
        registry.set_alias(spec.model_name, registry.CHALLENGER, version, settings=settings)
    outcome = "awaiting approval" if awaiting else ("promoted" if decision.promote else "not promoted")
    log.info("model %s v%s (%s): %s (%s)", spec.model_name, version, best.name, decision.reason, outcome)
    return TrainResult(run_id=run_id, model_name=spec.model_name, version=version, family=best.name,
                       metrics=ev.logged_metrics(), threshold=ev.threshold,
                       promoted=decision.promote and not awaiting, awaiting_approval=awaiting,
                       reason=decision.reason, reference_uri=reference_uri, families=per_family,
                       task=spec.task, metric=tasks.metric_of(spec), rows=len(data.frame),
                       null_labels=data.null_labels)


def log_run(spec: PipelineSpec, *, end: date, reason: str, data: Labelled, identity: dict[str, Any],
            model: Trained, ev: Evaluation, m: Matrices, per_family: dict[str, dict[str, float]],
            decision: registry.GateDecision, settings: Settings) -> str:
    """Into the active run: params, metrics, data, evaluation report; registers the model."""
    import tempfile
    from pathlib import Path

    import mlflow

    metric = tasks.metric_of(spec)
    mlflow.set_tags({"trigger": reason, "data.end": end.isoformat(), "family": model.name, "task": spec.task,
                     "data.feature_service": spec.feature_service,
                     "gate.promote": str(decision.promote).lower(), "gate.reason": decision.reason})
    mlflow.log_params({"family": model.name, "seed": spec.training.seed, "rows": len(data.frame),
                       "rows_read": data.rows_in, "task": spec.task, "metric": metric,
                       "threshold": round(ev.threshold, 6),
                       "baseline": families.baseline_name(spec.training.baseline, spec.task),
                       **{k: tuning.loggable(v) for k, v in model.params.items()}})
    mlflow.log_metrics(ev.logged_metrics() | {"rows_label_null": float(data.null_labels)}
                       | {f"{name}_{k}": v for name, metrics in per_family.items() for k, v in metrics.items()})
    mlflow.log_dict(identity, "data_identity.json")
    mlflow.log_dict(per_family, "evaluation/families.json")
    mlflow.log_input(_dataset(data.frame, spec, identity, bucket=settings.bucket("curated")), context="training")
    importance = permutation_importance(model, m.x["validation"], m.y["validation"], metric=metric,
                                        seed=spec.training.seed)
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.write_report(
            Path(tmp), y=m.y["holdout"].to_numpy(), proba=ev.holdout_scores, baseline=ev.baseline_scores,
            metrics_={"candidate": ev.candidate, "baseline": ev.baseline, **(
                {"champion": ev.champion} if ev.champion else {})},
            slices=ev.slices, importance=importance, threshold=ev.threshold, families=per_family,
            task=spec.task, classes=data.classes, metric=metric)
        mlflow.log_artifacts(tmp, "evaluation")
    info = model.family.log_model(model.model, registered_model_name=spec.model_name,
                                  example=m.x["holdout"].head(3))
    return str(info.registered_model_version)


def _dataset(frame: pd.DataFrame, spec: PipelineSpec, identity: dict[str, Any], *, bucket: str) -> Any:
    """The training set as an MLflow dataset (shown in the run's Datasets), sourced from curated S3."""
    from mlflow.data.pandas_dataset import from_pandas

    source = f"s3://{bucket}/{spec.dataset.name}/ds={identity['start']}..{identity['end']}"
    return from_pandas(frame, source=source, name=f"{spec.dataset.name}-{identity['end']}",
                       targets=spec.target)


def tag_version(spec: PipelineSpec, version: str, settings: Settings, *, threshold: float, run_id: str,
                family: str, decision: registry.GateDecision, identity: dict[str, Any], features: list[str],
                classes: list[Any], awaiting_approval: bool = False) -> None:
    mlflow_client = registry.client(settings)
    tags = {
        "family": family,
        "task": spec.task,
        "gate.awaiting_approval": str(awaiting_approval).lower(),
        "features": json.dumps(features),
        "run_id": run_id,
        "gate.promote": str(decision.promote).lower(),
        "gate.reason": decision.reason,
        "data.window": f"{identity['start']}..{identity['end']}",
        "data.partitions": json.dumps(identity["partitions"])[:5000],
        **lineage.lineage_tags(spec, settings, seed=spec.training.seed),
    }
    if spec.task == "binary":
        tags["threshold"] = str(threshold)
    if spec.task != "regression":
        tags["classes"] = json.dumps(classes)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(spec.model_name, version, key, value)


def recent_days(frame: pd.DataFrame, spec: PipelineSpec, *, share: float = 0.3) -> pd.DataFrame:
    """Rows of the last whole days of the window (about ``share`` of its days, at least one)."""
    days = frame[spec.dataset.timestamp].dt.date
    keep = sorted(days.unique())[-max(1, round(days.nunique() * share)):]
    return frame[days.isin(keep)]


def write_reference(spec: PipelineSpec, version: str, frame: pd.DataFrame, model: Trained,
                    classes: list[Any], settings: Settings) -> str:
    """The reference monitoring compares serving traffic with: the model matrix, the model's
    outputs (:func:`flywheel.training.tasks.output_columns`) and the label.

    Built from the most recent whole days of the training window: early days have
    half-filled aggregates (a 7-day count after 2 days) and partial days skew the
    hour of day, either of which would make steady traffic look drifted.
    """
    sample = frame.sample(n=min(REFERENCE_ROWS, len(frame)), random_state=spec.training.seed)
    matrix = features_of(sample, spec)
    outputs = tasks.output_columns(spec.task, model.predict(matrix), classes=classes)
    reference = matrix.assign(**outputs, **{spec.target: sample[spec.target].to_numpy()})
    key = f"reference/{spec.model_name}/v{version}.parquet"
    return storage.put_bytes("features", key, storage.df_to_parquet_bytes(reference), settings=settings)
