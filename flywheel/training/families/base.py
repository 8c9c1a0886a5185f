"""The family interface and what every family shares (search sampling, importance).

What a model returns depends on the task (:func:`Family.predict`): binary → the positive
class's probability, shape (n,); multiclass → class probabilities, shape (n, k), columns in
class-code order; regression → the predicted value, shape (n,).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.core.config import Settings
from flywheel.core.spec import TASK_METRICS, ParamRange, TaskType

ALL_TASKS: frozenset[str] = frozenset({"binary", "multiclass", "regression"})
CLASSIFICATION: frozenset[str] = frozenset({"binary", "multiclass"})


class UnknownFamilyError(KeyError):
    """A spec or a model version names a family that is not registered."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class FamilyTaskError(ValueError):
    """A spec names a family that does not support its task type."""


@dataclass(frozen=True)
class FitData:
    """Model matrices and labels of a temporal split (validation is for early stopping only).

    Labels are encoded: binary 0/1, multiclass codes ``0..n_classes-1``, regression floats.
    ``categorical``: category-code columns -> number of known codes (``Featurizer.categorical``).
    ``metric``: the validation metric early stopping follows (default: the task's).
    """

    x_train: pd.DataFrame
    y_train: pd.Series
    x_val: pd.DataFrame
    y_val: pd.Series
    task: TaskType = "binary"
    n_classes: int = 2
    categorical: dict[str, int] = field(default_factory=dict)
    metric: str | None = None

    @property
    def validation_metric(self) -> str:
        return self.metric or TASK_METRICS[self.task][0]


@dataclass
class Trained:
    """A fitted model with the family that scores it and how it was obtained."""

    family: Family
    model: Any
    params: dict[str, Any]
    seconds: float
    task: TaskType = "binary"
    val_score: float = float("nan")
    trials: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.family.name

    def scores(self, x: pd.DataFrame) -> np.ndarray:
        """The task's raw output (see the module docstring) for the rows of ``x``."""
        return np.asarray(self.family.predict(self.model, x, task=self.task), dtype="float64")

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        """Class probabilities: binary (n,) of the positive class; multiclass (n, k)."""
        if self.task not in CLASSIFICATION:
            raise TypeError(f"a {self.task} model has no class probabilities: use scores()")
        return self.scores(x)

    def curves(self) -> dict[str, list[float]]:
        """Training curves (per epoch / boosting round), keyed by metric name."""
        return self.family.curves(self.model)


class Family(ABC):
    """One kind of model. Subclasses set ``name`` and ``tasks`` and implement fit/predict/log/load."""

    name: ClassVar[str]
    tasks: ClassVar[frozenset[str]]
    # Packages whose exact versions a logged model needs (MLflow pip requirements).
    requirements: ClassVar[tuple[str, ...]] = ()
    # The hyperparameters a spec may set or search (``training.candidates.<family>.params/search``):
    # any other name is a spec error, so a misspelling never trains silently on a default.
    parameters: ClassVar[frozenset[str]] = frozenset()
    # The overfit-one-batch check (flywheel.training.overfit): a constant family has nothing to
    # overfit; the others are fitted on one small batch with ``overfit_params``.
    constant: ClassVar[bool] = False
    overfit_params: ClassVar[dict[str, Any]] = {}

    def overfit_rows(self, x: pd.DataFrame) -> int:
        """Rows of the overfit batch for the training matrix ``x``."""
        return 32

    @abstractmethod
    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        """Fit on ``data.x_train``/``y_train`` for ``data.task``; deterministic for a seed on the CPU."""

    @abstractmethod
    def predict(self, model: Any, x: pd.DataFrame, *, task: str) -> np.ndarray:
        """The task's raw output: binary (n,) probability, multiclass (n, k), regression (n,) value."""

    def predict_array(self, model: Any, x: np.ndarray, features: list[str], *, task: str) -> np.ndarray:
        """``predict`` of a float matrix whose columns are ``features`` (the serving path).

        Families override it to skip building a DataFrame; results must equal ``predict``.
        """
        return self.predict(model, pd.DataFrame(x, columns=features), task=task)

    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities (1-d) of a binary model."""
        return self.predict(model, x, task="binary")

    def predict_proba_array(self, model: Any, x: np.ndarray, features: list[str]) -> np.ndarray:
        """``predict_proba`` of a float matrix whose columns are ``features``."""
        return self.predict_array(model, x, features, task="binary")

    def curves(self, model: Any) -> dict[str, list[float]]:
        """Per-iteration training curves (metric -> values); none by default."""
        return {}

    def export_onnx(self, model: Any, features: list[str], *, task: str) -> bytes:
        """The model as an ONNX graph: one float input ``(n, len(features))`` in ``features``
        order, the task's raw output (:meth:`predict`). Raises
        :class:`flywheel.training.compiled.ExportUnsupported` when the family has none."""
        from flywheel.training.compiled import ExportUnsupported

        raise ExportUnsupported(f"family {self.name!r} has no ONNX export")

    @abstractmethod
    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        """Log to the active MLflow run and register; returns MLflow's ModelInfo."""

    @abstractmethod
    def load(self, uri: str, settings: Settings) -> Any:
        """Load a logged model (``models:/name/version``) ready to score."""

    def train(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Trained:
        """Fit and time; raises ``FamilyTaskError`` when the family cannot learn ``data.task``."""
        if data.task not in self.tasks:
            raise FamilyTaskError(f"family {self.name!r} does not support task {data.task!r} "
                                  f"(it supports: {', '.join(sorted(self.tasks))})")
        started = time.perf_counter()
        model = self.fit(data, params, seed=seed, settings=settings)
        return Trained(self, model, dict(params), seconds=time.perf_counter() - started, task=data.task)

    def pip_requirements(self) -> list[str]:
        from importlib import metadata

        return [f"{pkg}=={metadata.version(pkg)}" for pkg in self.requirements]


class SklearnApiFamily(Family):
    """A family whose models follow scikit-learn's ``predict_proba``/``predict`` and have an
    MLflow flavor of their own (``mlflow.<flavor>``): only ``fit`` is left to write."""

    flavor: ClassVar[str]

    def predict(self, model: Any, x: pd.DataFrame, *, task: str) -> np.ndarray:
        if task == "regression":
            return np.asarray(model.predict(x), dtype="float64")
        proba = np.asarray(model.predict_proba(x), dtype="float64")
        return proba[:, 1] if task == "binary" else proba

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
    """How much ``metric`` worsens when one feature is shuffled (model-agnostic, seeded); positive
    means the feature matters, whatever the metric's direction."""
    from flywheel.training import evaluation

    if len(x) > max_rows:
        x = x.sample(n=max_rows, random_state=seed)
        y = y.loc[x.index]
    yv = y.to_numpy()
    base = evaluation.score(metric, yv, trained.scores(x))
    if not np.isfinite(base):
        return {}
    sign = -1.0 if evaluation.lower_is_better(metric) else 1.0
    rng = np.random.default_rng(seed)
    out = {}
    for column in x.columns:
        shuffled = x.copy()
        shuffled[column] = rng.permutation(shuffled[column].to_numpy())
        out[column] = float(sign * (base - evaluation.score(metric, yv, trained.scores(shuffled))))
    return out
