"""Pure parts of the monitoring checks and the simulation's bookkeeping."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from examples.fraud.generator import DriftKind
from examples.fraud.simulation import CONCEPT, COVARIATE, STABLE, DayOutcome, Scenario, SimulationResult
from flywheel.core.config import PROJECT_ROOT
from flywheel.core.spec import ColumnRule, PerformanceSpec, PipelineSpec, load_spec_file
from flywheel.monitoring.checks import (
    Champion,
    Check,
    _labelled,
    _mismatches,
    drift_section,
    holdout_metrics,
    label_keys,
    metric_verdict,
    monitored_metric,
    performance_check,
    performance_scores,
    performance_snapshot,
    skew_check,
    target_drift,
)

pytestmark = pytest.mark.unit


def test_mismatch_is_a_difference_beyond_tolerance_or_a_one_sided_missing_value():
    served = np.array([[1.0, np.nan, 3.0, np.nan, 5.0]])
    offline = np.array([[1.0 + 1e-9, np.nan, 3.1, 2.0, 5.0]])
    assert _mismatches(served, offline, rel_tol=1e-6, abs_tol=1e-6).tolist() == [[False, False, True, True, False]]


def test_check_alert_follows_its_status():
    assert Check("skew", "alert", "x", {"rows": 3}).to_dict() == {"status": "alert", "alert": True, "reason": "x",
                                                                  "rows": 3}
    assert not Check("performance", "insufficient_data", "few labels").alert


def test_drift_section_flattens_column_scores():
    drift = {"status": "ok", "drift_detected": True, "drift_share": 0.5, "rows": 10, "html_uri": "s3://r/d.html",
             "drifted_columns": ["amount"], "prediction_drift_score": 0.2,
             "column_scores": {"amount": {"score": 0.4, "method": "wasserstein", "threshold": 0.1, "drifted": True}}}
    section = drift_section(drift)
    assert section["alert"] and section["status"] == "alert" and section["column_scores"] == {"amount": 0.4}


def outcome(day: date, phase: str, alerts: list[str], action: str = "no_signal") -> DayOutcome:
    return DayOutcome(day=day.isoformat(), phase=phase, drift="none", requests=1, served_by=["1"], drift_share=0.0,
                      drift_detected="drift" in alerts, pr_auc=None, pr_auc_drop=None, performance="ok", skew=0.0,
                      alerts=alerts, action=action, reason="", champion="1")


def test_scenario_phases_and_detection_delays():
    scenario = Scenario(start=date(2026, 1, 1), history_days=2, phases=(
        (STABLE, 2, frozenset()), (COVARIATE, 1, frozenset({DriftKind.AMOUNT_SHIFT})),
        (CONCEPT, 3, frozenset({DriftKind.NEW_PATTERN}))))
    assert scenario.first_day == date(2026, 1, 3) and scenario.last_day == date(2026, 1, 8)
    assert scenario.phase_of(date(2026, 1, 2)) is None and scenario.phase_of(date(2026, 1, 6)).name == CONCEPT
    days = [scenario.first_day + timedelta(days=i) for i in range(6)]
    result = SimulationResult(scenario, [
        outcome(days[0], STABLE, []), outcome(days[1], STABLE, ["performance"]),
        outcome(days[2], COVARIATE, ["drift"], "triggered"), outcome(days[3], CONCEPT, []),
        outcome(days[4], CONCEPT, []), outcome(days[5], CONCEPT, ["performance"])])
    assert result.detection_delay(COVARIATE, "drift") == 0
    assert result.detection_delay(CONCEPT, "performance") == 2
    assert result.detection_delay(CONCEPT, "skew") is None
    assert result.false_alarms() == [days[1].isoformat()]
    assert result.to_dict()["detection_delay_days"] == {"covariate_shift (drift)": 0, "concept_shift (performance)": 2}


def test_cli_teaches_the_monitoring_commands():
    from typer.testing import CliRunner

    from flywheel.cli import app

    for command, words in (("monitoring", ["PR-AUC", "skew", "exporter"]), ("demo", ["make demo", "examples.demo"])):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "160"})
        assert result.exit_code == 0 and all(w in result.output for w in words), result.output


# ---- performance on delayed labels, per task --------------------------------------------------


@pytest.fixture(scope="module")
def fraud() -> PipelineSpec:
    return load_spec_file(PROJECT_ROOT / "models" / "fraud.yaml")


def as_task(spec: PipelineSpec, task: str, **performance: object) -> PipelineSpec:
    """The fraud spec re-typed as another task (the checks read only the task, label and keys)."""
    monitoring = spec.monitoring.model_copy(update={"performance": PerformanceSpec.model_validate(performance)})
    training = spec.training.model_copy(update={"metric": None})
    return spec.model_copy(update={"task": task, "monitoring": monitoring, "training": training})


def test_binary_scores_are_the_gate_metrics_on_the_logged_probability(fraud: PipelineSpec) -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = pd.Series((rng.random(400) < 0.2).astype(int))
    logged = pd.DataFrame({"probability": np.clip(y * 0.4 + rng.random(400) * 0.6, 0, 1)})
    scores = performance_scores(fraud, y, logged, threshold=0.5)
    assert scores["pr_auc"] == pytest.approx(average_precision_score(y, logged["probability"]))
    assert scores["roc_auc"] == pytest.approx(roc_auc_score(y, logged["probability"]))
    assert {"recall_at_precision", "expected_cost", "calibration_error"} <= set(scores)


def test_multiclass_scores_compare_the_predicted_class_with_the_label(fraud: PipelineSpec) -> None:
    spec = as_task(fraud, "multiclass")
    y = pd.Series([0, 1, 2, 2, 1, 0])  # curated labels in their own type, the log's class as text
    logged = pd.DataFrame({"predicted_class": ["0", "1", "2", "1", "1", "2"], "probability": 0.6})
    scores = performance_scores(spec, y, logged, threshold=0.5)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    # per class F1: 0 -> 2/3 (1 of 2 found, 1 predicted), 1 -> 0.8, 2 -> 0.5
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0.5) / 3)
    assert scores["log_loss"] is None and scores["classes"] == 3


def test_regression_scores_are_rmse_mae_and_r2(fraud: PipelineSpec) -> None:
    spec = as_task(fraud, "regression")
    y = pd.Series([1.0, 2.0, 3.0, 4.0])
    logged = pd.DataFrame({"value": [1.0, 2.0, 3.0, 6.0]})
    scores = performance_scores(spec, y, logged, threshold=0.5)
    assert scores["rmse"] == pytest.approx(1.0) and scores["mae"] == pytest.approx(0.5)
    assert scores["r2"] == pytest.approx(1 - 4 / 5)
    assert performance_scores(spec, pd.Series([2.0, 2.0]), pd.DataFrame({"value": [1.0, 3.0]}),
                              threshold=0.5)["r2"] is None


def test_the_alert_rule_follows_the_metric_direction() -> None:
    cfg = PerformanceSpec(max_metric_drop=0.1)
    assert metric_verdict("macro_f1", 0.75, 0.8, cfg)[0] == "ok"
    status, reason, facts = metric_verdict("macro_f1", 0.65, 0.8, cfg)
    assert status == "alert" and facts["metric_drop"] == pytest.approx(0.15) and "worse" in reason
    # RMSE: higher is worse; lower than the holdout is an improvement, never an alert
    status, _, facts = metric_verdict("rmse", 3.2, 3.0, PerformanceSpec(max_metric_drop=0.1))
    assert status == "alert" and facts["metric_drop"] == pytest.approx(0.2) and facts["lower_is_better"]
    assert metric_verdict("rmse", 1.0, 3.0, cfg)[0] == "ok"
    # the limit: a minimum for higher-is-better, a maximum for lower-is-better metrics
    assert metric_verdict("pr_auc", 0.1, None, PerformanceSpec(metric_limit=0.15))[0] == "alert"
    assert metric_verdict("rmse", 5.0, None, PerformanceSpec(metric_limit=4.0))[0] == "alert"
    assert metric_verdict("rmse", 3.0, None, PerformanceSpec(metric_limit=4.0))[1].endswith("nothing to compare")
    # binary keeps its named fields (dashboards, the simulation)
    assert metric_verdict("pr_auc", 0.5, 0.7, cfg)[2]["pr_auc_drop"] == pytest.approx(0.2)


def test_the_monitored_metric_is_the_tasks(fraud: PipelineSpec) -> None:
    assert monitored_metric(fraud) == "pr_auc"
    assert monitored_metric(as_task(fraud, "multiclass")) == "macro_f1"
    assert monitored_metric(as_task(fraud, "regression")) == "rmse"
    assert monitored_metric(as_task(fraud, "regression", metric="r2")) == "r2"
    with pytest.raises(ValueError, match=r"monitoring.performance.metric 'pr_auc' is not a regression metric"):
        monitored_metric(as_task(fraud, "regression", max_pr_auc_drop=0.1))


def test_pr_auc_names_are_the_binary_spelling_of_the_task_neutral_fields() -> None:
    old = PerformanceSpec.model_validate({"max_pr_auc_drop": 0.2, "min_pr_auc": 0.1})
    assert (old.metric, old.max_metric_drop, old.metric_limit) == ("pr_auc", 0.2, 0.1)
    with pytest.raises(ValueError, match="one spelling"):
        PerformanceSpec.model_validate({"max_pr_auc_drop": 0.2, "max_metric_drop": 0.1})


def test_labels_join_on_the_dataset_key_columns_as_text(fraud: PipelineSpec) -> None:
    contract = fraud.dataset.contract.model_copy(update={"columns": {
        **fraud.dataset.contract.columns, "shop": ColumnRule(type="int")}})
    dataset = fraud.dataset.model_copy(update={"key": ["shop", "event_timestamp"], "contract": contract})
    spec = as_task(fraud, "regression").model_copy(update={
        "dataset": dataset, "monitoring": fraud.monitoring.model_copy(update={"labels": None})})
    assert label_keys(spec) == ["shop", "event_timestamp"]
    logs = pd.DataFrame({"shop": ["1", "2", "3", "4"], "event_timestamp": ["a", "a", "a", "a"],
                         "model_version": ["7", "7", "7", "6"], "value": [1.0, 2.0, 3.0, 4.0]})
    labels = pd.DataFrame({"shop": [1, 2, 3, 4], "event_timestamp": ["a", "a", "a", "a"],
                           "__label": [1.5, None, 2.5, 9.0]})
    labels = labels.assign(shop=labels["shop"].astype(str))  # arrived_labels' text keys
    joined, counts = _labelled(spec, logs, labels, version="7")
    assert joined["shop"].tolist() == ["1", "3"] and joined["__label"].tolist() == [1.5, 2.5]
    assert counts == {"logged_rows": 4, "champion_rows": 3, "unlabelled_rows": 1, "labelled_rows": 2,
                      "label_coverage": pytest.approx(2 / 3)}


def test_a_key_less_dataset_without_a_label_feed_is_not_applicable(fraud: PipelineSpec) -> None:
    spec = fraud.model_copy(update={"dataset": fraud.dataset.model_copy(update={"key": None}),
                                    "monitoring": fraud.monitoring.model_copy(update={"labels": None})})
    champion = Champion(version="1", threshold=0.5, holdout={}, window_end=None, registered_at=None)
    check = performance_check(spec, date(2026, 1, 1), champion=champion)
    assert check.status == "not_applicable" and "no key columns" in check.reason
    assert skew_check(spec, date(2026, 1, 1)).status == "not_applicable"


def test_holdout_metrics_are_read_from_the_training_run() -> None:
    got = holdout_metrics({"holdout_pr_auc": 0.6, "val_pr_auc": 0.7, "rmse": 3.0, "holdout_macro_f1": 0.5})
    assert got == {"pr_auc": 0.6, "rmse": 3.0, "macro_f1": 0.5}


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_evidently_reports_each_task_with_its_preset(fraud: PipelineSpec, task: str) -> None:
    spec = as_task(fraud, task)
    rng = np.random.default_rng(1)
    n = 300
    if task == "binary":
        y = (rng.random(n) < 0.3).astype(int)
        outputs = {"probability": np.clip(y * 0.5 + rng.random(n) * 0.5, 0, 1)}
    elif task == "multiclass":
        y = rng.integers(0, 3, n)
        outputs = {"predicted_class": np.where(rng.random(n) < 0.7, y, rng.integers(0, 3, n)).astype(str),
                   "probability": rng.random(n)}
    else:
        y = rng.normal(10, 2, n)
        outputs = {"value": y + rng.normal(0, 1, n)}
    labelled = pd.DataFrame({**outputs, "__label": y})
    reference = pd.DataFrame({**outputs, spec.target: y})
    snapshot = performance_snapshot(spec, labelled, reference, threshold=0.5, ds=date(2026, 1, 1), version="1")
    names = {m["config"]["type"].rsplit(":", 1)[-1] for m in snapshot.dict()["metrics"]}
    expected = {"binary": {"RocAuc", "Recall"}, "multiclass": {"Accuracy", "F1Score"},
                "regression": {"RMSE", "MAE"}}[task]
    assert expected <= names and "ValueDrift" in names
    drift = target_drift(spec, snapshot, reference)
    assert drift["target_drifted"] is False  # the same labels as the reference
