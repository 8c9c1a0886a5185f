"""The demo's output reads in an 80-column terminal (issue 15 §9): tables one line a row with no
cell cut, Feast's chatter in the log rather than on the terminal, alert lines that say what fired."""

from __future__ import annotations

import logging
import sys

import pytest
from rich.console import Console

from examples.demo import family_metrics_table
from examples.fraud.simulation import LEGEND, DayOutcome, Scenario, SimulationResult, day_line, outcome_table
from flywheel.features.store import feast_output_to_log
from flywheel.monitoring.checks import alert_reason, drift_section

pytestmark = pytest.mark.unit


def render(renderable) -> list[str]:
    console = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text().splitlines()


def outcome(day: str, phase: str, alerts: list[str], action: str, *, retrained: str | None = None,
            promoted: bool | None = None, served: tuple[str, ...] = ("10", "11")) -> DayOutcome:
    return DayOutcome(day=day, phase=phase, drift="none", requests=1200, served_by=list(served), drift_share=0.4167,
                      drift_detected=True, pr_auc=0.81234, pr_auc_drop=-0.1234, performance="alert", skew=0.0125,
                      alerts=alerts, action=action, reason="", champion="11", retrained=retrained, promoted=promoted)


WIDEST = [  # the widest values each column takes in a 38-day demo
    outcome("2026-01-15", "stable", [], "no_signal", served=("1",)),
    outcome("2026-01-22", "concept_shift", ["performance"], "triggered", retrained="12", promoted=False),
    outcome("2026-01-29", "covariate_shift", ["drift", "performance", "skew"], "insufficient_labels"),
    outcome("2026-01-30", "covariate_shift", ["drift", "performance"], "daily_cap"),
]


def test_the_simulation_table_keeps_each_day_on_one_line_of_80_columns():
    lines = render(outcome_table(SimulationResult(scenario=Scenario(), days=WIDEST)))
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines), "\n".join(lines)
    for d in WIDEST:
        rows = [line for line in lines if line.lstrip().startswith(d.day[5:])]
        assert len(rows) == 1, (d.day, lines)
        assert d.day[5:] in rows[0] and ",".join(f"v{v}" for v in d.served_by) in rows[0]
    assert "v12 ✗" in "\n".join(lines) and "drift,perf,skew" in "\n".join(lines)
    assert all(len(day_line(d)) <= 80 for d in WIDEST)
    assert "✗" in LEGEND and "perf" in LEGEND


def test_the_candidate_table_fits_80_columns(spec):
    metrics = {}
    for family in [*spec.training.candidates, "baseline"]:
        for key, value in (("holdout_pr_auc", 0.812345), ("holdout_roc_auc", 0.987654), ("holdout_recall_at_p50", 0.7123),
                           ("holdout_expected_cost", 1.23456), ("trials", 3), ("train_seconds", 123.456),
                           ("search_seconds", 1234.5)):
            metrics[f"{family}_{key}" if family != "baseline" else f"baseline_{key.removeprefix('holdout_')}"] = value
    lines = render(family_metrics_table(spec, metrics))
    assert max(len(line) for line in lines) <= 80
    assert not any("…" in line for line in lines), "\n".join(lines)
    assert sum("0.8123" in line for line in lines) == len(spec.training.candidates) + 1


def test_feast_chatter_goes_to_the_log_without_colour_codes(capsys, caplog):
    from tqdm import tqdm

    caplog.set_level(logging.INFO, logger="flywheel.features.store")
    with feast_output_to_log("materialize fraud 2026-01-02"):
        print("Materializing \x1b[1m\x1b[32m2\x1b[0m feature views into the \x1b[1m\x1b[32mredis\x1b[0m online store.\n")
        for _ in tqdm(range(3), ncols=100, file=sys.stderr):
            pass
    out = capsys.readouterr()
    assert "Materializing" not in out.out + out.err
    [record] = [r for r in caplog.records if r.name == "flywheel.features.store"]
    assert record.levelno == logging.INFO
    assert "Materializing 2 feature views into the redis online store." in record.getMessage()
    assert "\x1b" not in record.getMessage() and record.getMessage().count("3/3") == 1


def test_a_drift_alert_says_which_columns_drifted_against_the_threshold():
    section = drift_section({"status": "ok", "drift_detected": True, "drift_share": 0.4167, "threshold": 0.3,
                             "drifted_columns": ["amount", "amount_log", "hour", "amount_to_user_mean", "country_code"],
                             "column_scores": {f"c{i}": {"score": 0.1} for i in range(12)},
                             "prediction_drifted": True, "prediction_column": "score", "rows": 900})
    reason = alert_reason("drift", section)
    assert reason == ("5 of 12 columns drifted (amount, amount_log, hour, amount_to_user_mean and 1 more), "
                      "share 0.42 >= threshold 0.30; prediction score drifted")
    assert alert_reason("skew", {"status": "alert"}) == "skew status 'alert' (no reason recorded)"
    quiet = drift_section({"status": "insufficient_data", "drift_detected": False, "rows": 12, "min_rows": 200})
    assert quiet["reason"] == "12 rows logged, fewer than min_rows 200: not compared"
