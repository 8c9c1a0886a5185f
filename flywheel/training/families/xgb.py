"""Gradient-boosted trees (XGBoost, ``hist``): deterministic for a seed, byte-identical models.

Objective per task: ``binary:logistic``, ``multi:softprob``, ``reg:squarederror``. The metrics
of every boosting round on train and validation are kept (``evals_result``): the training curve.

With ``compute.engine = dask`` the trees are grown by XGBoost's own Dask integration
(``xgboost.dask``: each worker holds partitions of the training matrix, histograms are
all-reduced between them). The fitted booster comes back as the ordinary scikit-learn model, so
logging, loading and serving do not know where it was trained. Distributed ``hist`` merges the
workers' quantile sketches, so the split candidates (and the metrics) can differ slightly from the
single-process model's: tests/integration/test_compute_dask.py states the tolerance.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np

from flywheel.core.config import Settings
from flywheel.training import hyperparameters
from flywheel.training.families.base import ALL_TASKS, FitData, SklearnApiFamily

OBJECTIVES = {"binary": "binary:logistic", "multiclass": "multi:softprob", "regression": "reg:squarederror"}
EVAL_METRICS = {"binary": ["logloss", "aucpr"], "multiclass": ["mlogloss", "merror"],
                "regression": ["rmse", "mae"]}
CURVE_SETS = ("train", "val")
ONNX_OPSET = 15  # the highest onnxmltools 1.16 converts to; ONNX Runtime 1.31 runs it


class XGBoostFamily(SklearnApiFamily):
    name: ClassVar[str] = "xgboost"
    tasks: ClassVar[frozenset[str]] = ALL_TASKS
    flavor: ClassVar[str] = "xgboost"
    requirements = ("xgboost",)
    parameters: ClassVar[frozenset[str]] = hyperparameters.XGBOOST
    overfit_params: ClassVar[dict[str, Any]] = {"n_estimators": 60, "max_depth": 6, "learning_rate": 0.3,
                                                "min_child_weight": 0.0, "reg_lambda": 0.0}

    def fit(self, data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
        from xgboost import XGBClassifier, XGBRegressor

        if settings.compute.distributed:
            return _fit_on_cluster(data, params, seed=seed, settings=settings)
        estimator = XGBRegressor if data.task == "regression" else XGBClassifier
        model = estimator(**({"objective": OBJECTIVES[data.task]} | params), random_state=seed, n_jobs=2,
                          tree_method="hist", eval_metric=EVAL_METRICS[data.task])
        # eval_set only records the curve (no early stopping): the trees are the same without it.
        return model.fit(data.x_train, data.y_train, eval_set=[(data.x_train, data.y_train),
                                                               (data.x_val, data.y_val)], verbose=False)

    def predict_array(self, model: Any, x: np.ndarray, features: list[str], *, task: str) -> np.ndarray:
        # What predict_proba / predict do for a DataFrame, minus the per-call pandas conversion and
        # feature-name checks (~0.8 ms of a ~1 ms one-row predict): the caller guarantees the column
        # order. Same booster, iteration range and missing value; binary:logistic gives the positive
        # class's probability, multi:softprob the (n, k) matrix, reg:squarederror the value.
        out = model.get_booster().inplace_predict(x, iteration_range=model._get_iteration_range(None),
                                                  missing=model.missing, validate_features=False)
        return np.asarray(out, dtype="float64")

    def export_onnx(self, model: Any, features: list[str], *, task: str) -> bytes:
        # onnxmltools reads the trees from the booster's JSON dump, where it expects features
        # named f0..fN: a copy without the DataFrame's feature names gives it that.
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        estimator = copy.deepcopy(model)
        estimator.get_booster().feature_names = None
        onnx_model = convert_xgboost(estimator, initial_types=[("input", FloatTensorType([None, len(features)]))],
                                     target_opset=ONNX_OPSET)
        return bytes(onnx_model.SerializeToString())

    def curves(self, model: Any) -> dict[str, list[float]]:
        from xgboost.core import XGBoostError

        try:
            results = model.evals_result()  # {"validation_0": {"logloss": [...]}, "validation_1": ...}
        except XGBoostError:  # a model fitted without eval_set (versions before curves) has none
            return {}
        return {f"{CURVE_SETS[i]}_{metric}": [float(v) for v in values]
                for i, (_, metrics) in enumerate(sorted(results.items())[:len(CURVE_SETS)])
                for metric, values in metrics.items()}

    @staticmethod
    def model_bytes(model: Any) -> bytes:
        return bytes(model.get_booster().save_raw())


def _fit_on_cluster(data: FitData, params: dict[str, Any], *, seed: int, settings: Settings) -> Any:
    """``xgboost.dask`` on the configured cluster; returns the equivalent local scikit-learn model."""
    import tempfile
    from pathlib import Path

    import dask.dataframe as dd
    from xgboost import XGBClassifier, XGBRegressor
    from xgboost import dask as dxgb

    from flywheel.compute import cluster

    dask = cluster.client(settings)
    parts = settings.compute.xgboost_partitions or len(cluster.workers(dask))
    regression = data.task == "regression"
    estimator = dxgb.DaskXGBRegressor if regression else dxgb.DaskXGBClassifier
    model = estimator(**({"objective": OBJECTIVES[data.task]} | params), random_state=seed,
                      tree_method="hist", eval_metric=EVAL_METRICS[data.task])
    model.client = dask

    def frames(x: Any, y: Any) -> tuple[Any, Any]:
        return dd.from_pandas(x, npartitions=parts, sort=False), dd.from_pandas(y, npartitions=parts, sort=False)

    x_train, y_train = frames(data.x_train, data.y_train)
    x_val, y_val = frames(data.x_val, data.y_val)
    # xgboost.dask looks the client up with distributed.get_client() even when given one.
    with dask.as_current():
        model.fit(x_train, y_train, eval_set=[(x_train, y_train), (x_val, y_val)], verbose=False)
    local = (XGBRegressor if regression else XGBClassifier)(
        **({"objective": OBJECTIVES[data.task]} | params), random_state=seed, n_jobs=2, tree_method="hist",
        eval_metric=EVAL_METRICS[data.task])
    with tempfile.TemporaryDirectory(prefix="flywheel-xgb-") as tmp:
        path = Path(tmp) / "model.ubj"
        model.save_model(path)  # with the scikit-learn metadata (classes, estimator type)
        local.load_model(path)
    local.evals_result_ = model.evals_result()
    return local
