import numpy as np
import pandas as pd
import pytest

from flywheel.registry import decide
from flywheel.training import temporal_split

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


def test_xgboost_training_is_reproducible():
    from flywheel.training import fit_xgboost

    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(3000, 6)), columns=list("abcdef"))
    y = pd.Series((x["a"] + rng.normal(size=3000) > 1.5).astype(int))
    params = {"n_estimators": 30, "max_depth": 3, "subsample": 0.8, "colsample_bytree": 0.8}
    first = fit_xgboost(x, y, params=params, seed=7)
    second = fit_xgboost(x, y, params=params, seed=7)
    assert first.get_booster().save_raw() == second.get_booster().save_raw()
