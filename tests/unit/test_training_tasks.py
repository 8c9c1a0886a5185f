"""Task types end to end inside training: labels, every family per task, metrics, the gate's
direction, slices, training curves as MLflow step metrics, and spec checks of families."""

import numpy as np
import pandas as pd
import pytest
import yaml

from flywheel.core.config import Settings
from flywheel.core.spec import SpecError, load_spec_file
from flywheel.training import evaluation, families, tasks
from flywheel.training.families.base import FitData, permutation_importance
from flywheel.training.registry import decide
from flywheel.training.trainer import select, temporal_split

pytestmark = pytest.mark.unit
CPU = Settings(torch_device="cpu")
ROOT = __file__.rsplit("/tests/", 1)[0]


def _data(task: str, n: int = 3000, seed: int = 0) -> FitData:
    """Numeric features (with NaN) plus one category code; a label each task can learn."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    x.loc[rng.random(n) < 0.1, "b"] = np.nan
    x["code"] = rng.integers(-1, 5, n).astype("float64")
    signal = 2 * x["a"] + (x["code"] == 2) + x["c"] * x["d"]
    if task == "regression":
        y = signal + rng.normal(scale=0.3, size=n)
    elif task == "multiclass":
        y = pd.Series(np.digitize(signal + rng.normal(scale=0.3, size=n), [-1.0, 1.0]))
    else:
        y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-(signal - 1)))).astype("int64"))
    cut = int(n * 0.75)
    metric = tasks.TASK_METRICS[task][0]
    return FitData(x.iloc[:cut], y.iloc[:cut], x.iloc[cut:].reset_index(drop=True), y.iloc[cut:].reset_index(drop=True),
                   n_classes=3 if task == "multiclass" else 2, categorical={"code": 5}, metric=metric)


QUICK = {"xgboost": {"n_estimators": 20, "max_depth": 3}, "torch_mlp": {"epochs": 4, "hidden": [16, 8]}}
BASELINES = {"binary": ["logistic_regression", "majority"], "multiclass": ["logistic_regression", "majority"],
             "regression": ["linear_regression", "mean"]}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_every_family_learns_every_task_it_claims(task):
    data = _data(task)
    metric = data.metric
    shape = (len(data.x_val), 3) if task == "multiclass" else (len(data.x_val),)
    scores = {}
    for name in [*BASELINES[task], "xgboost", "torch_mlp"]:
        trained = families.get(name, task).train(data, QUICK.get(name, {}), seed=1, settings=CPU)
        out = trained.predict(data.x_val)
        assert out.shape == shape and np.isfinite(out).all(), name
        if task == "multiclass":
            assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5), name
        scores[name] = tasks.score(metric, data.y_val.to_numpy(), out)
        # the serving path (a float matrix) scores what the DataFrame path scores
        array = trained.family.predict_array(trained.model, data.x_val.to_numpy(), list(data.x_val.columns))
        assert np.allclose(array, out, atol=1e-6), name
    constant = BASELINES[task][1]
    for name in ["xgboost", "torch_mlp", BASELINES[task][0]]:
        assert tasks.improves(metric, scores[name], scores[constant]), (name, scores)


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_training_curves_per_round_and_epoch(task):
    data = _data(task, n=1500)
    xgb = families.get("xgboost", task).train(data, {"n_estimators": 7}, seed=1, settings=CPU)
    (name, values), = xgb.curves.items()
    assert name.startswith("val_") and len(values) == 7
    mlp = families.get("torch_mlp", task).train(data, {"epochs": 3, "patience": 10}, seed=1, settings=CPU)
    assert len(mlp.curves["train_loss"]) == 3 and len(mlp.curves[f"val_{data.metric}"]) == 3


def test_curves_are_mlflow_step_metrics(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from flywheel.training.tuning import log_curves

    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())  # MLflow's own file store: no DB migration
    try:
        with mlflow.start_run() as run:
            log_curves({"val_rmse": [3.0, 2.0, 1.5], "train_loss": [1.0, float("nan")]})
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "curve_val_rmse")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 3.0), (1, 2.0), (2, 1.5)]
        assert len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "curve_train_loss")) == 1
    finally:
        mlflow.set_tracking_uri("")


def test_xgboost_multiclass_and_regression_are_byte_reproducible():
    for task in ("multiclass", "regression"):
        data, xgb = _data(task, n=1000), families.get("xgboost", task)
        first, second = (xgb.fit(data, {"n_estimators": 10, "subsample": 0.8}, seed=7, settings=CPU)
                         for _ in range(2))
        assert xgb.model_bytes(first) == xgb.model_bytes(second)


def test_torch_regression_and_multiclass_are_deterministic_on_cpu():
    for task in ("multiclass", "regression"):
        data, mlp = _data(task, n=1000), families.get("torch_mlp", task)
        first, second = (mlp.fit(data, {"epochs": 2}, seed=3, settings=CPU) for _ in range(2))
        assert mlp.state_bytes(first) == mlp.state_bytes(second)


def test_labels_encode_per_task():
    assert tasks.classes_of("binary", pd.Series([0, 1, None, 1])) == [0, 1]
    assert tasks.classes_of("binary", pd.Series([True, False])) == [False, True]
    assert tasks.classes_of("binary", pd.Series(["yes", "no", "yes"])) == ["no", "yes"]
    assert tasks.classes_of("multiclass", pd.Series(["b", "a", "c", "a"])) == ["a", "b", "c"]
    assert tasks.classes_of("regression", pd.Series([1.5, 2.0])) == []
    assert tasks.encode("multiclass", pd.Series(["c", "a"]), ["a", "b", "c"]).tolist() == [2, 0]
    assert tasks.encode("binary", pd.Series([True, False]), [0, 1]).tolist() == [1, 0]
    with pytest.raises(tasks.LabelError, match="exactly two"):
        tasks.classes_of("binary", pd.Series([0, 1, 2]))
    with pytest.raises(tasks.LabelError, match="task: binary"):
        tasks.classes_of("multiclass", pd.Series(["a", "b"]))
    with pytest.raises(tasks.LabelError, match=r"\['z'\]"):
        tasks.encode("multiclass", pd.Series(["a", "z"]), ["a", "b", "c"])
    with pytest.raises(tasks.LabelError, match="do not occur in the training split"):
        tasks.check_classes_trained("multiclass", pd.Series([0, 2, 0]), ["a", "b", "c"])


def test_metrics_and_decisions_per_task():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]])
    m = evaluation.task_metrics("multiclass", y, proba, threshold=float("nan"), costs=evaluation.Costs(1, 1),
                                precision_target=0.5)
    assert set(m) == {"log_loss", "macro_f1", "accuracy"} and m["accuracy"] == 0.75
    assert tasks.decisions("multiclass", proba, classes=["x", "y", "z"], threshold=0.5).tolist() == ["x", "y", "z", "x"]
    r = evaluation.regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert r["mae"] == pytest.approx(1 / 3) and r["rmse"] == pytest.approx(np.sqrt(1 / 3)) and r["r2"] == pytest.approx(0.5)
    assert tasks.decisions("binary", np.array([0.2, 0.6]), classes=[0, 1], threshold=0.5).tolist() == [False, True]
    outputs = tasks.output_columns("multiclass", proba, classes=["x", "y", "z"])
    assert outputs["prediction"].tolist() == ["x", "y", "z", "x"] and outputs["probability"][0] == 0.8


def test_gate_follows_the_metric_direction():
    assert decide(challenger=0.8, baseline=1.0, champion=None, metric="rmse").promote
    assert not decide(challenger=1.1, baseline=1.0, champion=None, metric="rmse").promote
    assert not decide(challenger=0.8, baseline=1.0, champion=0.85, min_improvement=0.1, metric="rmse").promote
    assert decide(challenger=0.7, baseline=1.0, champion=0.85, min_improvement=0.1, metric="rmse").promote
    assert not decide(challenger=float("nan"), baseline=0.3, champion=None).promote
    assert decide(challenger=0.6, baseline=0.4, champion=None, metric="macro_f1").promote


def test_selection_follows_the_metric_direction():
    data = _data("regression", n=800)
    a = families.get("linear_regression", "regression").train(data, {}, seed=1, settings=CPU)
    b = families.get("mean", "regression").train(data, {}, seed=1, settings=CPU)
    a.val_score, b.val_score = 2.0, 1.0
    assert select({"a": a, "b": b}, metric="rmse") is b
    assert select({"a": a, "b": b}, metric="r2") is a


def test_slices_from_the_spec_and_regressions_in_the_metric_direction(spec):
    frame = pd.DataFrame({"merchant_category": ["grocery", "fuel"] * 50, "amount": np.linspace(1, 2000, 100),
                          "country": "US", "user_txn_count_7d": [np.nan, 3.0] * 50})
    slices = evaluation.slice_columns(frame, spec)
    assert list(slices.columns) == list(spec.training.slices)
    assert set(slices["user_tenure"]) == {"missing", "present"}
    assert "[1000.0, inf)" in set(slices["amount_bucket"])
    y = np.linspace(0, 10, 100)
    good = evaluation.slice_metrics(slices[["merchant_category"]], y, y, metric="rmse", task="regression")
    bad_scores = y.copy()
    bad_scores[frame["merchant_category"].eq("fuel").to_numpy()] += 3
    bad = evaluation.slice_metrics(slices[["merchant_category"]], y, bad_scores, metric="rmse", task="regression")
    flagged = evaluation.slice_regressions(bad, good, tolerance=0.5, metric="rmse")
    assert len(flagged) == 1 and flagged[0].startswith("merchant_category=fuel") and ">" in flagged[0]
    default = evaluation.default_slices(spec)
    assert spec.label.column not in {s.column for s in default.values()} and default


def test_permutation_importance_for_a_regression():
    data = _data("regression", n=1500)
    model = families.get("linear_regression", "regression").train(data, {}, seed=1, settings=CPU)
    importance = permutation_importance(model, data.x_val, data.y_val, metric="rmse", seed=0)
    assert importance["a"] > 0.5 and abs(importance["b"]) < 0.1


def test_temporal_split_without_a_key_is_independent_of_row_order(spec):
    rng = np.random.default_rng(0)
    ts = pd.to_datetime("2026-01-01", utc=True) + pd.to_timedelta(rng.integers(0, 48, 400), unit="h")
    frame = pd.DataFrame({"event_timestamp": ts, "v": rng.normal(size=400), "is_fraud": 0})
    keyless = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"key": None})})
    first = temporal_split(frame, keyless)
    again = temporal_split(frame.sample(frac=1, random_state=3), keyless)
    assert first.holdout.equals(again.holdout) and first.train.equals(again.train)


def _spec_with(tmp_path, **training):
    raw = yaml.safe_load(open(f"{ROOT}/models/fraud.yaml").read())
    raw["training"].update(training)
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, raw


def test_spec_checks_families_against_the_task_and_slice_columns(tmp_path):
    path, raw = _spec_with(tmp_path, baseline="mean")
    with pytest.raises(SpecError, match=r"training.baseline: model family 'mean' does not do binary"):
        load_spec_file(path)
    path, raw = _spec_with(tmp_path, slices={"x": {"column": "nope"}})
    with pytest.raises(SpecError, match=r"training.slices.x.column: 'nope'"):
        load_spec_file(path)
    raw["training"].pop("slices")
    raw["training"].pop("baseline", None)
    raw["task"], raw["training"]["metric"] = "regression", "rmse"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec_file(path)  # candidates xgboost/torch_mlp do regression; the baseline defaults
    assert families.baseline_name(spec.training.baseline, spec.task) == "linear_regression"


def _rides_spec(tmp_path, task: str, label: dict):
    body = {
        "name": "rides", "model_name": "rides", "owner": "t", "task": task, "label": label,
        "dataset": {"name": "rides", "source": "{home}/x/ds={ds}", "timestamp": "ts", "key": ["city", "n"],
                    "contract": {"columns": {"city": {"type": "string"}, "n": {"type": "int"},
                                             "minutes": {"type": "float"}, "dist": {"type": "float"},
                                             "kind": {"type": "string", "allowed": ["a", "b", "c"]},
                                             "ts": {"type": "datetime"}}}},
        "features": {"entities": {"city": {"keys": ["city"], "aggregations": {
                         "city_mean_7d": {"fn": "mean", "column": "minutes", "window": "7d"}}}},
                     "request": {"dist": {"fn": "value", "column": "dist"}, "hour": {"fn": "hour"},
                                 "kind_code": {"fn": "category", "column": "kind"}}},
        "training": {"split": {"train": 0.6, "validation": 0.2, "holdout": 0.2},
                     "candidates": {"xgboost": {"params": {"n_estimators": 10}}}},
        "monitoring": {"features": []},
    }
    path = tmp_path / "rides.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_spec_file(path)


def _rides(n: int = 1200) -> pd.DataFrame:
    rng = np.random.default_rng(5)
    dist = rng.gamma(2.0, 2.0, n)
    minutes = 3 * dist + rng.normal(0, 1, n)
    minutes[rng.random(n) < 0.05] = np.nan  # not known yet: the label is null
    return pd.DataFrame({"city": rng.choice(["x", "y"], n), "n": np.arange(n), "dist": dist, "minutes": minutes,
                         "kind": rng.choice(["a", "b", "c", "zz"], n),
                         "ts": pd.to_datetime("2026-01-01", utc=True) + pd.to_timedelta(rng.integers(0, 240, n), "h"),
                         "city_mean_7d": rng.normal(10, 1, n)})


@pytest.mark.parametrize(("task", "label", "classes"), [
    ("regression", {"column": "minutes"}, []),
    ("multiclass", {"expr": "CASE WHEN minutes < 8 THEN 'short' WHEN minutes < 15 THEN 'mid' "
                            "WHEN minutes IS NOT NULL THEN 'long' END", "name": "length"}, ["long", "mid", "short"]),
    ("binary", {"expr": "minutes > 12", "name": "late"}, [0, 1]),
])
def test_labelled_rows_split_and_matrices_for_each_task(tmp_path, task, label, classes):
    from flywheel.training.dataset import labelled, matrices

    spec = _rides_spec(tmp_path, task, label)
    frame = _rides()
    data = labelled(spec, frame)
    assert data.null_labels == int(frame["minutes"].isna().sum()) > 0  # counted, and left out
    assert len(data.frame) == len(frame) - data.null_labels and data.frame[spec.target].notna().all()
    assert data.classes == classes
    m = matrices(spec, temporal_split(data.frame, spec), data.classes)
    assert list(m.x["train"].columns) == m.features and m.fit.categorical == {"kind_code": 3}
    assert sum(len(v) for v in m.y.values()) == len(data.frame)
    assert m.fit.metric == tasks.TASK_METRICS[task][0] and m.fit.n_classes == len(classes)
    holdout = m.y["holdout"].to_numpy()
    scores = {name: tasks.score(m.fit.metric, holdout, families.get(name, task).train(
                  m.fit, QUICK.get(name, {}), seed=0, settings=CPU).predict(m.x["holdout"]))
              for name in ["xgboost", *BASELINES[task]]}
    constant = BASELINES[task][1]
    assert tasks.improves(m.fit.metric, scores["xgboost"], scores[constant]), scores


def test_no_labelled_row_is_a_clear_error(tmp_path):
    from flywheel.training.dataset import TrainingDataError, labelled

    spec = _rides_spec(tmp_path, "regression", {"column": "minutes"})
    with pytest.raises(TrainingDataError, match="none of the 10 rows has a label"):
        labelled(spec, _rides(10).assign(minutes=np.nan))
