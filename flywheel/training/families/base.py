"""The family interface and what every family shares (search sampling, importance).

A family instance is bound to one task type (``binary``, ``multiclass``, ``regression``);
its scores follow :mod:`flywheel.training.tasks`: the positive-class probability (1-d), one
probability per class (``n x k``), or the value.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.core.config import Settings
from flywheel.core.spec import ParamRange
from flywheel.training import tasks


@dataclass(frozen=True)
class FitData:
    """Model matrices and encoded labels of a temporal split (validation: early stopping and
    training curves only).

    ``n_classes``: the number of classes of a classification (codes ``0..n-1``);
    ``categorical``: category-code features and their number of known codes (unknown = -1);
    ``metric``: the spec's selection metric (early stopping, curves).
    """

    x_train: pd.DataFrame
    y_train: pd.Series
    x_val: pd.DataFrame
    y_val: pd.Series
    n_classes: int = 2
    categorical: Mapping[str, int] = field(default_factory=dict)
    metric: str = "pr_auc"


@dataclass
class Trained:
    """A fitted model with the family that scores it and how it was obtained."""

    family: Family
    model: Any
    params: dict[str, Any]
    seconds: float
    val_score: float = float("nan")
    trials: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    # Per epoch / boosting round: logged as MLflow step metrics.
    curves: dict[str, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def task(self) -> str:
        return self.family.task

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        """The task's scores, one per row of ``x`` (``n x k`` for a multiclass)."""
        return np.asarray(self.family.predict(self.model, x), dtype="float64")

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Binary name of :meth:`predict` (the positive-class probability)."""
        return self.predict(x)


class Family(ABC):
    """One kind of model. Subclasses set ``name`` and implement fit/predict/log/load."""

    name: ClassVar[str]
    # Packages whose exact versions a logged model needs (MLflow pip requirements).
    requirements: ClassVar[tuple[str, ...]] = ()

    def __init__(self, task: str = "binary") -> None:
        self.task = task

    @abstractmethod
    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        """Fit on ``data.x_train``/``y_train``; deterministic for a given seed on the CPU."""

    @abstractmethod
    def predict(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        """The task's scores (see the module docstring)."""

    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        """Binary name of :meth:`predict`."""
        return self.predict(model, x)

    def predict_array(self, model: Any, x: np.ndarray, features: list[str]) -> np.ndarray:
        """``predict`` of a float matrix whose columns are ``features`` (the serving path).

        Families override it to skip building a DataFrame; results must equal ``predict``.
        """
        return self.predict(model, pd.DataFrame(x, columns=features))

    def predict_proba_array(self, model: Any, x: np.ndarray, features: list[str]) -> np.ndarray:
        """Binary name of :meth:`predict_array`."""
        return self.predict_array(model, x, features)

    def curves(self, model: Any) -> dict[str, list[float]]:
        """Training curves of a fitted model (name -> one value per epoch or round)."""
        return {}

    @abstractmethod
    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        """Log to the active MLflow run and register; returns MLflow's ModelInfo."""

    @abstractmethod
    def load(self, uri: str, settings: Settings) -> Any:
        """Load a logged model (``models:/name/version``) ready to score."""

    def train(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Trained:
        started = time.perf_counter()
        model = self.fit(data, params, seed=seed, settings=settings)
        return Trained(self, model, dict(params), seconds=time.perf_counter() - started,
                       curves=self.curves(model))

    def pip_requirements(self) -> list[str]:
        from importlib import metadata

        return [f"{pkg}=={metadata.version(pkg)}" for pkg in self.requirements]


class SklearnApiFamily(Family):
    """A family whose models follow scikit-learn's ``predict_proba`` (classification) or
    ``predict`` (regression) and have an MLflow flavor of their own (``mlflow.<flavor>``):
    only ``fit`` is left to write."""

    flavor: ClassVar[str]

    def predict(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        if self.task == "regression":
            return np.asarray(model.predict(x), dtype="float64")
        proba = np.asarray(model.predict_proba(x), dtype="float64")
        return proba[:, 1] if self.task == "binary" else proba

    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        return self._mlflow().log_model(model, name="model", registered_model_name=registered_model_name,
                                        input_example=example, pip_requirements=self.pip_requirements())

    def load(self, uri: str, settings: Settings) -> Any:
        return self._mlflow().load_model(uri)

    def _mlflow(self) -> Any:
        from importlib import import_module

        return import_module(f"mlflow.{self.flavor}")


def sample(trial: Any, space: dict[str, ParamRange]) -> dict[str, Any]:
    """Draw one point of ``space`` from an Optuna trial."""
    params: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.type == "categorical":
            params[name] = trial.suggest_categorical(name, dim.choices)
        elif dim.type == "int":
            params[name] = trial.suggest_int(name, int(dim.low or 0), int(dim.high or 0), log=dim.log)
        else:
            params[name] = trial.suggest_float(name, float(dim.low or 0), float(dim.high or 0), log=dim.log)
    return params


def permutation_importance(trained: Trained, x: pd.DataFrame, y: pd.Series, *, metric: str, seed: int,
                           max_rows: int = 5000) -> dict[str, float]:
    """How much ``metric`` worsens when one feature is shuffled (model-agnostic, seeded; positive =
    the model relies on the feature). Empty when the metric is undefined on these rows."""
    if len(x) > max_rows:
        x = x.sample(n=max_rows, random_state=seed)
        y = y.loc[x.index]
    yv = y.to_numpy()
    base = tasks.score(metric, yv, trained.predict(x))
    if not np.isfinite(base):
        return {}
    sign = 1.0 if tasks.higher_is_better(metric) else -1.0
    rng = np.random.default_rng(seed)
    out = {}
    for column in x.columns:
        shuffled = x.copy()
        shuffled[column] = rng.permutation(shuffled[column].to_numpy())
        out[column] = float(sign * (base - tasks.score(metric, yv, trained.predict(shuffled))))
    return out
