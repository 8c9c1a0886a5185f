"""Pure parts of the monitoring checks and the simulation's bookkeeping."""

from datetime import date, timedelta

import numpy as np
import pytest

from examples.fraud.generator import DriftKind
from examples.fraud.simulation import CONCEPT, COVARIATE, STABLE, DayOutcome, Scenario, SimulationResult
from flywheel.monitoring.checks import Check, _mismatches, drift_section

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
