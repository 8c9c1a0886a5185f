import numpy as np
import pandas as pd
import pytest

from flywheel.training.evaluation import (
    Costs,
    calibration_error,
    cost_threshold,
    expected_cost,
    recall_at_precision,
    slice_metrics,
    slice_regressions,
    write_report,
)

pytestmark = pytest.mark.unit
RNG = np.random.default_rng(3)
Y = (RNG.random(4000) < 0.05).astype(int)
P = np.clip(0.03 + 0.5 * Y + RNG.normal(0, 0.15, 4000), 0, 1)


def test_cost_threshold_minimises_expected_cost():
    costs = Costs(false_positive=1, false_negative=50)
    best = cost_threshold(Y, P, costs)
    assert all(expected_cost(Y, P, best, costs) <= expected_cost(Y, P, t, costs) for t in np.linspace(0, 1, 41))
    # a missed fraud that costs more pushes the threshold down
    assert cost_threshold(Y, P, Costs(1, 500)) <= cost_threshold(Y, P, Costs(1, 5))


def test_recall_at_precision_and_calibration():
    assert recall_at_precision(Y, Y.astype(float), 0.9) == 1.0
    assert 0 <= recall_at_precision(Y, P, 0.5) <= 1
    calibrated = np.full(len(Y), Y.mean())
    assert calibration_error(Y, calibrated) < 0.01
    assert calibration_error(Y, np.ones(len(Y))) > 0.9


def test_slice_regressions_flag_only_slices_beyond_tolerance():
    slices = pd.DataFrame({"country": np.where(np.arange(len(Y)) % 2 == 0, "US", "NG")})
    good = slice_metrics(slices, Y, P)
    worse_ng = P.copy()
    worse_ng[slices["country"].eq("NG").to_numpy()] = RNG.random((slices["country"] == "NG").sum())
    bad = slice_metrics(slices, Y, worse_ng)
    assert slice_regressions(good, good, tolerance=0.0) == []
    flagged = slice_regressions(bad, good, tolerance=0.05)
    assert len(flagged) == 1 and flagged[0].startswith("country=NG")


def test_report_has_plots_and_tables(tmp_path):
    slices = slice_metrics(pd.DataFrame({"country": ["US"] * len(Y)}), Y, P)
    path = write_report(tmp_path, y=Y, pred=P, baseline=P * 0.5, metrics_={"candidate": {"pr_auc": 0.5}},
                        slices=slices, importance={"amount": 3.0}, threshold=0.3)
    text = path.read_text()
    assert "pr_curve.png" in text and "country" in text and "amount" in text
    assert (tmp_path / "pr_curve.png").stat().st_size > 1000 and (tmp_path / "calibration.png").exists()


def test_task_metrics_and_reports_for_multiclass_and_regression(tmp_path):
    from flywheel.training.evaluation import metrics, score

    y = RNG.integers(0, 3, 300)
    perfect = np.eye(3)[y]
    got = metrics(y, perfect * 0.98 + 0.02 / 3, task="multiclass")
    assert got["accuracy"] == 1.0 and got["macro_f1"] == 1.0 and 0 < got["log_loss"] < 0.1
    uniform = metrics(y, np.full((300, 3), 1 / 3), task="multiclass")
    assert uniform["log_loss"] == pytest.approx(np.log(3))
    value = RNG.normal(5, 2, 300)
    reg = metrics(value, value + 1.0, task="regression")
    assert reg["rmse"] == pytest.approx(1.0) and reg["mae"] == pytest.approx(1.0) and reg["r2"] < 1
    assert score("r2", value, value) == 1.0 and np.isnan(score("pr_auc", np.zeros(5), np.ones(5)))
    slices = slice_metrics(pd.DataFrame({"g": ["a"] * 300}), value, value + 1.0, metric="rmse")
    path = write_report(tmp_path / "r", y=value, pred=value + 1.0, baseline=value * 0, metrics_={"candidate": reg},
                        slices=slices, importance={"x": 0.5}, threshold=float("nan"), task="regression",
                        metric="rmse")
    assert "rmse" in path.read_text() and (tmp_path / "r" / "predicted_vs_actual.png").exists()
    path = write_report(tmp_path / "m", y=y, pred=perfect, baseline=perfect, metrics_={"candidate": got},
                        slices=slices.iloc[:0], importance={}, threshold=float("nan"), task="multiclass",
                        metric="macro_f1", classes=["x", "y", "z"])
    assert "Confusion matrix" in path.read_text() and "| x |" in path.read_text()
