"""Train a baseline and an XGBoost candidate on a temporal split, track and gate in MLflow."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from flywheel import evaluation, features, lineage, promotion, registry, storage
from flywheel.config import Settings, get_settings
from flywheel.featurize import ENTITY_DEFAULTS, MODEL_FEATURES, model_matrix
from flywheel.spec import PipelineSpec

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
    metrics: dict[str, float]
    threshold: float
    promoted: bool
    reason: str
    reference_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def temporal_split(frame: pd.DataFrame, spec: PipelineSpec) -> Split:
    """Train / validation / holdout by time: no holdout row precedes a training row."""
    ordered = frame.sort_values([spec.dataset.timestamp, spec.dataset.key]).reset_index(drop=True)
    n = len(ordered)
    a = int(n * spec.training.split.train)
    b = int(n * (spec.training.split.train + spec.training.split.validation))
    return Split(ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:])


def features_of(frame: pd.DataFrame) -> pd.DataFrame:
    entity_cols = [c for c in ENTITY_DEFAULTS if c in frame.columns]
    return model_matrix(frame, frame[entity_cols])


def fit_baseline(x: pd.DataFrame, y: pd.Series, *, seed: int) -> Any:
    """Logistic regression on imputed, scaled features: the bar a real model must clear."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        SimpleImputer(strategy="median", keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(max_iter=2000, random_state=seed),
    )
    return model.fit(x, y)


def fit_xgboost(x: pd.DataFrame, y: pd.Series, *, params: dict[str, Any], seed: int) -> Any:
    from xgboost import XGBClassifier

    model = XGBClassifier(
        **params, random_state=seed, n_jobs=2, tree_method="hist", eval_metric="aucpr"
    )
    return model.fit(x, y)


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


def evaluate(spec: PipelineSpec, split: Split, x: dict[str, pd.DataFrame], y: dict[str, pd.Series],
             model: Any, baseline: Any, settings: Settings) -> Evaluation:
    """Threshold on validation (min expected cost); metrics and slices on the holdout,
    for the candidate, the baseline and the current champion alike."""
    t = spec.training
    costs = evaluation.Costs(t.costs.false_positive, t.costs.false_negative)
    yv, yh = y["validation"].to_numpy(), y["holdout"].to_numpy()
    threshold = evaluation.cost_threshold(yv, model.predict_proba(x["validation"])[:, 1], costs)
    proba = model.predict_proba(x["holdout"])[:, 1]
    base = baseline.predict_proba(x["holdout"])[:, 1]

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
    return Evaluation(threshold=threshold, candidate=measure(proba, threshold), baseline=measure(base, threshold),
                      champion=champion, slices=cand_slices, regressions=regressions,
                      holdout_proba=proba, baseline_proba=base)


def train(spec: PipelineSpec, *, end: date, reason: str = "scheduled",
          settings: Settings | None = None) -> TrainResult:
    """Train, evaluate, register and gate one candidate on data up to ``end``."""
    settings = settings or get_settings()
    frame, identity = features.training_frame(spec, end=end, settings=settings)
    split = temporal_split(frame, spec)
    seed = spec.training.seed
    x = {name: features_of(part) for name, part in asdict_split(split).items()}
    y = {name: part[spec.label].astype("int64") for name, part in asdict_split(split).items()}
    baseline = fit_baseline(x["train"], y["train"], seed=seed)
    model = fit_xgboost(x["train"], y["train"], params=spec.training.xgboost, seed=seed)
    ev = evaluate(spec, split, x, y, model, baseline, settings)
    metric = spec.training.metric
    decision = registry.decide(
        challenger=ev.candidate[metric], baseline=ev.baseline[metric],
        champion=ev.champion[metric] if ev.champion else None,
        min_improvement=spec.training.min_improvement, regressions=ev.regressions,
    )
    run_id, version = log_run(spec, end=end, reason=reason, frame=frame, identity=identity, model=model,
                              ev=ev, y_holdout=y["holdout"], example=x["holdout"].head(3), settings=settings)
    tag_version(spec, version, settings, threshold=ev.threshold, run_id=run_id,
                decision=decision, identity=identity)
    reference_uri = write_reference(spec, version, recent_days(frame, spec), model, settings)
    if decision.promote:
        promotion.promote(spec.model_name, version, reason=decision.reason,
                          actor=f"training-gate:{run_id}", settings=settings)
    else:
        registry.set_alias(spec.model_name, registry.CHALLENGER, version, settings=settings)
    log.info("model %s v%s: %s (promoted: %s)", spec.model_name, version, decision.reason, decision.promote)
    return TrainResult(run_id=run_id, model_name=spec.model_name, version=version,
                       metrics=ev.logged_metrics(), threshold=ev.threshold, promoted=decision.promote,
                       reason=decision.reason, reference_uri=reference_uri)


def log_run(spec: PipelineSpec, *, end: date, reason: str, frame: pd.DataFrame, identity: dict[str, Any],
            model: Any, ev: Evaluation, y_holdout: pd.Series, example: pd.DataFrame,
            settings: Settings) -> tuple[str, str]:
    """One MLflow run: params, metrics, data, evaluation report, registered model."""
    import tempfile
    from pathlib import Path

    import mlflow
    import mlflow.xgboost

    registry.client(settings)
    mlflow.set_experiment(spec.model_name)
    with mlflow.start_run(run_name=f"train-{end.isoformat()}") as run:
        mlflow.set_tags({"trigger": reason, "data.end": end.isoformat(),
                         "data.feature_service": spec.features.service})
        mlflow.log_params({"family": "xgboost", "seed": spec.training.seed, "rows": len(frame),
                           "threshold": round(ev.threshold, 6), **spec.training.xgboost})
        mlflow.log_metrics(ev.logged_metrics())
        mlflow.log_dict(identity, "data_identity.json")
        mlflow.log_input(_dataset(frame, spec, identity, bucket=settings.bucket("curated")), context="training")
        with tempfile.TemporaryDirectory() as tmp:
            evaluation.write_report(
                Path(tmp), y=y_holdout.to_numpy(), proba=ev.holdout_proba, baseline=ev.baseline_proba,
                metrics_={"candidate": ev.candidate, "baseline": ev.baseline, **(
                    {"champion": ev.champion} if ev.champion else {})},
                slices=ev.slices, importance=evaluation.feature_importance(model), threshold=ev.threshold)
            mlflow.log_artifacts(tmp, "evaluation")
        info = mlflow.xgboost.log_model(model, name="model", registered_model_name=spec.model_name,
                                        input_example=example)
    return run.info.run_id, str(info.registered_model_version)


def _dataset(frame: pd.DataFrame, spec: PipelineSpec, identity: dict[str, Any], *, bucket: str) -> Any:
    """The training set as an MLflow dataset (shown in the run's Datasets), sourced from curated S3."""
    from mlflow.data.pandas_dataset import from_pandas

    source = f"s3://{bucket}/{spec.dataset.name}/ds={identity['start']}..{identity['end']}"
    return from_pandas(frame, source=source, name=f"{spec.dataset.name}-{identity['end']}",
                                   targets=spec.label)


def asdict_split(split: Split) -> dict[str, pd.DataFrame]:
    return {"train": split.train, "validation": split.validation, "holdout": split.holdout}


def tag_version(spec: PipelineSpec, version: str, settings: Settings, *, threshold: float,
                run_id: str, decision: registry.GateDecision, identity: dict[str, Any]) -> None:
    mlflow_client = registry.client(settings)
    tags = {
        "threshold": str(threshold),
        "features": json.dumps(MODEL_FEATURES),
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


def write_reference(spec: PipelineSpec, version: str, frame: pd.DataFrame, model: Any,
                    settings: Settings) -> str:
    """The reference monitoring compares serving traffic with.

    Built from the most recent whole days of the training window: early days have
    half-filled aggregates (a 7-day count after 2 days) and partial days skew the
    hour of day, either of which would make steady traffic look drifted.
    """
    sample = frame.sample(n=min(REFERENCE_ROWS, len(frame)), random_state=spec.training.seed)
    matrix = features_of(sample)
    reference = matrix.assign(probability=model.predict_proba(matrix)[:, 1],
                              **{spec.label: sample[spec.label].to_numpy()})
    key = f"reference/{spec.model_name}/v{version}.parquet"
    return storage.put_bytes("features", key, storage.df_to_parquet_bytes(reference), settings=settings)
