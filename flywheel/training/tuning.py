"""Bounded hyperparameter search per candidate family (Optuna TPE, seeded).

Runs inside the family's MLflow run; every trial is a child run with its params, its
validation score and its training time, so the search is browsable in the MLflow UI.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from flywheel.core.config import Settings
from flywheel.core.spec import CandidateSpec, PipelineSpec
from flywheel.training import evaluation, registry
from flywheel.training.families.base import Family, FitData, Trained, sample

log = logging.getLogger(__name__)


def validation_score(trained: Trained, data: FitData, metric: str) -> float:
    """``metric`` on the validation split; raises ``ValueError`` when it cannot be computed."""
    y = data.y_val.to_numpy()
    if data.task != "regression" and len(np.unique(y)) < 2:
        raise ValueError("the validation split has a single class: widen the training window")
    value = evaluation.score(metric, y, trained.scores(data.x_val))
    if not np.isfinite(value):
        raise ValueError(f"validation {metric} is not finite ({value}): check the labels of the window")
    return value


def log_curves(trained: Trained) -> None:
    """The model's training curve as MLflow step metrics of the active run (``curve_<name>``,
    one step per epoch / boosting round), so the run's charts show it."""
    import mlflow

    curves = trained.curves()
    if not curves or mlflow.active_run() is None:
        return
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    points = [Metric(f"curve_{name}", float(v), stamp, step) for name, values in curves.items()
              for step, v in enumerate(values) if np.isfinite(v)]
    client = mlflow.MlflowClient()
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    for start in range(0, len(points), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=points[start:start + 1000])


def _fit(family: Family, data: FitData, params: dict[str, Any], *, metric: str, seed: int,
         settings: Settings) -> Trained:
    trained = family.train(data, params, seed=seed, settings=settings)
    trained.val_score = validation_score(trained, data, metric)
    log_curves(trained)
    return trained


def tune(family: Family, candidate: CandidateSpec, data: FitData, *, spec: PipelineSpec,
         settings: Settings) -> Trained:
    """The family's best model on the validation split (fixed params when there is no search),
    by the spec's metric in its direction. Curves go to the active run (and each trial's run)."""
    import mlflow

    search, seed, metric = spec.training.search, spec.training.seed, evaluation.metric_of(spec)
    if search.trials == 0 or not candidate.search:
        return _fit(family, data, candidate.params, metric=metric, seed=seed, settings=settings)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize" if evaluation.lower_is_better(metric) else "maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                study_name=f"{spec.model_name}-{family.name}")
    # Trial 0 is the spec's own params: the search can only improve on them.
    start = {k: v for k, v in candidate.params.items() if k in candidate.search}
    if start:
        study.enqueue_trial(start)
    best: dict[str, Any] = {"trained": None}

    def objective(trial: Any) -> float:
        params = {**candidate.params, **sample(trial, candidate.search)}
        with registry.child_run(f"{family.name}-trial-{trial.number}"):
            mlflow.set_tags({"family": family.name, "trial": str(trial.number)})
            mlflow.log_params({k: loggable(v) for k, v in params.items()})
            trained = _fit(family, data, params, metric=metric, seed=seed, settings=settings)
            mlflow.log_metrics({f"val_{metric}": trained.val_score, "train_seconds": trained.seconds})
        log.info("%s trial %d/%d: val %s %.4f in %.1f s %s", family.name, trial.number + 1, search.trials,
                 metric, trained.val_score, trained.seconds, params)
        if best["trained"] is None or evaluation.better(metric, trained.val_score, best["trained"].val_score):
            best["trained"] = trained
        return trained.val_score

    study.optimize(objective, n_trials=search.trials, timeout=search.timeout_s)
    chosen: Trained = best["trained"]
    chosen.trials = len(study.trials)
    chosen.extra["search_cut_by_timeout"] = len(study.trials) < search.trials
    if chosen.extra["search_cut_by_timeout"]:
        log.warning("%s search stopped by its %.0f s timeout after %d of %d trials: not reproducible",
                    family.name, search.timeout_s, len(study.trials), search.trials)
    log_curves(chosen)  # the family's run shows its chosen model's curve
    return chosen


def loggable(value: Any) -> Any:
    """A parameter value MLflow can log (lists become comma-separated strings)."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else value
