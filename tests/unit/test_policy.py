"""The retraining policy as a pure function: each guardrail can say no, and says why."""

from datetime import date, timedelta

import pytest

from flywheel.monitoring.policy import Decision, decide

pytestmark = pytest.mark.unit
DS = date(2026, 3, 10)


def drift(ds: date = DS, detected: bool = True, **sections: dict) -> dict:
    result = {"ds": ds.isoformat(), "drift_detected": detected, "drift_share": 0.6 if detected else 0.1,
              "status": "ok", "drifted_columns": ["amount"] if detected else [], "html_uri": "s3://r/x.html"}
    return {"ds": ds.isoformat(), "drift": result, **sections}


def past(ds: date, run_id: str = "earlier", decided: str = "20260101T000000.000000Z") -> Decision:
    return Decision(model="m", ds=ds.isoformat(), action="triggered", reason="data_drift", signals={},
                    run_id=run_id, champion_version="1", decided_at=decided)


def call(spec, observed=None, *, history=(), rows=5000, end=DS - timedelta(days=5), run_id="now",
         today=date(2026, 11, 26)):
    return decide(spec, observed or drift(), run_id=run_id, new_labelled_rows=rows, champion_version="1",
                  champion_end=end, past=list(history), today=today)


def test_drift_triggers(spec):
    d = call(spec)
    assert d.triggered and d.action == "triggered" and "data_drift" in d.reason
    assert d.signals["fired"] == ["data_drift"] and d.signals["new_labelled_rows"] == 5000
    assert (d.model, d.use_case) == (spec.model_name, spec.name)  # every decision names its use case
    assert Decision(**{k: v for k, v in d.to_dict().items() if k != "triggered"}) == d


def test_no_signal_no_trigger(spec):
    assert call(spec, drift(detected=False)).action == "no_signal"


def test_staleness_alone_triggers(spec):
    limit = spec.monitoring.retrain.max_model_age_days
    d = call(spec, drift(detected=False), end=DS - timedelta(days=limit + 1))
    assert d.triggered and d.signals["fired"] == ["staleness"]


def test_same_day_twice_is_a_duplicate_but_a_rerun_of_the_same_run_is_not(spec):
    assert call(spec, history=[past(DS)]).action == "duplicate"
    assert call(spec, history=[past(DS, run_id="now")]).triggered


def test_cooldown_suppresses_then_expires(spec):
    cooldown = spec.monitoring.retrain.cooldown_days
    inside = call(spec, history=[past(DS - timedelta(days=cooldown - 1))])
    assert inside.action == "cooldown" and "cooldown" in inside.reason
    assert call(spec, history=[past(DS - timedelta(days=cooldown))]).triggered
    assert call(spec, history=[past(DS + timedelta(days=1))]).action == "cooldown"  # a backfill behind it


def test_too_few_new_labels(spec):
    d = call(spec, rows=spec.monitoring.retrain.min_new_labelled_rows - 1)
    assert d.action == "insufficient_labels" and "labelled rows" in d.reason


def test_daily_cap_counts_decisions_made_today(spec):
    cap = spec.monitoring.retrain.max_per_day
    today = [past(DS - timedelta(days=30 + i), run_id=f"r{i}", decided="20261126T010000.000000Z")
             for i in range(cap)]
    assert call(spec, history=today).action == "daily_cap"
    assert call(spec, history=today, today=date(2026, 11, 27)).triggered


def test_performance_drop_triggers_and_is_reported(spec):
    perf = {"status": "alert", "alert": True, "metric": "pr_auc", "metric_value": 0.2, "metric_drop": 0.22,
            "labelled_rows": 4000}
    d = call(spec, drift(detected=False, performance=perf))
    assert d.triggered and d.signals["fired"] == ["performance"] and "performance" in d.reason
    assert (d.signals["metric"], d.signals["metric_value"], d.signals["metric_drop"]) == ("pr_auc", 0.2, 0.22)
    assert d.signals["alerts"] == ["performance"]
    days = spec.monitoring.retrain.performance_lookback_days
    assert d.signals.get("lookback_days") == days
    from flywheel.monitoring.policy import retrain_spec

    assert retrain_spec(spec, d.signals).training.lookback_days == (days or spec.training.lookback_days)
    assert retrain_spec(spec, call(spec).signals) is spec  # a drift retrain keeps the spec's window


def test_skew_alerts_but_retrains_only_when_the_policy_says_so(spec):
    skew = {"status": "alert", "alert": True, "max_mismatch_share": 0.4}
    d = call(spec, drift(detected=False, skew=skew))
    assert d.action == "no_signal" and d.signals["ignored"] == ["skew"] and d.signals["alerts"] == ["skew"]
    policy = spec.monitoring.retrain.model_copy(update={"signals": ["data_drift", "performance", "skew"]})
    opted_in = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"retrain": policy})})
    assert call(opted_in, drift(detected=False, skew=skew)).signals["fired"] == ["skew"]


def test_quality_and_freshness_alerts_never_retrain(spec):
    alert = {"status": "alert", "alert": True}
    d = call(spec, drift(detected=False, quality=alert, freshness=alert))
    assert d.action == "no_signal" and d.signals["alerts"] == ["freshness", "quality"]


def test_the_training_dag_reads_the_window_of_the_newest_retrain_request():
    from types import SimpleNamespace

    from flywheel.airflow.factory import _retrain_request

    events = [SimpleNamespace(extra={"window_end": "2026-03-01"}),
              SimpleNamespace(extra={"window_end": "2026-03-02", "lookback_days": 7})]
    assert _retrain_request({"triggering_asset_events": {"fraud.retrain_request": events}})["lookback_days"] == 7
    assert _retrain_request({"params": {"end": "2026-03-01"}}) == {}


def test_a_trigger_becomes_the_retrain_request_the_training_dag_reads(spec):
    from flywheel.monitoring.policy import retrain_request

    perf = {"status": "alert", "alert": True, "metric": "rmse", "metric_value": 4.1, "metric_drop": 0.3,
            "labelled_rows": 4000}
    request = retrain_request(call(spec, drift(performance=perf)))
    assert request["window_end"] == DS.isoformat() and request["drifted_columns"] == ["amount"]
    assert request["signals"] == ["data_drift", "performance"] and request["report"] == "s3://r/x.html"
    assert request["lookback_days"] == spec.monitoring.retrain.performance_lookback_days
