"""Gradient-boosted trees (XGBoost, ``hist``): deterministic for a seed, byte-identical models."""

from __future__ import annotations

from typing import Any, ClassVar

from flywheel.config import Settings
from flywheel.families.base import FitData, SklearnApiFamily


class XGBoostFamily(SklearnApiFamily):
    name: ClassVar[str] = "xgboost"
    flavor: ClassVar[str] = "xgboost"
    requirements = ("xgboost",)

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from xgboost import XGBClassifier

        model = XGBClassifier(**params, random_state=seed, n_jobs=2, tree_method="hist", eval_metric="aucpr")
        return model.fit(data.x_train, data.y_train)

    @staticmethod
    def model_bytes(model: Any) -> bytes:
        return bytes(model.get_booster().save_raw())
