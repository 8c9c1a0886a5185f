"""Bounded hyperparameter search per candidate family (Optuna TPE, seeded).

Runs inside the family's MLflow run; every trial is a child run with its params, its
validation score, its training curves (step metrics) and its training time, so the search
is browsable in the MLflow UI.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from flywheel.core.config import Settings
from flywheel.core.spec import CandidateSpec, PipelineSpec
from flywheel.training import tasks
from flywheel.training.families.base import Family, FitData, Trained, sample

log = logging.getLogger(__name__)


class ValidationError(ValueError):
    """The validation split cannot score the metric (e.g. a single class)."""


def validation_score(trained: Trained, data: FitData, metric: str) -> float:
    """``metric`` on the validation split; raises :class:`ValidationError` when it is undefined."""
    y = data.y_val.to_numpy()
    if trained.task != "regression" and len(np.unique(y)) < 2:
        raise ValidationError("the validation split has a single class: widen the training window")
    value = tasks.score(metric, y, trained.predict(data.x_val))
    if not np.isfinite(value):
        raise ValidationError(f"validation {metric} is undefined ({value}) on {len(y)} rows")
    return value


def log_curves(curves: dict[str, list[float]]) -> None:
    """Training curves into the active MLflow run as step metrics (one step per epoch/round),
    so MLflow's charts draw them. Batched: a 400-round curve is one request, not 400."""
    import time

    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None or not curves:
        return
    now = int(time.time() * 1000)
    points = [Metric(f"curve_{name}", float(v), now, step) for name, values in curves.items()
              for step, v in enumerate(values) if np.isfinite(v)]
    client = mlflow.MlflowClient()
    for start in range(0, len(points), 1000):  # MLflow's limit per batch
        client.log_batch(run.info.run_id, metrics=points[start:start + 1000], synchronous=True)


def tune(family: Family, candidate: CandidateSpec, data: FitData, *, spec: PipelineSpec,
         settings: Settings) -> Trained:
    """The family's best model on the validation split (fixed params when there is no search)."""
    import mlflow

    search, seed, metric = spec.training.search, spec.training.seed, tasks.metric_of(spec)
    if search.trials == 0 or not candidate.search:
        trained = family.train(data, candidate.params, seed=seed, settings=settings)
        trained.val_score = validation_score(trained, data, metric)
        return trained

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if tasks.higher_is_better(metric) else "minimize", sampler=optuna.samplers.TPESampler(seed=seed),
                                study_name=f"{spec.model_name}-{family.name}")
    # Trial 0 is the spec's own params: the search can only improve on them.
    start = {k: v for k, v in candidate.params.items() if k in candidate.search}
    if start:
        study.enqueue_trial(start)
    best: dict[str, Any] = {"score": tasks.worst(metric), "trained": None}

    def objective(trial: Any) -> float:
        params = {**candidate.params, **sample(trial, candidate.search)}
        with mlflow.start_run(run_name=f"{family.name}-trial-{trial.number}", nested=True):
            mlflow.set_tags({"family": family.name, "trial": str(trial.number)})
            mlflow.log_params({k: loggable(v) for k, v in params.items()})
            trained = family.train(data, params, seed=seed, settings=settings)
            trained.val_score = validation_score(trained, data, metric)
            mlflow.log_metrics({f"val_{metric}": trained.val_score, "train_seconds": trained.seconds})
            log_curves(trained.curves)
        log.info("%s trial %d/%d: val %s %.4f in %.1f s %s", family.name, trial.number + 1, search.trials,
                 metric, trained.val_score, trained.seconds, params)
        if best["trained"] is None or tasks.improves(metric, trained.val_score, best["score"]):
            best.update(score=trained.val_score, trained=trained)
        return trained.val_score

    study.optimize(objective, n_trials=search.trials, timeout=search.timeout_s)
    chosen: Trained = best["trained"]
    chosen.trials = len(study.trials)
    chosen.extra["search_cut_by_timeout"] = len(study.trials) < search.trials
    if chosen.extra["search_cut_by_timeout"]:
        log.warning("%s search stopped by its %.0f s timeout after %d of %d trials: not reproducible",
                    family.name, search.timeout_s, len(study.trials), search.trials)
    return chosen


def loggable(value: Any) -> Any:
    """A parameter value MLflow can log (lists become comma-separated strings)."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else value
