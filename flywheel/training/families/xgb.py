"""Gradient-boosted trees (XGBoost, ``hist``): deterministic for a seed, byte-identical models.

Binary: ``binary:logistic``; multiclass: ``multi:softprob``; regression: ``reg:squarederror``.
The validation split is evaluated every boosting round (it does not change the trees): the
curve of the task's metric is logged per round.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from flywheel.core.config import Settings
from flywheel.training.families.base import FitData, SklearnApiFamily

# The per-round validation metric XGBoost computes, per task.
EVAL_METRIC = {"binary": "aucpr", "multiclass": "mlogloss", "regression": "rmse"}


class XGBoostFamily(SklearnApiFamily):
    name: ClassVar[str] = "xgboost"
    flavor: ClassVar[str] = "xgboost"
    requirements = ("xgboost",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from xgboost import XGBClassifier, XGBRegressor

        cls = XGBRegressor if self.task == "regression" else XGBClassifier
        model = cls(**params, random_state=seed, n_jobs=2, tree_method="hist",
                    eval_metric=EVAL_METRIC[self.task])
        return model.fit(data.x_train, data.y_train, eval_set=[(data.x_val, data.y_val)], verbose=False)

    def curves(self, model: Any) -> dict[str, list[float]]:
        metric = EVAL_METRIC[self.task]
        try:
            values = model.evals_result()["validation_0"][metric]
        except (AttributeError, KeyError, TypeError):  # a model loaded from MLflow keeps no history
            return {}
        return {f"val_{metric}": [float(v) for v in values]}

    def predict_array(self, model: Any, x: np.ndarray, features: list[str]) -> np.ndarray:
        # What XGBClassifier.predict_proba does for a DataFrame, minus the per-call pandas
        # conversion and feature-name checks (~0.8 ms of a ~1 ms one-row predict): the caller
        # guarantees the column order. Same booster, iteration range and missing value.
        out = model.get_booster().inplace_predict(x, iteration_range=model._get_iteration_range(None),
                                                  missing=model.missing, validate_features=False)
        return np.asarray(out, dtype="float64")

    @staticmethod
    def model_bytes(model: Any) -> bytes:
        return bytes(model.get_booster().save_raw())
