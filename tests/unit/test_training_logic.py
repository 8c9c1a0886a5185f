import numpy as np
import pandas as pd
import pytest

from flywheel.core.config import Settings
from flywheel.core.spec import SpecError, load_spec_file
from flywheel.training import families
from flywheel.training.families.base import FitData
from flywheel.training.registry import decide
from flywheel.training.trainer import select, temporal_split

pytestmark = pytest.mark.unit


def test_gate_requires_beating_baseline_and_champion():
    assert decide(challenger=0.4, baseline=0.3, champion=None).promote
    assert not decide(challenger=0.25, baseline=0.3, champion=None).promote
    assert not decide(challenger=0.4, baseline=0.3, champion=0.45).promote
    assert not decide(challenger=0.45, baseline=0.3, champion=0.45).promote  # a tie keeps the champion
    assert not decide(challenger=0.46, baseline=0.3, champion=0.45, min_improvement=0.02).promote
    assert "baseline" in decide(challenger=0.2, baseline=0.3, champion=None).reason
    sliced = decide(challenger=0.5, baseline=0.3, champion=0.4, regressions=["country=NG: 0.2 < 0.4"])
    assert not sliced.promote and "country=NG" in sliced.reason


def test_temporal_split_never_leaks_the_future(spec):
    ts = pd.date_range("2026-01-01", periods=1000, freq="h", tz="UTC")
    frame = pd.DataFrame({"event_timestamp": ts[::-1], "transaction_id": range(1000), "is_fraud": 0})
    split = temporal_split(frame, spec)
    assert split.train["event_timestamp"].max() < split.validation["event_timestamp"].min()
    assert split.validation["event_timestamp"].max() < split.holdout["event_timestamp"].min()
    assert len(split.train) + len(split.validation) + len(split.holdout) == 1000


CATEGORICAL = {"cat_a_code": 8, "cat_b_code": 4}


def test_temporal_split_without_a_key_does_not_depend_on_row_order(spec):
    rng = np.random.default_rng(0)
    ts = pd.to_datetime("2026-01-01", utc=True) + pd.to_timedelta(rng.integers(0, 48, 400), unit="h")
    frame = pd.DataFrame({"event_timestamp": ts, "v": rng.normal(size=400), "is_fraud": 0})
    keyless = spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"key": None})})
    first = temporal_split(frame, keyless)
    again = temporal_split(frame.sample(frac=1, random_state=3), keyless)
    assert first.train.equals(again.train) and first.holdout.equals(again.holdout)


def _data(n: int = 4000, seed: int = 0) -> FitData:
    """Tabular data shaped like a model matrix: numeric (with NaN) plus two category codes."""
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 5)), columns=list("abcde"))
    x.loc[rng.random(n) < 0.1, "b"] = np.nan
    x["cat_a_code"] = rng.integers(0, 8, n).astype("float64")
    x["cat_b_code"] = rng.integers(-1, 4, n).astype("float64")
    logit = 2 * x["a"] - 1.5 * (x["cat_a_code"] == 3) + x["c"] * x["d"] - 3
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"))
    cut = int(n * 0.75)
    return FitData(x.iloc[:cut], y.iloc[:cut], x.iloc[cut:], y.iloc[cut:], categorical=CATEGORICAL)


CPU = Settings(torch_device="cpu")


def test_xgboost_training_is_byte_reproducible():
    data, xgb = _data(), families.get("xgboost")
    params = {"n_estimators": 30, "max_depth": 3, "subsample": 0.8, "colsample_bytree": 0.8}
    first = xgb.fit(data, params, seed=7, settings=CPU)
    second = xgb.fit(data, params, seed=7, settings=CPU)
    assert xgb.model_bytes(first) == xgb.model_bytes(second)


def test_torch_mlp_is_deterministic_on_cpu_and_learns():
    from sklearn.metrics import roc_auc_score

    data, mlp = _data(), families.get("torch_mlp")
    params = {"epochs": 4, "hidden": [16, 8], "lr": 0.01}
    first = mlp.fit(data, params, seed=3, settings=CPU)
    second = mlp.fit(data, params, seed=3, settings=CPU)
    assert mlp.state_bytes(first) == mlp.state_bytes(second)
    proba = mlp.predict_proba(first, data.x_val)
    assert np.array_equal(proba, mlp.predict_proba(second, data.x_val))
    assert proba.shape == (len(data.x_val),) and np.all((proba >= 0) & (proba <= 1))
    assert roc_auc_score(data.y_val, proba) > 0.75
    other = mlp.fit(data, params, seed=4, settings=CPU)
    assert mlp.state_bytes(other) != mlp.state_bytes(first)  # the seed matters: the check can fail


def test_torch_mlp_scores_unseen_categories_and_missing_values():
    data, mlp = _data(), families.get("torch_mlp")
    model = mlp.fit(data, {"epochs": 1}, seed=1, settings=CPU)
    assert model.categorical == CATEGORICAL  # embeddings for the featurizer's category codes only
    odd = data.x_val.head(4).copy()
    odd["cat_a_code"] = [99, -1, np.nan, 2]
    odd["a"] = np.nan
    assert np.isfinite(mlp.predict_proba(model, odd)).all()


def test_cuda_demanded_without_a_gpu_is_a_clear_error():
    import torch

    from flywheel.training.families.torch_mlp import TorchDeviceError, device

    assert device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert device("cuda") == "cuda" and device("auto") == "cuda"
    else:
        assert device("auto") == "cpu"
        with pytest.raises(TorchDeviceError, match="FLYWHEEL_TORCH_DEVICE"):
            device("cuda")


def test_selection_uses_validation_not_holdout():
    data = _data()
    a = families.get("xgboost").train(data, {"n_estimators": 5}, seed=1, settings=CPU)
    b = families.get("torch_mlp").train(data, {"epochs": 1}, seed=1, settings=CPU)
    a.val_score, b.val_score = 0.3, 0.5
    assert select({"xgboost": a, "torch_mlp": b}) is b
    b.val_score = 0.3  # a tie goes to the first candidate in spec order
    assert select({"xgboost": a, "torch_mlp": b}) is a


def test_spec_rejects_unknown_families_and_bad_search_ranges(tmp_path, spec):
    import yaml

    raw = yaml.safe_load(open(spec_path := tmp_path / "x.yaml", "w") and
                         (open(__file__.rsplit("/tests/", 1)[0] + "/models/fraud.yaml").read()))
    raw["training"]["candidates"]["lightgbm"] = {}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="unknown model family 'lightgbm'"):
        load_spec_file(spec_path)
    del raw["training"]["candidates"]["lightgbm"]
    raw["training"]["candidates"]["xgboost"]["search"]["max_depth"] = {"type": "int", "low": 6, "high": 2}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"training.candidates.xgboost.search.max_depth.*low < high"):
        load_spec_file(spec_path)
