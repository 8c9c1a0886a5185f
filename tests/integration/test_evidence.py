"""A version's evidence on the session stack: latency gate, model card, reproduction, rollback
drill and the ML Test Score, on a registered model of its own (no other test's champion moves)."""

import io
from datetime import timedelta

import httpx
import pytest
from rich.console import Console

from flywheel.core.spec import LatencyBudgetSpec
from flywheel.monitoring import testscore as report
from flywheel.training import card, drills, evidence, promotion, registry
from flywheel.training.trainer import train

from .conftest import DAYS, FIRST_DAY

pytestmark = pytest.mark.integration
END = FIRST_DAY + timedelta(days=DAYS - 1)
MODEL = "fraud-evidence"


def _own(spec, *, min_improvement: float = 0.0, **budget):
    """The demo spec under its own model name: baseline + XGBoost, fixed parameters, no search."""
    t = spec.training
    xgb = t.candidates["xgboost"].model_copy(update={"search": {}, "params": {**t.candidates["xgboost"].params,
                                                                              "n_estimators": 60}})
    update = {"candidates": {"xgboost": xgb}, "search": t.search.model_copy(update={"trials": 0}),
              "min_improvement": min_improvement}
    if budget:
        update["latency_budget"] = LatencyBudgetSpec(**budget)
    return spec.model_copy(update={"model_name": MODEL, "training": t.model_copy(update=update)})


@pytest.fixture(scope="module")
def first(services, loaded, spec):
    return train(_own(spec), end=END, reason="test", settings=services)


@pytest.fixture(scope="module")
def too_slow(services, first, spec):
    """A candidate the gate would take (the same training ties the champion: a negative margin lets a
    tie pass) but for a latency budget that cannot be met."""
    return train(_own(spec, min_improvement=-1.0, p99_ms_batch_1=1e-6, p99_ms_batch_100=1e-6, repeats=5), end=END, reason="test",
                 settings=services)


def _auth(settings):
    env = settings.mlflow_env()
    return (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) if env else None


def test_a_version_carries_its_latency_evidence_and_a_linked_model_card(services, first):
    assert first.promoted, first.reason
    tags = registry.client(services).get_model_version(MODEL, first.version).tags
    assert float(tags["latency.p99_ms.batch_1"]) > 0 and float(tags["latency.p99_ms.batch_100"]) > 0
    assert set(first.latency_ms) == {"1", "100"}
    overfits = evidence.loads(tags, evidence.OVERFIT)
    assert {r["family"] for r in overfits} == {"logistic_regression", "xgboost"} and all(r["passed"] for r in overfits)
    assert tags[card.TAG] == first.card_url and first.card_url.startswith(str(services.mlflow_tracking_uri))
    assert f"/runs/{first.run_id}/artifactPath/{card.ARTIFACT}" in first.card_url
    # The UI's artifact view reads the card through the tracking server's get-artifact route.
    got = httpx.get(f"{services.mlflow_tracking_uri}/get-artifact",
                    params={"path": card.ARTIFACT, "run_uuid": first.run_id}, auth=_auth(services), timeout=30)
    assert got.status_code == 200, got.text[:200]
    text = got.text
    for heading in ("Intended use", "Known misuses", "95% confidence", "Expected calibration error",
                    "Feature-group ablation", "Inference latency", "ML Test Score"):
        assert heading in text, heading
    assert "not stated" in text and "fraud_" in text and "request features" in text


def test_a_candidate_over_its_latency_budget_is_refused_by_the_gate(services, first, too_slow):
    assert not too_slow.promoted and "latency budget" in too_slow.reason, too_slow.reason
    tags = registry.client(services).get_model_version(MODEL, too_slow.version).tags
    assert tags["gate.promote"] == "false" and tags["latency.budget_ms.batch_1"] == "1e-06"
    assert str(registry.alias_version(MODEL, registry.CHAMPION, settings=services).version) == first.version


def test_reproduction_drill_and_rubric_are_recorded_evidence(services, spec, first, too_slow):
    own = _own(spec)
    again = drills.reproduce(own, first.version, settings=services)
    assert again.passed, again
    promotion.promote(MODEL, too_slow.version, reason="test: a person overrides the gate", settings=services)
    drill = drills.rollback_drill(own, actor="test", settings=services)
    assert drill.passed and (drill.champion, drill.rolled_back_to) == (too_slow.version, first.version)
    assert [r.reason for r in promotion.history(MODEL, settings=services)[-2:]] == [
        "rollback drill: roll back", "rollback drill: restore"]
    scored, url = report.report(own, first.version, update_card=True, settings=services)
    by_id = {r.test.id: r for r in scored.results}
    assert by_id["infra-1"].points == 0.5 and by_id["infra-2"].points == 1 and by_id["monitoring-6"].points == 1
    assert by_id["monitoring-3"].status == "not met" and by_id["monitoring-3"].to_meet
    assert {r.test.id: r for r in report.rubric(own, too_slow.version, settings=services).results}[
        "infra-7"].points == 0.5
    assert "flywheel reproduce" not in card.read(MODEL, first.version, settings=services).split(card.RUBRIC_MARK)[1]
    out = io.StringIO()
    Console(width=80, file=out).print(report.table(scored))
    lines = out.getvalue().splitlines()
    assert len(lines) > 28 and max(len(line) for line in lines) <= 80
