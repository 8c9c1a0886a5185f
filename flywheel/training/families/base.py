"""The family interface and what every family shares (search sampling, importance)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.core.config import Settings
from flywheel.core.spec import ParamRange


@dataclass(frozen=True)
class FitData:
    """Model matrices and labels of a temporal split (validation is for early stopping only)."""

    x_train: pd.DataFrame
    y_train: pd.Series
    x_val: pd.DataFrame
    y_val: pd.Series


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

    @property
    def name(self) -> str:
        return self.family.name

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Probability of the positive class, one value per row of ``x``."""
        return np.asarray(self.family.predict_proba(self.model, x), dtype="float64")


class Family(ABC):
    """One kind of model. Subclasses set ``name`` and implement fit/predict/log/load."""

    name: ClassVar[str]
    # Packages whose exact versions a logged model needs (MLflow pip requirements).
    requirements: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        """Fit on ``data.x_train``/``y_train``; deterministic for a given seed on the CPU."""

    @abstractmethod
    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities (1-d)."""

    def predict_proba_array(self, model: Any, x: np.ndarray, features: list[str]) -> np.ndarray:
        """``predict_proba`` of a float matrix whose columns are ``features`` (the serving path).

        Families override it to skip building a DataFrame; results must equal ``predict_proba``.
        """
        return self.predict_proba(model, pd.DataFrame(x, columns=features))

    @abstractmethod
    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        """Log to the active MLflow run and register; returns MLflow's ModelInfo."""

    @abstractmethod
    def load(self, uri: str, settings: Settings) -> Any:
        """Load a logged model (``models:/name/version``) ready to score."""

    def train(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Trained:
        started = time.perf_counter()
        model = self.fit(data, params, seed=seed, settings=settings)
        return Trained(self, model, dict(params), seconds=time.perf_counter() - started)

    def pip_requirements(self) -> list[str]:
        from importlib import metadata

        return [f"{pkg}=={metadata.version(pkg)}" for pkg in self.requirements]


class SklearnApiFamily(Family):
    """A family whose models follow scikit-learn's ``predict_proba`` and have an MLflow flavor
    of their own (``mlflow.<flavor>``): only ``fit`` is left to write."""

    flavor: ClassVar[str]

    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(x)[:, 1])

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


def permutation_importance(trained: Trained, x: pd.DataFrame, y: pd.Series, *, seed: int,
                           max_rows: int = 5000) -> dict[str, float]:
    """Drop in average precision when one feature is shuffled (model-agnostic, seeded)."""
    from sklearn.metrics import average_precision_score

    if len(x) > max_rows:
        x = x.sample(n=max_rows, random_state=seed)
        y = y.loc[x.index]
    yv = y.to_numpy()
    if yv.sum() == 0:
        return {}
    base = average_precision_score(yv, trained.predict_proba(x))
    rng = np.random.default_rng(seed)
    out = {}
    for column in x.columns:
        shuffled = x.copy()
        shuffled[column] = rng.permutation(shuffled[column].to_numpy())
        out[column] = float(base - average_precision_score(yv, trained.predict_proba(shuffled)))
    return out
