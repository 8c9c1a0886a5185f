"""The bar every candidate must clear: logistic regression on imputed, scaled features."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.config import Settings
from flywheel.families.base import Family, FitData


class LogisticRegressionFamily(Family):
    name: ClassVar[str] = "logistic_regression"
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

    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(x)[:, 1])

    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        import mlflow.sklearn

        return mlflow.sklearn.log_model(model, name="model", registered_model_name=registered_model_name,
                                        input_example=example, pip_requirements=self.pip_requirements())

    def load(self, uri: str, settings: Settings) -> Any:
        import mlflow.sklearn

        return mlflow.sklearn.load_model(uri)
