"""Train a baseline and an XGBoost candidate on a temporal split, track and gate in MLflow."""

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
from flywheel.features.featurizer import featurizer_for
from flywheel.training import evaluation, families, lineage, promotion, registry, tuning
from flywheel.training.families.base import FitData, Trained, permutation_importance

log = logging.getLogger(__name__)
REFERENCE_ROWS = 20_000


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    family: str
    metrics: dict[str, float]
    threshold: float
    promoted: bool
    awaiting_approval: bool
    reason: str
    reference_uri: str
    families: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def temporal_split(frame: pd.DataFrame, spec: PipelineSpec) -> Split:
    """Train / validation / holdout by time: no holdout row precedes a training row."""
    ordered = frame.sort_values([spec.dataset.timestamp, spec.dataset.key]).reset_index(drop=True)
    n = len(ordered)
    a = int(n * spec.training.split.train)
    b = int(n * (spec.training.split.train + spec.training.split.validation))
    return Split(ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:])


def features_of(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The model matrix of a training frame: the spec's one featurizer."""
    return featurizer_for(spec).frame(frame)


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    candidate: dict[str, float]
    baseline: dict[str, float]
    champion: dict[str, float] | None
    slices: pd.DataFrame
    regressions: list[str]
    holdout_proba: np.ndarray
    baseline_proba: np.ndarray

    def logged_metrics(self) -> dict[str, float]:
        out = {f"holdout_{k}": v for k, v in self.candidate.items()}
        out |= {f"baseline_{k}": v for k, v in self.baseline.items()}
        out |= {f"champion_{k}": v for k, v in (self.champion or {}).items()}
        return out


def _costs(spec: PipelineSpec) -> evaluation.Costs:
    return evaluation.Costs(spec.training.costs.false_positive, spec.training.costs.false_negative)


@dataclass(frozen=True)
class Scored:
    """A model's cost-minimising threshold (on validation), holdout scores and metrics."""

    threshold: float
    metrics: dict[str, float]
    holdout_proba: np.ndarray


def score(spec: PipelineSpec, y: dict[str, pd.Series], x: dict[str, pd.DataFrame], model: Trained) -> Scored:
    costs = _costs(spec)
    threshold = evaluation.cost_threshold(y["validation"].to_numpy(), model.predict_proba(x["validation"]), costs)
    proba = model.predict_proba(x["holdout"])
    return Scored(threshold, evaluation.metrics(y["holdout"].to_numpy(), proba, threshold=threshold, costs=costs,
                                                precision_target=spec.training.precision_target), proba)


def evaluate(spec: PipelineSpec, split: Split, x: dict[str, pd.DataFrame], y: dict[str, pd.Series],
             scored: Scored, baseline: Trained, settings: Settings) -> Evaluation:
    """The selected model's holdout scores (threshold from validation) against the baseline and
    the current champion on the same holdout, overall and per slice."""
    t = spec.training
    costs = _costs(spec)
    yh = y["holdout"].to_numpy()
    threshold, candidate, proba = scored.threshold, scored.metrics, scored.holdout_proba
    base = baseline.predict_proba(x["holdout"])

    def measure(scores: np.ndarray, at: float) -> dict[str, float]:
        return evaluation.metrics(yh, scores, threshold=at, costs=costs, precision_target=t.precision_target)

    slices = evaluation.slice_columns(split.holdout, spec, split.holdout["user_txn_count_7d"].isna())
    cand_slices = evaluation.slice_metrics(slices, yh, proba)
    champion, regressions = None, []
    mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if mv is not None:
        current = registry.load_version(spec.model_name, str(mv.version), settings=settings)
        champ_proba = current.predict_proba(x["holdout"])
        champion = measure(champ_proba, current.threshold)
        regressions = evaluation.slice_regressions(
            cand_slices, evaluation.slice_metrics(slices, yh, champ_proba), tolerance=t.slice_tolerance)
    return Evaluation(threshold=threshold, candidate=candidate, baseline=measure(base, threshold),
                      champion=champion, slices=cand_slices, regressions=regressions,
                      holdout_proba=proba, baseline_proba=base)


def train_candidates(
    spec: PipelineSpec, data: FitData, x: dict[str, pd.DataFrame], y: dict[str, pd.Series], settings: Settings,
) -> tuple[dict[str, Trained], dict[str, Scored], dict[str, dict[str, float]]]:
    """Each candidate family in its own child run (trials nested below it); returns the
    families' best models, their holdout scores (for comparison, not for selection) and
    the logged per-family report."""
    import mlflow

    trained: dict[str, Trained] = {}
    scores: dict[str, Scored] = {}
    report: dict[str, dict[str, float]] = {}
    for name, candidate in spec.training.candidates.items():
        family = families.get(name)
        with mlflow.start_run(run_name=name, nested=True):
            started = time.perf_counter()
            best = tuning.tune(family, candidate, data, spec=spec, settings=settings)
            search_seconds = time.perf_counter() - started
            scores[name] = scored = score(spec, y, x, best)
            threshold, metrics = scored.threshold, scored.metrics
            report[name] = {f"val_{spec.training.metric}": best.val_score, "train_seconds": best.seconds,
                            "search_seconds": search_seconds, "trials": float(best.trials),
                            **{f"holdout_{k}": v for k, v in metrics.items()}}
            mlflow.set_tags({"family": name, "search.cut_by_timeout": str(best.extra.get(
                "search_cut_by_timeout", False)).lower()})
            mlflow.log_params({k: tuning.loggable(v) for k, v in best.params.items()} | {"threshold": threshold})
            mlflow.log_metrics(report[name])
        log.info("%s: val %s %.4f, holdout PR-AUC %.4f, %d trial(s) in %.1f s", name, spec.training.metric,
                 best.val_score, metrics["pr_auc"], best.trials, search_seconds)
        trained[name] = best
    return trained, scores, report


def select(candidates: dict[str, Trained]) -> Trained:
    """The family with the best validation score (spec order breaks ties): the holdout stays
    untouched by selection, so the gate's comparison on it is fair."""
    return max(candidates.values(), key=lambda t: t.val_score)


def train(spec: PipelineSpec, *, end: date, reason: str = "scheduled",
          settings: Settings | None = None) -> TrainResult:
    """Train the baseline and every candidate family; register the best; gate it."""
    import mlflow

    settings = settings or get_settings()
    frame, identity = features.training_frame(spec, end=end, settings=settings)
    split = temporal_split(frame, spec)
    seed = spec.training.seed
    x = {name: features_of(part, spec) for name, part in asdict_split(split).items()}
    y = {name: part[spec.target].astype("int64") for name, part in asdict_split(split).items()}
    data = FitData(x["train"], y["train"], x["validation"], y["validation"])
    registry.client(settings)
    mlflow.set_experiment(spec.model_name)
    with mlflow.start_run(run_name=f"train-{end.isoformat()}") as run:
        baseline = families.get(spec.training.baseline).train(data, {}, seed=seed, settings=settings)
        candidates, scores, per_family = train_candidates(spec, data, x, y, settings)
        best = select(candidates)
        ev = evaluate(spec, split, x, y, scores[best.name], baseline, settings)
        metric = spec.training.metric
        decision = registry.decide(
            challenger=ev.candidate[metric], baseline=ev.baseline[metric],
            champion=ev.champion[metric] if ev.champion else None,
            min_improvement=spec.training.min_improvement, regressions=ev.regressions,
        )
        version = log_run(spec, end=end, reason=reason, frame=frame, identity=identity, model=best,
                          ev=ev, x=x, y=y, per_family=per_family, decision=decision, settings=settings)
    run_id = run.info.run_id
    awaiting = decision.promote and spec.training.approval.required
    tag_version(spec, version, settings, threshold=ev.threshold, run_id=run_id, family=best.name,
                decision=decision, identity=identity, awaiting_approval=awaiting)
    reference_uri = write_reference(spec, version, recent_days(frame, spec), best, settings)
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
                       reason=decision.reason, reference_uri=reference_uri, families=per_family)


def log_run(spec: PipelineSpec, *, end: date, reason: str, frame: pd.DataFrame, identity: dict[str, Any],
            model: Trained, ev: Evaluation, x: dict[str, pd.DataFrame], y: dict[str, pd.Series],
            per_family: dict[str, dict[str, float]], decision: registry.GateDecision,
            settings: Settings) -> str:
    """Into the active run: params, metrics, data, evaluation report; registers the model."""
    import tempfile
    from pathlib import Path

    import mlflow

    mlflow.set_tags({"trigger": reason, "data.end": end.isoformat(), "family": model.name,
                     "data.feature_service": spec.feature_service,
                     "gate.promote": str(decision.promote).lower(), "gate.reason": decision.reason})
    mlflow.log_params({"family": model.name, "seed": spec.training.seed, "rows": len(frame),
                       "threshold": round(ev.threshold, 6), "baseline": spec.training.baseline,
                       **{k: tuning.loggable(v) for k, v in model.params.items()}})
    mlflow.log_metrics(ev.logged_metrics() | {f"{name}_{k}": v for name, metrics in per_family.items()
                                              for k, v in metrics.items()})
    mlflow.log_dict(identity, "data_identity.json")
    mlflow.log_dict(per_family, "evaluation/families.json")
    mlflow.log_input(_dataset(frame, spec, identity, bucket=settings.bucket("curated")), context="training")
    importance = permutation_importance(model, x["validation"], y["validation"], seed=spec.training.seed)
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.write_report(
            Path(tmp), y=y["holdout"].to_numpy(), proba=ev.holdout_proba, baseline=ev.baseline_proba,
            metrics_={"candidate": ev.candidate, "baseline": ev.baseline, **(
                {"champion": ev.champion} if ev.champion else {})},
            slices=ev.slices, importance=importance, threshold=ev.threshold, families=per_family)
        mlflow.log_artifacts(tmp, "evaluation")
    info = model.family.log_model(model.model, registered_model_name=spec.model_name,
                                  example=x["holdout"].head(3))
    return str(info.registered_model_version)


def _dataset(frame: pd.DataFrame, spec: PipelineSpec, identity: dict[str, Any], *, bucket: str) -> Any:
    """The training set as an MLflow dataset (shown in the run's Datasets), sourced from curated S3."""
    from mlflow.data.pandas_dataset import from_pandas

    source = f"s3://{bucket}/{spec.dataset.name}/ds={identity['start']}..{identity['end']}"
    return from_pandas(frame, source=source, name=f"{spec.dataset.name}-{identity['end']}",
                                   targets=spec.target)


def asdict_split(split: Split) -> dict[str, pd.DataFrame]:
    return {"train": split.train, "validation": split.validation, "holdout": split.holdout}


def tag_version(spec: PipelineSpec, version: str, settings: Settings, *, threshold: float, run_id: str,
                family: str, decision: registry.GateDecision, identity: dict[str, Any],
                awaiting_approval: bool = False) -> None:
    mlflow_client = registry.client(settings)
    tags = {
        "family": family,
        "gate.awaiting_approval": str(awaiting_approval).lower(),
        "threshold": str(threshold),
        "features": json.dumps(featurizer_for(spec).names),
        "run_id": run_id,
        "gate.promote": str(decision.promote).lower(),
        "gate.reason": decision.reason,
        "data.window": f"{identity['start']}..{identity['end']}",
        "data.partitions": json.dumps(identity["partitions"])[:5000],
        **lineage.lineage_tags(spec, settings, seed=spec.training.seed),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(spec.model_name, version, key, value)


def recent_days(frame: pd.DataFrame, spec: PipelineSpec, *, share: float = 0.3) -> pd.DataFrame:
    """Rows of the last whole days of the window (about ``share`` of its days, at least one)."""
    days = frame[spec.dataset.timestamp].dt.date
    keep = sorted(days.unique())[-max(1, round(days.nunique() * share)):]
    return frame[days.isin(keep)]


def write_reference(spec: PipelineSpec, version: str, frame: pd.DataFrame, model: Trained,
                    settings: Settings) -> str:
    """The reference monitoring compares serving traffic with.

    Built from the most recent whole days of the training window: early days have
    half-filled aggregates (a 7-day count after 2 days) and partial days skew the
    hour of day, either of which would make steady traffic look drifted.
    """
    sample = frame.sample(n=min(REFERENCE_ROWS, len(frame)), random_state=spec.training.seed)
    matrix = features_of(sample, spec)
    reference = matrix.assign(probability=model.predict_proba(matrix),
                              **{spec.target: sample[spec.target].to_numpy()})
    key = f"reference/{spec.model_name}/v{version}.parquet"
    return storage.put_bytes("features", key, storage.df_to_parquet_bytes(reference), settings=settings)
