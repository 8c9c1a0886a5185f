"""The bar every candidate must clear: logistic regression on imputed, scaled features."""

from __future__ import annotations

from typing import Any, ClassVar

from flywheel.core.config import Settings
from flywheel.training.families.base import FitData, SklearnApiFamily


class LogisticRegressionFamily(SklearnApiFamily):
    name: ClassVar[str] = "logistic_regression"
    flavor: ClassVar[str] = "sklearn"
    requirements = ("scikit-learn",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = make_pipeline(
            SimpleImputer(strategy="median", keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(max_iter=2000, random_state=seed, **params),
        )
        return model.fit(data.x_train, data.y_train)
