"""Weeks of simulated production on real SeaweedFS, MLflow, Feast, Evidently and BentoML.

Two weeks of history train the first champion; then, day by day, the served traffic, the
data and label pipelines, every monitoring check and the retraining policy run as in
production (flywheel.simulation): a stable period, a covariate-shift episode, a return to
normal, and a concept shift that only the delayed labels reveal. Each outcome is asserted;
the run's day-by-day table and the detection delays are written to the test's log and to
``<home>/simulation.json``.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from examples.fraud.simulation import (
    CONCEPT,
    COVARIATE,
    STABLE,
    Scenario,
    SimulationResult,
    outcome_table,
    prepare_history,
    simulate,
)
from flywheel.core.config import Settings
from flywheel.monitoring import checks, policy
from flywheel.stack import launcher as stack
from flywheel.training import registry
from flywheel.training.packaging import build_bento
from flywheel.training.trainer import train
from tests.ports import ports

pytestmark = pytest.mark.e2e
PORTS = ports(38000)


@pytest.fixture(scope="module")
def run(tmp_path_factory, spec) -> tuple[Settings, SimulationResult]:
    home = tmp_path_factory.mktemp("simulation-home")
    settings = stack.up(Settings(home=home, ports=PORTS, prediction_flush_s=0.5, champion_refresh_s=1.0),
                        services=["seaweedfs", "mlflow"])
    # XGBoost with fixed hyper-parameters (no search): the scenario is about when models are
    # retrained, and families and search have their own tests.
    fast = spec.model_copy(update={"training": spec.training.model_copy(update={
        "candidates": {"xgboost": spec.training.candidates["xgboost"]},
        "search": spec.training.search.model_copy(update={"trials": 0})})})
    # Four stable days (the demo runs seven): enough to show no false alarm; each served day costs
    # ~45 s here, and the concept and covariate phases keep their lengths (their asserts need them).
    base = Scenario()
    scenario = Scenario(start=base.start, history_days=base.history_days,
                        phases=tuple((name, 4 if name == STABLE else days, kinds) for name, days, kinds in base.phases))
    try:
        prepare_history(settings, fast, scenario)
        first = train(fast, end=scenario.history_end, reason="initial", settings=settings)
        assert first.promoted, first.reason
        tag = build_bento(fast, version=first.version, settings=settings)
        served = stack.up(settings, services=["model-server"], bento=tag)
        result = simulate(served, fast, scenario)
        from rich.console import Console

        console = Console(width=160, record=True)
        console.print(outcome_table(result))
        print(console.export_text())
        (home / "simulation.json").write_text(json.dumps(result.to_dict(), indent=2))
        print(json.dumps({k: v for k, v in result.to_dict().items() if k != "days"}, indent=2))
        yield settings, result
    finally:
        stack.down(settings)


def days_of(result: SimulationResult, phase: str):
    return [d for d in result.days if d.phase == phase]


@pytest.mark.timeout(2400)
def test_stable_traffic_raises_no_retrain(run):
    _, result = run
    stable = days_of(result, STABLE)
    assert all(d.action == "no_signal" for d in stable), [(d.day, d.action, d.reason) for d in stable]
    assert result.false_alarms() == []
    assert all(d.performance in ("ok", "insufficient_data") for d in stable)


def test_served_features_are_the_offline_features(run):
    """Skew: the features the service used equal the point-in-time features of the same transactions."""
    _, result = run
    assert all(d.skew is not None and "skew" not in d.alerts for d in result.days), \
        [(d.day, d.skew) for d in result.days]


def test_covariate_shift_retrains_once_and_cooldown_holds_the_repeats(run, spec):
    settings, result = run
    first, *repeats = days_of(result, COVARIATE)
    assert "drift" in first.alerts and first.action == "triggered", (first.day, first.reason)
    assert result.detection_delay(COVARIATE, "drift") == 0
    assert first.retrained is not None
    assert all("drift" in d.alerts and d.action == "cooldown" for d in repeats), \
        [(d.day, d.alerts, d.action) for d in repeats]
    recorded = {d.ds: d for d in policy.history(spec.model_name, settings=settings)}
    assert all(recorded[d.day].action == "cooldown" for d in repeats)  # suppressed, and recorded
    assert repeats[0].served_by == [first.retrained if first.promoted else first.champion]


def test_every_retrain_went_through_the_gate(run, spec):
    """A new champion only if better: the gate's verdict, recorded on the version, moved the alias."""
    settings, result = run
    retrains = [d for d in result.days if d.retrained]
    assert retrains
    for d in retrains:
        mv = registry.client(settings).get_model_version(spec.model_name, d.retrained)
        assert mv.tags["gate.promote"] == str(d.promoted).lower(), (d.day, mv.tags["gate.reason"])
        following = [o for o in result.days if o.day > d.day]
        if following:
            assert following[0].served_by == [d.retrained if d.promoted else d.champion]
    assert all("data_drift" in d.reason or "performance" in d.reason for d in retrains)


def test_concept_shift_is_caught_by_delayed_labels_and_retrains(run, spec):
    _, result = run
    concept = days_of(result, CONCEPT)
    # Inputs look as usual: no data drift, the labels show it.
    assert not any("drift" in d.alerts for d in concept), [(d.day, d.drift_share) for d in concept]
    delay = result.detection_delay(CONCEPT, "performance")
    assert delay is not None and delay <= 6, [(d.day, d.pr_auc, d.pr_auc_drop) for d in concept]
    triggered = [d for d in concept if d.action == "triggered"]
    assert triggered and all("performance" in d.reason and d.retrained for d in triggered)
    # Retrained until a model that knows the new pattern serves: the phase ends above the floor.
    assert any(d.promoted for d in triggered), [(d.day, d.retrained, d.promoted) for d in triggered]
    recovered = [d for d in concept if d.day > triggered[0].day and d.pr_auc is not None
                 and d.pr_auc >= spec.monitoring.performance.metric_limit and "performance" not in d.alerts]
    assert recovered, [(d.day, d.served_by, d.pr_auc) for d in concept]


def test_every_day_is_summarised_for_dashboards(run, spec):
    settings, result = run
    summaries = {s["ds"]: s for s in checks.read_summaries(spec, settings=settings)}
    assert set(summaries) == {d.day for d in result.days}
    last = summaries[result.days[-1].day]
    assert {"drift", "performance", "skew", "quality", "freshness", "decision"} <= set(last)
    assert last["freshness"]["online_age_hours"] == 0  # the day's features are online when it is checked


def test_serving_features_from_the_future_are_flagged_as_skew(run, spec):
    """The fault the skew check exists for, caused for real: a day served *after* its own
    aggregates were materialized reads features that include the very transactions it scores."""
    settings, result = run
    from examples.fraud import simulation
    from examples.fraud.generator import write_landing

    day = result.scenario.last_day + timedelta(days=1)
    labels = simulation.label_spec(spec, settings)
    write_landing(settings.home / "landing", day, 1, spec.generator, schedule=result.scenario.schedule(),
                  dataset=spec.dataset.name, labels_dataset=labels.dataset.name if labels else None)
    simulation.process_data(settings, spec, day, run_id="skew-fault")  # features of the day first...
    served = simulation.send_traffic(settings, spec, day)  # ...then its traffic
    simulation.wait_for_logs(settings, spec, day, served["requests"])
    skew = checks.skew_check(spec, day, settings=settings)
    assert skew.alert, skew.reason
    assert {"user_txn_count_24h", "merchant_txn_count_24h"} <= set(skew.metrics["skewed_features"])
    assert "amount" not in skew.metrics["skewed_features"]  # request features are computed alike
