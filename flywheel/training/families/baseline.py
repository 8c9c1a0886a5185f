"""The bars every candidate must clear: simple models on imputed, scaled features.

Classification: ``logistic_regression`` (binary and multiclass, multinomial) and ``majority``
(the class priors: what knowing nothing about a row scores). Regression: ``mean`` (the training
mean) and ``linear`` (ridge regression).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd

from flywheel.core.config import Settings
from flywheel.training import hyperparameters
from flywheel.training.families.base import CLASSIFICATION, FitData, SklearnApiFamily


def _linear_rows(x: pd.DataFrame) -> int:
    # A linear model interpolates about as many rows as its matrix has independent columns (constant
    # and collinear ones, common early in a window, do not count): the rank of a sample, imputed.
    import numpy as np

    sample = x.head(1000).to_numpy(dtype="float64")
    sample = np.where(np.isnan(sample), np.nanmedian(np.where(np.isnan(sample).all(axis=0), 0.0, sample), axis=0),
                      sample) if sample.size else sample
    rank = int(np.linalg.matrix_rank(sample - sample.mean(axis=0))) if sample.size else 0
    return max(4, min(32, rank))


def _linear_pipeline(estimator: Any) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), estimator)


class LogisticRegressionFamily(SklearnApiFamily):
    name: ClassVar[str] = "logistic_regression"
    tasks: ClassVar[frozenset[str]] = CLASSIFICATION
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)
    parameters: ClassVar[frozenset[str]] = hyperparameters.LOGISTIC_REGRESSION
    overfit_params: ClassVar[dict[str, Any]] = {"C": 1e4}

    def overfit_rows(self, x: pd.DataFrame) -> int:
        return _linear_rows(x)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.linear_model import LogisticRegression

        model = _linear_pipeline(LogisticRegression(max_iter=2000, random_state=seed, **params))
        return model.fit(data.x_train, data.y_train)


class MajorityFamily(SklearnApiFamily):
    name: ClassVar[str] = "majority"
    tasks: ClassVar[frozenset[str]] = CLASSIFICATION
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)
    constant: ClassVar[bool] = True

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.dummy import DummyClassifier

        # "prior": probabilities are the training class shares, the decision the majority class.
        return DummyClassifier(strategy="prior", **params).fit(data.x_train, data.y_train)


class MeanFamily(SklearnApiFamily):
    name: ClassVar[str] = "mean"
    tasks: ClassVar[frozenset[str]] = frozenset({"regression"})
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)
    constant: ClassVar[bool] = True

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.dummy import DummyRegressor

        return DummyRegressor(strategy="mean", **params).fit(data.x_train, data.y_train)


class LinearFamily(SklearnApiFamily):
    name: ClassVar[str] = "linear"
    tasks: ClassVar[frozenset[str]] = frozenset({"regression"})
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)
    parameters: ClassVar[frozenset[str]] = hyperparameters.LINEAR
    overfit_params: ClassVar[dict[str, Any]] = {"alpha": 1e-6}

    def overfit_rows(self, x: pd.DataFrame) -> int:
        return _linear_rows(x)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.linear_model import Ridge

        # A little L2 keeps collinear aggregates (counts over nested windows) from exploding.
        return _linear_pipeline(Ridge(**({"alpha": 1.0} | params))).fit(data.x_train, data.y_train)
