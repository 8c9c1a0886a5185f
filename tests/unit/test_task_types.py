"""Task types end to end in training, on small synthetic data: binary, multiclass, regression.

Each family that supports a task fits it and scores sanely; the gate and the selection follow
the metric's direction; unsupported families and unusable labels are clear errors; rows without
a label are counted and left out; training curves reach MLflow as step metrics.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import evaluation, families, registry, tuning
from flywheel.training.families.base import FitData
from flywheel.training.labels import LabelEncoding, LabelError
from flywheel.training.trainer import align_classes, select

pytestmark = pytest.mark.unit
CPU = Settings(torch_device="cpu")
GROUPS = ["north", "south", "east"]


def make_spec(task: str, *, label: str = "target", **training: object) -> PipelineSpec:
    """A small use case of another domain than fraud: rows of a sensor, grouped by site."""
    return PipelineSpec.model_validate({
        "name": "sensor", "owner": "tests", "model_name": "sensor-model", "task": task,
        "label": label,
        "dataset": {"name": "readings", "source": "{home}/x/ds={ds}", "timestamp": "ts", "key": ["site", "seq"],
                    "contract": {"columns": {
                        "ts": {"type": "datetime", "nullable": False}, "site": {"type": "int"},
                        "seq": {"type": "int"}, "a": {"type": "float"}, "b": {"type": "float"},
                        "group": {"type": "string", "allowed": GROUPS},
                        "target": {"type": "float"}}}},
        "features": {"entities": {"site": {"keys": ["site"], "aggregations": {
            "site_count_7d": {"fn": "count", "window": "7d"}}}},
            "request": {"a": {"fn": "value", "column": "a"}, "b": {"fn": "value", "column": "b"},
                        "group_code": {"fn": "category", "column": "group"}}},
        "training": {"split": {"train": 0.6, "validation": 0.2, "holdout": 0.2},
                     "candidates": {"xgboost": {}, "torch_mlp": {}}, **training},
        "monitoring": {"features": ["a", "b"]},
    })


def synthetic(task: str, n: int = 1500, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                      "group_code": rng.integers(0, 3, n).astype("float64")})
    x.loc[rng.random(n) < 0.05, "b"] = np.nan
    signal = 2.0 * x["a"] + np.where(x["group_code"] == 1, 1.5, 0.0) + 0.5 * x["b"].fillna(0)
    if task == "regression":
        y = 10 + 3 * signal + rng.normal(scale=0.5, size=n)
    elif task == "multiclass":
        y = pd.Series(np.digitize(signal + rng.normal(scale=0.4, size=n), [-1.0, 1.0]))  # 3 classes
    else:
        y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-(signal - 1)))).astype("int64"))
    return x, pd.Series(y, dtype="float64" if task == "regression" else "int64")


def fit_data(task: str) -> FitData:
    x, y = synthetic(task)
    cut = int(len(x) * 0.7)
    return FitData(x.iloc[:cut], y.iloc[:cut], x.iloc[cut:].reset_index(drop=True),
                   y.iloc[cut:].reset_index(drop=True), task=task,  # type: ignore[arg-type]
                   n_classes=3 if task == "multiclass" else 2, categorical={"group_code": 3})


FAST = {"xgboost": {"n_estimators": 25, "max_depth": 3}, "torch_mlp": {"epochs": 6, "hidden": [16], "lr": 0.01}}
CASES = [("binary", f) for f in ("logistic_regression", "majority", "xgboost", "torch_mlp")] + \
        [("multiclass", f) for f in ("logistic_regression", "majority", "xgboost", "torch_mlp")] + \
        [("regression", f) for f in ("mean", "linear", "xgboost", "torch_mlp")]


@pytest.mark.parametrize(("task", "name"), CASES, ids=[f"{t}-{f}" for t, f in CASES])
def test_every_family_fits_its_tasks_and_scores_sanely(task, name):
    data = fit_data(task)
    trained = families.get(name).train(data, FAST.get(name, {}), seed=1, settings=CPU)
    scores = trained.scores(data.x_val)
    y = data.y_val.to_numpy()
    got = evaluation.metrics(y, scores, task=task)
    assert set(evaluation.TASK_METRICS[task]) <= set(got)
    trivial = name in {"majority", "mean"}
    if task == "binary":
        assert scores.shape == (len(y),) and ((scores >= 0) & (scores <= 1)).all()
        assert got["roc_auc"] == pytest.approx(0.5) if trivial else got["roc_auc"] > 0.75
    elif task == "multiclass":
        assert scores.shape == (len(y), 3) and np.allclose(scores.sum(axis=1), 1)
        assert got["accuracy"] > (0.3 if trivial else 0.6)
        assert got["macro_f1"] < 0.4 if trivial else got["macro_f1"] > 0.5
        assert got["log_loss"] > 0
    else:
        assert scores.shape == (len(y),)
        assert got["r2"] < 0.05 if trivial else got["r2"] > 0.8
        assert got["rmse"] > 0 and got["mae"] <= got["rmse"]


def test_a_family_that_cannot_learn_the_task_is_a_clear_error():
    with pytest.raises(families.FamilyTaskError, match="'mean' does not support task 'binary'"):
        families.get("mean").train(fit_data("binary"), {}, seed=0, settings=CPU)
    with pytest.raises(families.FamilyTaskError,
                       match=r"training.baseline: family 'logistic_regression' does not support task 'regression'"):
        families.check(make_spec("regression", baseline="logistic_regression"))
    with pytest.raises(families.FamilyTaskError, match=r"training.candidates.majority"):
        families.check(make_spec("regression", candidates={"majority": {}}))
    # A regression spec that names no baseline gets the linear one; a binary one logistic regression.
    assert make_spec("regression").training.baseline == "linear"
    assert make_spec("binary").training.baseline == "logistic_regression"
    families.check(make_spec("multiclass", baseline="majority"))
    with pytest.raises(families.UnknownFamilyError, match="unknown model family 'lightgbm'"):
        families.get("lightgbm")


def test_families_are_entry_points_that_name_their_tasks():
    known = families.registered()
    assert {"logistic_regression", "majority", "mean", "linear", "xgboost", "torch_mlp"} <= set(known)
    for name in known:
        family = families.get(name)
        assert family.name == name and family.tasks <= {"binary", "multiclass", "regression"}


def test_gate_and_selection_follow_the_metric_direction():
    # rmse: lower is better
    assert registry.decide(challenger=1.0, baseline=2.0, champion=None, metric="rmse").promote
    assert not registry.decide(challenger=2.5, baseline=2.0, champion=None, metric="rmse").promote
    assert not registry.decide(challenger=1.0, baseline=2.0, champion=0.9, metric="rmse").promote
    assert not registry.decide(challenger=1.0, baseline=2.0, champion=1.05, min_improvement=0.1,
                               metric="rmse").promote
    assert registry.decide(challenger=0.8, baseline=2.0, champion=1.0, min_improvement=0.1,
                           metric="rmse").promote
    assert "rmse" in registry.decide(challenger=3.0, baseline=2.0, champion=None, metric="rmse").reason
    assert not registry.decide(challenger=float("nan"), baseline=2.0, champion=None, metric="rmse").promote
    # macro_f1: higher is better
    assert registry.decide(challenger=0.7, baseline=0.5, champion=None, metric="macro_f1").promote
    data = fit_data("regression")
    a = families.get("linear").train(data, {}, seed=0, settings=CPU)
    b = families.get("mean").train(data, {}, seed=0, settings=CPU)
    a.val_score, b.val_score = 1.0, 3.0
    assert select({"linear": a, "mean": b}, metric="rmse") is a
    assert select({"linear": a, "mean": b}, metric="r2") is b


def test_slice_regressions_follow_the_metric_direction():
    rng = np.random.default_rng(2)
    y = rng.normal(10, 2, 600)
    good = y + rng.normal(0, 0.5, 600)
    slices = evaluation.slice_columns(pd.DataFrame({"group": np.repeat(GROUPS, 200),
                                                    "size": rng.uniform(0, 100, 600)}), ["group", "size"])
    assert slices["size"].nunique() == 4 and slices["group"].nunique() == 3  # numbers: quantile buckets
    champion = evaluation.slice_metrics(slices, y, good, metric="rmse")
    worse = good.copy()
    worse[400:] += rng.normal(0, 3, 200)  # the "east" slice gets much worse
    challenger = evaluation.slice_metrics(slices, y, worse, metric="rmse")
    flagged = evaluation.slice_regressions(challenger, champion, tolerance=0.2, metric="rmse")
    assert any(f.startswith("group=east: rmse") for f in flagged)
    assert not any(f.startswith("group=north") for f in flagged)
    assert evaluation.slice_regressions(champion, challenger, tolerance=0.2, metric="rmse") == []


def test_slices_come_from_the_spec():
    assert evaluation.slice_names(make_spec("binary")) == ["group"]  # the category features' columns
    assert evaluation.slice_names(make_spec("binary", slices=["a", "site_count_7d"])) == ["a", "site_count_7d"]
    with pytest.raises(ValueError, match="training.slices: 'nope' is neither a contract column"):
        make_spec("binary", slices=["nope"])


def test_rows_without_a_label_are_counted_and_left_out():
    from flywheel.training.trainer import prepare

    spec = make_spec("regression")
    x, y = synthetic("regression", n=400)
    frame = x.assign(ts=pd.date_range("2026-01-01", periods=400, freq="h", tz="UTC"), site=1,
                     seq=range(400), group=np.array(GROUPS)[x["group_code"].astype(int)], target=y)
    frame.loc[[3, 50, 399], "target"] = np.nan
    prepared = prepare(spec, frame, lambda rows: rows[["a", "b", "group_code"]])
    assert prepared.counts["rows_label_null"] == 3
    assert sum(len(v) for v in prepared.y.values()) == 397
    assert all(len(prepared.x[k]) == len(prepared.y[k]) == len(getattr(prepared.split, k))
               for k in ("train", "validation", "holdout"))
    assert not any(v.isna().any() for v in prepared.y.values())


def test_labels_are_encoded_per_task_and_bad_ones_are_clear_errors():
    spec = make_spec("multiclass")
    encoding = LabelEncoding.fit(spec, pd.Series(["b", "a", "c", "a"]))
    assert encoding.classes == ("a", "b", "c") and encoding.n_classes == 3
    codes = encoding.encode(pd.Series(["c", "a", "zz"]))
    assert codes.iloc[:2].tolist() == [2.0, 0.0] and np.isnan(codes.iloc[2])  # unseen class: NaN
    assert LabelEncoding.fit(make_spec("binary"), pd.Series([True, False])).encode(
        pd.Series([True, False])).tolist() == [1, 0]
    with pytest.raises(LabelError, match="binary labels must be 0/1"):
        LabelEncoding.fit(make_spec("binary"), pd.Series([0, 1, 2]))
    with pytest.raises(LabelError, match="regression labels must be numbers"):
        LabelEncoding.fit(make_spec("regression"), pd.Series(["x", "1.5"]))
    with pytest.raises(LabelError, match="at least 2 classes"):
        LabelEncoding.fit(spec, pd.Series(["a", "a"]))


def test_loaded_model_returns_what_the_task_needs():
    for task, name in (("binary", "xgboost"), ("multiclass", "xgboost"), ("regression", "linear")):
        data = fit_data(task)
        trained = families.get(name).train(data, FAST.get(name, {}), seed=0, settings=CPU)
        classes = ["low", "mid", "high"] if task == "multiclass" else []
        columns = list(data.x_val.columns)
        loaded = registry.LoadedModel(name="m", version="1", family=name, model=trained.model, threshold=0.4,
                                      features=columns, scorer=trained.family, task=task, classes=classes)
        out = loaded.predict(data.x_val)
        again = loaded.predict_array(data.x_val[columns[::-1]].to_numpy(), columns[::-1])
        n = len(data.x_val)
        if task == "binary":
            assert set(out) == {"probability", "decision"} and out["probability"].shape == (n,)
            assert (out["decision"] == (out["probability"] >= 0.4)).all()
        elif task == "multiclass":
            assert out["probabilities"].shape == (n, 3) and set(out["class"]) <= set(classes)
            assert np.allclose(out["probability"], out["probabilities"].max(axis=1))
        else:
            assert set(out) == {"value"} and out["value"].shape == (n,)
            with pytest.raises(registry.TaskError):
                loaded.predict_proba(data.x_val)
        for key in out:
            np.testing.assert_allclose(np.asarray(again[key], dtype=float) if key != "class" else 0,
                                       np.asarray(out[key], dtype=float) if key != "class" else 0, rtol=1e-6)


def test_champion_probabilities_are_aligned_to_the_challengers_classes():
    scores = np.array([[0.2, 0.8], [0.6, 0.4]])
    aligned = align_classes(scores, ["b", "a"], ["a", "b", "c"])
    np.testing.assert_array_equal(aligned, [[0.8, 0.2, 0.0], [0.4, 0.6, 0.0]])


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A local MLflow tracking store (SQLite: MLflow 3.17 refuses new file stores)."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
    yield
    mlflow.set_tracking_uri(before)


@pytest.mark.parametrize(("task", "name", "curve"), [
    ("regression", "xgboost", "curve_val_rmse"), ("multiclass", "xgboost", "curve_val_mlogloss"),
    ("binary", "torch_mlp", "curve_val_loss"), ("regression", "torch_mlp", "curve_val_rmse"),
], ids=["xgb-regression", "xgb-multiclass", "torch-binary", "torch-regression"])
def test_training_curves_are_mlflow_step_metrics(tracking, task, name, curve):
    import mlflow

    spec = make_spec(task, candidates={name: {"params": FAST[name]}})
    data = fit_data(task)
    with mlflow.start_run() as run:
        trained = tuning.tune(families.get(name), spec.training.candidates[name], data, spec=spec, settings=CPU)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, curve)
    steps = [m.step for m in history]
    expected = FAST[name].get("n_estimators") or len(trained.curves()["train_loss"])
    assert steps == list(range(expected)) and expected > 1
    assert all(np.isfinite(m.value) for m in history)
    if name == "xgboost":  # the train curve falls round by round
        train = [m.value for m in mlflow.MlflowClient().get_metric_history(
            run.info.run_id, curve.replace("val", "train"))]
        assert train[-1] < train[0]


def test_a_training_run_and_its_children_share_the_use_cases_experiment_and_leave_no_global(
        tracking, tmp_path, monkeypatch):
    """``mlflow.set_experiment`` exported ``MLFLOW_EXPERIMENT_ID``: after a change of tracking
    store every later run of the process aimed at an id that store lacks (CI, 2026-12-03)."""
    import os

    import mlflow

    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    settings = Settings(home=tmp_path, mlflow_tracking_uri=mlflow.get_tracking_uri())
    first = registry.experiment_id("curves-use-case", settings)
    assert registry.experiment_id("curves-use-case", settings) == first != "0"  # found, not created twice
    with mlflow.start_run(experiment_id=first) as parent, registry.child_run("family") as child:
        pass
    assert child.info.experiment_id == parent.info.experiment_id == first
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ


def test_multiclass_classes_are_a_version_tag_format():
    encoding = LabelEncoding.fit(make_spec("multiclass"), pd.Series(np.array([3, 1, 2, 1])))
    assert json.loads(json.dumps(list(encoding.classes))) == [1, 2, 3]  # numpy ints become JSON ints


def test_integral_float_classes_are_recorded_as_ints():
    encoding = LabelEncoding.fit(make_spec("multiclass"), pd.Series([2.0, 0.0, 1.0, np.nan]))
    assert encoding.classes == (0, 1, 2) and encoding.encode(pd.Series([1.0, 2.0])).tolist() == [1.0, 2.0]
