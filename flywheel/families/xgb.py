"""Gradient-boosted trees (XGBoost, ``hist``): deterministic for a seed, byte-identical models."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from flywheel.config import Settings
from flywheel.families.base import Family, FitData


class XGBoostFamily(Family):
    name: ClassVar[str] = "xgboost"
    requirements = ("xgboost",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from xgboost import XGBClassifier

        model = XGBClassifier(**params, random_state=seed, n_jobs=2, tree_method="hist", eval_metric="aucpr")
        return model.fit(data.x_train, data.y_train)

    def predict_proba(self, model: Any, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(model.predict_proba(x)[:, 1])

    def log_model(self, model: Any, *, registered_model_name: str, example: pd.DataFrame) -> Any:
        import mlflow.xgboost

        return mlflow.xgboost.log_model(model, name="model", registered_model_name=registered_model_name,
                                        input_example=example, pip_requirements=self.pip_requirements())

    def load(self, uri: str, settings: Settings) -> Any:
        import mlflow.xgboost

        return mlflow.xgboost.load_model(uri)

    @staticmethod
    def model_bytes(model: Any) -> bytes:
        return bytes(model.get_booster().save_raw())
