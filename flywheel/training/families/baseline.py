"""The bars every candidate must clear: linear models on imputed, scaled features, and the
constant predictors (the majority class's prior, the mean)."""

from __future__ import annotations

from typing import Any, ClassVar

from flywheel.core.config import Settings
from flywheel.training.families.base import FitData, SklearnApiFamily


def _linear(estimator: Any) -> Any:
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                         estimator)


class LogisticRegressionFamily(SklearnApiFamily):
    """Binary or multinomial logistic regression."""

    name: ClassVar[str] = "logistic_regression"
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.linear_model import LogisticRegression

        model = _linear(LogisticRegression(max_iter=2000, random_state=seed, **params))
        return model.fit(data.x_train, data.y_train)


class LinearRegressionFamily(SklearnApiFamily):
    """Ridge regression (``alpha`` 1.0 unless given): least squares that stays finite when
    features are collinear."""

    name: ClassVar[str] = "linear_regression"
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.linear_model import Ridge

        return _linear(Ridge(**({"alpha": 1.0} | params))).fit(data.x_train, data.y_train)


class MajorityFamily(SklearnApiFamily):
    """The class prior for every row (decides the majority class): what knowing nothing scores."""

    name: ClassVar[str] = "majority"
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.dummy import DummyClassifier

        return DummyClassifier(strategy="prior").fit(data.x_train, data.y_train)


class MeanFamily(SklearnApiFamily):
    """The training mean for every row."""

    name: ClassVar[str] = "mean"
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.dummy import DummyRegressor

        return DummyRegressor(strategy="mean").fit(data.x_train, data.y_train)
