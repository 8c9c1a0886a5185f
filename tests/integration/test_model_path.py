"""Train → register → gate in a real MLflow; package with BentoML; serve over HTTP."""

import io
import json
import time
from datetime import timedelta

import httpx
import numpy as np
import pandas as pd
import pytest

from flywheel.core import storage
from flywheel.stack import launcher as stack
from flywheel.training import registry
from flywheel.training.packaging import build_bento
from flywheel.training.trainer import train

from .conftest import DAYS, FIRST_DAY

pytestmark = pytest.mark.integration
END = FIRST_DAY + timedelta(days=DAYS - 1)


def only(spec, family: str, *, trials: int = 0, **params):
    """The spec with one candidate family, fixed ``params`` merged in, and ``trials`` search trials."""
    t = spec.training.with_params(family, **params)
    candidate = t.candidates[family] if trials else t.candidates[family].model_copy(update={"search": {}})
    return spec.model_copy(update={"training": t.model_copy(update={
        "candidates": {family: candidate}, "search": t.search.model_copy(update={"trials": trials})})})


@pytest.fixture(scope="module")
def first(services, loaded, spec):
    """The demo spec as is: baseline + XGBoost and PyTorch searches, each trial a child run."""
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
    weak = only(spec, "xgboost", n_estimators=2, max_depth=1, learning_rate=0.05)
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
    assert 0.0 <= body["probability"] <= 1.0
    assert body["model_version"] == first.version
    assert body["decision"] == (body["probability"] >= body["threshold"])
    assert body["transaction_id"] == "t-1" and body["unknown_entities"] == []


def test_risky_transaction_scores_higher_than_a_routine_one(served):
    _, http, _ = served
    routine = http.post("/predict", json=_txn()).json()["probability"]
    risky = http.post("/predict", json=_txn(amount=4000.0, device="unknown", merchant_category="electronics",
                                            country="NG", event_timestamp=f"{END}T02:10:00Z")).json()
    assert risky["probability"] > routine


def test_api_key_is_required(served):
    settings, _, _ = served
    with httpx.Client(base_url=str(settings.model_server_url), timeout=10) as anon:
        assert anon.post("/predict", json=_txn()).status_code == 401
        assert anon.post("/predict", json=_txn(), headers={"X-API-Key": "wrong"}).status_code == 401
        assert anon.get("/readyz").status_code == 200


def test_invalid_input_is_rejected_naming_the_field(served):
    _, http, _ = served
    resp = http.post("/predict", json=_txn(amount="-5 dollars"))
    assert 400 <= resp.status_code < 500
    assert "amount" in resp.text
    missing = {k: v for k, v in _txn().items() if k != "user_id"}
    resp = http.post("/predict", json=missing)
    assert 400 <= resp.status_code < 500 and "user_id" in resp.text


def test_unknown_entity_gets_defaults_and_a_flag(served):
    _, http, _ = served
    body = http.post("/predict", json=_txn(user_id=987654321)).json()
    assert body["unknown_entities"] == ["user"]
    assert 0.0 <= body["probability"] <= 1.0


def test_batch_endpoint_and_prediction_log(served, spec):
    settings, http, _ = served
    batch = [_txn(transaction_id=f"b-{i}", user_id=1000 + i) for i in range(25)]
    resp = http.post("/predict_batch", json=batch)
    assert resp.status_code == 200
    assert [p["transaction_id"] for p in resp.json()] == [f"b-{i}" for i in range(25)]
    from flywheel.monitoring.drift import load_predictions

    # earlier tests' predictions may already be in the store: wait for these 25 rows
    deadline = time.monotonic() + 30
    while True:
        logged = load_predictions(spec, start=END, end=END, settings=settings)
        batch_rows = logged[logged["user_id"].isin(range(1000, 1025))] if len(logged) else logged
        if len(batch_rows) >= 25 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(batch_rows) >= 25
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
    from flywheel.training import promotion

    other = train(only(spec, "xgboost", n_estimators=3, max_depth=1), end=END, reason="test", settings=services)
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
    assert json.loads(mv.tags["lineage.packages"])["torch"].startswith("2.13.0")
    assert mv.tags["lineage.seed"] == str(spec.training.seed)
    assert len(mv.tags["lineage.feast.registry.sha256"]) == 64
    assert mv.tags["family"] in spec.training.candidates
    # resolvable: every partition named is in the store with the recorded content hash
    for ds, content_hash in json.loads(mv.tags["data.partitions"]).items():
        manifest = storage.read_manifest(zone="curated", dataset=spec.dataset.name, ds=ds, settings=services)
        assert manifest.content_hash == content_hash
    run = registry.client(services).get_run(mv.tags["run_id"])
    assert run.data.tags["data.end"] == END.isoformat()


def test_every_family_and_trial_is_a_child_run(services, first, spec):
    from mlflow import MlflowClient

    client = MlflowClient(services.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(spec.model_name).experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{first.run_id}'")
    assert {r.data.tags["family"] for r in children} == set(spec.training.candidates)
    for family_run in children:
        trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{family_run.info.run_id}'")
        assert len(trials) == spec.training.search.trials
        assert all(f"val_{spec.training.metric}" in t.data.metrics for t in trials)
        best = max(t.data.metrics[f"val_{spec.training.metric}"] for t in trials)
        assert family_run.data.metrics[f"val_{spec.training.metric}"] == pytest.approx(best)
    assert set(first.families) == set(spec.training.candidates)
    for metrics in first.families.values():
        assert 0 < metrics["holdout_pr_auc"] <= 1 and metrics["train_seconds"] > 0
    selected = max(first.families, key=lambda f: first.families[f][f"val_{spec.training.metric}"])
    assert first.family == selected
    artifacts = {a.path for a in client.list_artifacts(first.run_id, "evaluation")}
    assert "evaluation/families.json" in artifacts


def _model_files(services, spec, version: str) -> dict[str, bytes]:
    import tempfile
    from pathlib import Path

    import mlflow

    mlflow.set_tracking_uri(services.mlflow_tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(f"models:/{spec.model_name}/{version}", dst_path=tmp))
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
                if f.is_file() and f.name not in ("MLmodel", "registered_model_meta", "input_example.json",
                                                    "serving_input_example.json")}


@pytest.mark.parametrize("family,params", [
    ("xgboost", {"n_estimators": 60}),
    ("torch_mlp", {"epochs": 4}),
], ids=["xgboost", "torch_mlp"])
def test_training_twice_on_the_same_data_is_reproducible(services, first, spec, family, params):
    """Same data + seed → same metrics and the same model bytes (torch: on the CPU)."""
    twin = only(spec, family, **params)
    one = train(twin, end=END, reason="test", settings=services)
    two = train(twin, end=END, reason="test", settings=services)
    assert one.version != two.version and one.family == two.family == family
    assert _without_timings(one) == _without_timings(two)
    assert one.threshold == two.threshold
    files_one, files_two = _model_files(services, spec, one.version), _model_files(services, spec, two.version)
    assert files_one.keys() == files_two.keys() and files_one == files_two
    loaded = registry.load_version(spec.model_name, one.version, settings=services)  # as serving loads it
    assert loaded.family == family and 0 <= loaded.threshold <= 1


def _without_timings(result) -> dict:
    timings = {"train_seconds", "search_seconds"}
    return {f: {k: v for k, v in m.items() if k not in timings} for f, m in result.families.items()}


def test_gate_accepts_a_challenger_that_beats_the_champion(services, first, spec):
    from flywheel.training import promotion

    weak = train(only(spec, "xgboost", n_estimators=2, max_depth=1), end=END, reason="test", settings=services)
    promotion.promote(spec.model_name, weak.version, reason="test: a weak champion", actor="tester",
                      settings=services)
    better = train(only(spec, "xgboost"), end=END, reason="test", settings=services)
    assert better.promoted, better.reason
    assert "beats baseline" in better.reason and better.metrics["champion_pr_auc"] < better.metrics["holdout_pr_auc"]
    champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=services)
    assert str(champion.version) == better.version
    promotion.promote(spec.model_name, first.version, reason="test: restore", actor="tester", settings=services)


@pytest.mark.parametrize(("task", "label", "metric", "baseline"), [
    # Labels derived from the fraud window (they leak the amount: the point is the task's path
    # through the real stores). A step, so that the linear baseline cannot fit it exactly.
    ("regression", "CASE WHEN amount > 100 THEN 50 ELSE 0 END + ln(amount + 1)", "rmse", "linear"),
    ("multiclass", "CASE WHEN amount < 20 THEN 'small' WHEN amount < 200 THEN 'mid' ELSE 'large' END",
     "macro_f1", "logistic_regression"),
])
def test_other_task_types_train_gate_register_and_score(services, loaded, spec, task, label, metric, baseline):
    """A regression and a multiclass model on the same stack: Feast's training frame, the label
    expression, the gate in the metric's direction, the registry's tags, the reference frame."""
    from flywheel.core.spec import LabelSpec

    t = only(spec, "xgboost", n_estimators=30).training
    other = spec.model_copy(update={
        "model_name": f"tasks-{task}", "task": task, "label": LabelSpec(expr=label, name="y"),
        "training": t.model_copy(update={"metric": metric, "baseline": baseline})})
    result = train(other, end=END, reason="test", settings=services)
    assert result.task == task and result.metric == metric and result.promoted, result.reason
    model = registry.load_alias(other.model_name, settings=services)
    assert model.task == task
    reference = pd.read_parquet(io.BytesIO(storage.get_bytes(
        "features", f"reference/{other.model_name}/v{result.version}.parquet", settings=services)))
    out = model.predict(reference)
    if task == "multiclass":
        assert model.classes == ["large", "mid", "small"]
        assert out["probabilities"].shape == (len(reference), 3)
        assert set(reference["predicted_class"]) <= set(model.classes)
    else:
        assert np.allclose(out["value"], reference["value"])


def test_an_approval_given_later_rechecks_the_gate_against_the_current_champion(services, loaded, spec):
    """A version waits for approval, gated against a weak champion; meanwhile its twin (same data,
    seed and params: the same model) becomes champion. The approval re-runs the gate against the
    twin and refuses (not better); with another weak champion, the re-run gate passes and promotes."""
    from flywheel.core.spec import ApprovalSpec
    from flywheel.training import approval, promotion

    before = registry.alias_version(spec.model_name, registry.CHAMPION, settings=services)
    weak = train(only(spec, "xgboost", n_estimators=2, max_depth=1), end=END, reason="test", settings=services)
    other_weak = train(only(spec, "xgboost", n_estimators=3, max_depth=1), end=END, reason="test", settings=services)
    promotion.promote(spec.model_name, weak.version, reason="test: a weak champion", actor="tester",
                      settings=services)
    fixed = only(spec, "xgboost")
    gated = fixed.model_copy(update={"training": fixed.training.model_copy(update={
        "approval": ApprovalSpec(required=True)})})
    waiting = train(gated, end=END, reason="test", settings=services)
    assert waiting.awaiting_approval and not waiting.promoted and waiting.champion_version == weak.version
    twin = train(fixed, end=END, reason="test", settings=services)
    assert twin.promoted, twin.reason

    refused = approval.approve(spec, waiting.version, actor="approved-by:tester", settings=services)
    assert not refused.promoted and refused.rechecked, refused
    assert f"re-checked against champion v{twin.version}" in refused.reason and "does not beat" in refused.reason
    assert str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=services).version) == twin.version
    last = promotion.history(spec.model_name, settings=services)[-1]
    assert (last.outcome, last.to_version, last.actor) == ("refused", waiting.version, "approved-by:tester")

    # Another weak model becomes champion: the re-checked gate passes against it.
    promotion.promote(spec.model_name, other_weak.version, reason="test: another weak champion", actor="tester",
                      settings=services)
    done = approval.approve(spec, waiting.version, actor="approved-by:tester", settings=services)
    assert done.promoted and done.rechecked, done
    assert f"re-checked against champion v{other_weak.version}" in done.reason
    assert str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=services).version) == waiting.version
    if before is not None:
        promotion.promote(spec.model_name, str(before.version), reason="test: restore", actor="tester",
                          settings=services)
