"""Bounded hyperparameter search per candidate family (Optuna TPE, seeded).

Runs inside the family's MLflow run; every trial is a child run with its params, its
validation score and its training time, so the search is browsable in the MLflow UI.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from flywheel.core.config import Settings
from flywheel.core.spec import CandidateSpec, PipelineSpec
from flywheel.training.families.base import Family, FitData, Trained, sample

log = logging.getLogger(__name__)


def validation_score(trained: Trained, data: FitData, metric: str) -> float:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = data.y_val.to_numpy()
    if y.min() == y.max():
        raise ValueError("the validation split has a single class: widen the training window")
    proba = trained.predict_proba(data.x_val)
    return float(average_precision_score(y, proba) if metric == "pr_auc" else roc_auc_score(y, proba))


def tune(family: Family, candidate: CandidateSpec, data: FitData, *, spec: PipelineSpec,
         settings: Settings) -> Trained:
    """The family's best model on the validation split (fixed params when there is no search)."""
    import mlflow

    search, seed, metric = spec.training.search, spec.training.seed, spec.training.metric
    if search.trials == 0 or not candidate.search:
        trained = family.train(data, candidate.params, seed=seed, settings=settings)
        trained.val_score = validation_score(trained, data, metric)
        return trained

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                study_name=f"{spec.model_name}-{family.name}")
    # Trial 0 is the spec's own params: the search can only improve on them.
    start = {k: v for k, v in candidate.params.items() if k in candidate.search}
    if start:
        study.enqueue_trial(start)
    best: dict[str, Any] = {"score": -np.inf, "trained": None}

    def objective(trial: Any) -> float:
        params = {**candidate.params, **sample(trial, candidate.search)}
        with mlflow.start_run(run_name=f"{family.name}-trial-{trial.number}", nested=True):
            mlflow.set_tags({"family": family.name, "trial": str(trial.number)})
            mlflow.log_params({k: loggable(v) for k, v in params.items()})
            trained = family.train(data, params, seed=seed, settings=settings)
            trained.val_score = validation_score(trained, data, metric)
            mlflow.log_metrics({f"val_{metric}": trained.val_score, "train_seconds": trained.seconds})
        log.info("%s trial %d/%d: val %s %.4f in %.1f s %s", family.name, trial.number + 1, search.trials,
                 metric, trained.val_score, trained.seconds, params)
        if trained.val_score > best["score"]:
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
