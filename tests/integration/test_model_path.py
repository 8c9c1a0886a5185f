"""Train → register → gate in a real MLflow; package with BentoML; serve over HTTP."""

import json
import time
from datetime import timedelta

import httpx
import pytest

from flywheel import registry, stack, storage
from flywheel.packaging import build_bento
from flywheel.training import train

from .conftest import DAYS, FIRST_DAY

pytestmark = pytest.mark.integration
END = FIRST_DAY + timedelta(days=DAYS - 1)


@pytest.fixture(scope="module")
def first(services, loaded, spec):
    return train(spec, end=END, reason="test", settings=services)


@pytest.fixture(scope="module")
def served(services, first, spec):
    tag = build_bento(spec, version=first.version, settings=services)
    settings = stack.up(services, services=["model-server"], bento=tag)
    key = settings.api_key.get_secret_value()
    with httpx.Client(base_url=str(settings.model_server_url), headers={"X-API-Key": key}, timeout=30) as http:
        yield settings, http, tag
    stack.down(settings, services=["model-server"])


def _txn(**overrides):
    body = {"transaction_id": "t-1", "user_id": 12, "merchant_id": 7, "amount": 42.5,
            "event_timestamp": f"{END.isoformat()}T13:05:00Z", "merchant_category": "grocery",
            "country": "US", "device": "pos"}
    return body | overrides


def test_first_model_beats_the_baseline_and_becomes_champion(services, first, spec):
    assert first.promoted, first.reason
    assert first.metrics["holdout_pr_auc"] > first.metrics["baseline_pr_auc"]
    champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=services)
    assert str(champion.version) == first.version
    assert 0 < float(champion.tags["threshold"]) < 1
    assert champion.tags["gate.promote"] == "true"
    identity = json.loads(champion.tags["data.partitions"])
    assert len(identity) == DAYS
    assert storage.get_bytes("features", f"reference/{spec.model_name}/v{first.version}.parquet",
                             settings=services)


def test_a_worse_model_is_registered_but_not_promoted(services, first, spec):
    weak = spec.model_copy(update={"training": spec.training.model_copy(
        update={"xgboost": {"n_estimators": 2, "max_depth": 1, "learning_rate": 0.05}})})
    again = train(weak, end=END, reason="test", settings=services)
    assert not again.promoted
    assert again.metrics["holdout_pr_auc"] < first.metrics["holdout_pr_auc"]
    assert "does not beat" in again.reason
    assert str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=services).version) == first.version
    assert str(registry.alias_version(spec.model_name, registry.CHALLENGER, settings=services).version) == again.version


def test_prediction_over_http(served, first):
    _, http, _ = served
    resp = http.post("/predict", json=_txn())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["model_version"] == first.version
    assert body["is_fraud"] == (body["fraud_probability"] >= body["threshold"])
    assert body["transaction_id"] == "t-1" and body["unknown_entities"] == []


def test_risky_transaction_scores_higher_than_a_routine_one(served):
    _, http, _ = served
    routine = http.post("/predict", json=_txn()).json()["fraud_probability"]
    risky = http.post("/predict", json=_txn(amount=4000.0, device="unknown", merchant_category="electronics",
                                            country="NG", event_timestamp=f"{END}T02:10:00Z")).json()
    assert risky["fraud_probability"] > routine


def test_api_key_is_required(served):
    settings, _, _ = served
    with httpx.Client(base_url=str(settings.model_server_url), timeout=10) as anon:
        assert anon.post("/predict", json=_txn()).status_code == 401
        assert anon.post("/predict", json=_txn(), headers={"X-API-Key": "wrong"}).status_code == 401
        assert anon.get("/readyz").status_code == 200


def test_invalid_input_is_rejected_naming_the_field(served):
    _, http, _ = served
    resp = http.post("/predict", json=_txn(amount=-5))
    assert 400 <= resp.status_code < 500
    assert "amount" in resp.text
    missing = {k: v for k, v in _txn().items() if k != "user_id"}
    resp = http.post("/predict", json=missing)
    assert 400 <= resp.status_code < 500 and "user_id" in resp.text


def test_unknown_entity_gets_defaults_and_a_flag(served):
    _, http, _ = served
    body = http.post("/predict", json=_txn(user_id=987654321)).json()
    assert body["unknown_entities"] == ["user"]
    assert 0.0 <= body["fraud_probability"] <= 1.0


def test_batch_endpoint_and_prediction_log(served, spec):
    settings, http, _ = served
    batch = [_txn(transaction_id=f"b-{i}", user_id=i) for i in range(25)]
    resp = http.post("/predict_batch", json=batch)
    assert resp.status_code == 200
    assert [p["transaction_id"] for p in resp.json()] == [f"b-{i}" for i in range(25)]
    prefix = f"{spec.model_name}/dt={END.isoformat()}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not storage.list_keys("predictions", prefix, settings=settings):
        time.sleep(1)
    from flywheel.monitoring import load_predictions

    logged = load_predictions(spec, start=END, end=END, settings=settings)
    assert len(logged) >= 25
    assert logged["probability"].between(0, 1).all()


def test_training_run_records_its_data(services, first, spec):
    run = registry.client(services).get_run(first.run_id)
    assert run.inputs.dataset_inputs, "the training set is logged as an MLflow dataset input"
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.name == f"transactions-{END.isoformat()}" and "flywheel-curated" in dataset.source
    assert run.data.tags["data.end"] == END.isoformat()
    for metric in ("holdout_pr_auc", "holdout_recall_at_p50", "holdout_calibration_error",
                   "holdout_expected_cost", "baseline_expected_cost"):
        assert metric in run.data.metrics
    artifacts = {a.path for a in registry.client(services).list_artifacts(first.run_id, "evaluation")}
    assert {"evaluation/evaluation.md", "evaluation/pr_curve.png", "evaluation/calibration.png"} <= artifacts


def test_promotion_and_rollback_are_audited(services, first, spec):
    from flywheel import promotion

    other = train(spec.model_copy(update={"training": spec.training.model_copy(
        update={"xgboost": {"n_estimators": 3, "max_depth": 1}})}), end=END, reason="test", settings=services)
    moved = promotion.promote(spec.model_name, other.version, reason="manual test", actor="tester",
                              settings=services)
    assert (moved.from_version, moved.to_version) == (first.version, other.version)
    assert str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=services).version) == other.version
    back = promotion.rollback(spec.model_name, reason="worse in production", actor="tester", settings=services)
    assert (back.from_version, back.to_version) == (other.version, first.version)
    assert str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=services).version) == first.version
    log = promotion.history(spec.model_name, settings=services)
    assert [r.action for r in log][-2:] == ["promote", "rollback"]
    assert log[0].actor.startswith("training-gate:") and log[0].to_version == first.version
    with pytest.raises(promotion.PromotionError, match="reason"):
        promotion.promote(spec.model_name, first.version, reason=" ", settings=services)


def test_model_version_carries_lineage(services, first, spec):
    mv = registry.client(services).get_model_version(spec.model_name, first.version)
    assert len(mv.tags["lineage.code.commit"]) in (40, len("unknown"))
    assert mv.tags["lineage.code.dirty"] in ("true", "false", "unknown")
    assert json.loads(mv.tags["lineage.packages"])["xgboost"] == "3.2.0"
    assert mv.tags["lineage.seed"] == str(spec.training.seed)
    assert len(mv.tags["lineage.feast.registry.sha256"]) == 64
