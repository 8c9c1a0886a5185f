"""The rollout without services: the spec's section and its errors, sticky canary shares, the
challenger compared with the champion (a raising one recorded, not raised), a canary answer
served and logged per row, the rollout columns surviving the spool, and the step's verdicts."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from flywheel.core.spec import SpecError, load_spec_file
from flywheel.monitoring import checks
from flywheel.monitoring.rollout import evaluate
from flywheel.serving import challenger
from flywheel.serving.prediction_log import decode, encode, log_frame, log_schema
from flywheel.serving.predictor import task_outputs
from tests.unit.test_serving_unit import GOOD, _model, _scores

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fraud():
    from tests.conftest import ROOT

    return load_spec_file(ROOT / "models" / "fraud.yaml")


def _with(spec, **rollout):
    return spec.model_copy(update={"rollout": spec.rollout.model_copy(update=rollout)})


class _Constant:
    """A family whose model scores every row ``value`` (or raises)."""

    def __init__(self, value: float | None) -> None:
        self.value = value

    def predict_array(self, model, x, features, *, task):
        if self.value is None:
            raise RuntimeError("broken challenger")
        return np.full(len(x), self.value)


def _challenger(value: float | None, *, version: str = "7", threshold: float = 0.5):
    return _model("binary", version=version, scorer=_Constant(value), threshold=threshold)


def _rows(fraud, n: int):
    from flywheel.features.featurizer import featurizer_for
    from flywheel.serving.schemas import route_schemas

    schemas = route_schemas(fraud, featurizer_for(fraud).request_columns)
    return [schemas.request.model_validate(GOOD | {"transaction_id": f"t{i}", "user_id": i}) for i in range(n)]


def test_the_spec_defaults_to_champion_only_and_names_a_bad_rollout_field(fraud, tmp_path):
    assert fraud.rollout.mode == "champion_only"
    from tests.conftest import ROOT

    text = (ROOT / "models" / "fraud.yaml").read_text() + "\nrollout: {mode: canary, canary_share: 1.5}\n"
    bad = tmp_path / "fraud.yaml"
    bad.write_text(text)
    with pytest.raises(SpecError, match="canary_share"):
        load_spec_file(bad)


def test_canary_rows_are_sticky_per_entity_and_near_the_share():
    keys = list(range(20_000))
    first = challenger.canary_rows(keys, version="7", share=0.1)
    assert first.tolist() == challenger.canary_rows(keys, version="7", share=0.1).tolist()
    assert 0.09 < first.mean() < 0.11
    again = challenger.canary_rows(keys[:50] * 3, version="7", share=0.1)
    assert again.tolist() == first[:50].tolist() * 3, "an entity lands on the same side every time"
    other = challenger.canary_rows(keys, version="8", share=0.1)
    assert (other != first).any(), "each version gets its own entities"


def test_agreement_per_task():
    yes, no = np.array([True, False]), np.array([True, True])
    assert challenger.agreement("binary", {"decision": yes}, {"decision": no}, tolerance=0).tolist() == [True, False]
    classes = np.array(["a", "b"], dtype=object)
    assert challenger.agreement("multiclass", {"predicted_class": classes},
                                {"predicted_class": np.array(["a", "c"], dtype=object)},
                                tolerance=0).tolist() == [True, False]
    got = challenger.agreement("regression", {"value": np.array([100.0, 100.0])},
                               {"value": np.array([104.0, 110.0])}, tolerance=0.05)
    assert got.tolist() == [True, False]


def test_a_canary_answers_its_share_and_a_raising_challenger_is_answered_for(fraud):
    from flywheel.serving.predictor import Predictor

    spec = _with(fraud, mode="canary", canary_share=0.5)
    rows = _rows(fraud, 40)
    champion = _model("binary", threshold=0.5)
    predictor = Predictor.__new__(Predictor)  # the canary step alone: no store, no registry
    predictor.spec, predictor.names, predictor._canary_key = spec, tuple(), "user_id"
    for value, served in ((0.9, True), (None, False)):
        scores, _ = _scores("binary", np.full(len(rows), 0.1), champion, spec, rows)
        predictor.names = scores.feature_names
        predictor._canary(scores, challenger.Live(_challenger(value), "canary"))
        records = scores.records()
        versions = [r["model_version"] for r in records]
        mask = challenger.canary_rows(scores.columns["user_id"], version="7", share=0.5)
        if served:
            assert versions == ["7" if m else "3" for m in mask.tolist()]
            assert [r["probability"] for r in records] == [0.9 if m else 0.1 for m in mask.tolist()]
            assert [r["decision"] for r in records] == mask.tolist()
        else:
            assert set(versions) == {"3"} and {r["probability"] for r in records} == {0.1}
        frame = log_frame([scores], log_schema(spec))
        assert frame["model_version"].tolist() == versions
        assert frame["challenger_version"].eq("7").all() and frame["rollout_stage"].eq("canary").all()
        assert frame["challenger_error"].all() == (not served)
        if served:
            assert not frame["challenger_agrees"].any(), "both score every row: 0.9 and 0.1 never agree"
            assert np.allclose(frame["champion_score"], 0.1) and np.allclose(frame["challenger_score"], 0.9)


def test_rollout_columns_survive_the_spool_and_default_without_a_challenger(fraud):
    rows = _rows(fraud, 3)
    champion = _model("binary")
    shadowed, _ = _scores("binary", np.array([0.2, 0.6, 0.7]), champion, fraud, rows)
    shadowed.rollout = challenger.compare(fraud, challenger.Live(_challenger(0.65), "shadow"), shadowed.matrix,
                                          shadowed.feature_names, champion_raw=shadowed.raw,
                                          champion_outputs=shadowed.outputs, outputs_of=task_outputs).columns
    plain, _ = _scores("binary", np.array([0.3]), champion, fraud, rows[:1])
    schema = log_schema(fraud)
    live = log_frame([shadowed, plain], schema)
    at = datetime(2026, 1, 9, tzinfo=UTC)
    spooled = log_frame([decode(encode(s, logged_at=at)) for s in (shadowed, plain)], schema)
    pd.testing.assert_frame_equal(spooled.drop(columns="logged_at"), live.drop(columns="logged_at"))
    assert live["challenger_version"].tolist() == ["7", "7", "7", ""]
    assert live["challenger_agrees"].tolist() == [False, True, True, False]
    assert live["model_version"].eq("3").all(), "in shadow the champion answers every row"
    assert np.isnan(live["challenger_score"].iloc[3]) and live["challenger_ms"].iloc[:3].ge(0).all()


def _log_rows(n: int, *, agree: float = 1.0, errors: int = 0, ms: float = 2.0) -> pd.DataFrame:
    agrees = np.arange(n) < int(agree * n)
    error = np.arange(n) < errors
    return pd.DataFrame({"challenger_agrees": agrees & ~error, "challenger_error": error,
                         "challenger_ms": np.full(n, ms)})


def test_the_step_waits_advances_and_rolls_back_on_the_spec_thresholds(fraud):
    spec = _with(fraud, mode="shadow", min_requests=100, min_agreement=0.9, max_p99_ms=20, max_error_rate=0.01,
                 min_labelled_rows=0)
    assert evaluate(spec, _log_rows(99), stage="shadow").action == "wait"
    assert evaluate(spec, _log_rows(100), stage="shadow").action == "advance"
    assert evaluate(spec, _log_rows(200, agree=0.8), stage="shadow").action == "rollback"
    assert "p99" in evaluate(spec, _log_rows(200, ms=30), stage="canary").reason
    bad = evaluate(spec, _log_rows(200, errors=5), stage="canary")
    assert bad.action == "rollback" and "error rate" in bad.reason


def test_delayed_labels_hold_the_last_step_and_a_worse_challenger_is_rolled_back(fraud):
    spec = _with(fraud, mode="shadow", min_requests=10, min_labelled_rows=100, max_metric_drop=0.05)
    rows = _log_rows(200)
    assert evaluate(spec, rows, stage="shadow", labelled=None).action == "advance"
    held = evaluate(spec, rows, stage="canary", labelled=None)
    assert held.action == "wait" and "labels" in held.reason
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.where(y == 1, 0.8, 0.2) + rng.normal(0, 0.05, 400)
    labelled = pd.DataFrame({checks._LABEL: y, "champion_score": good, "challenger_score": rng.random(400)})
    worse = evaluate(spec, rows, stage="canary", labelled=labelled, thresholds=(0.5, 0.5))
    assert worse.action == "rollback" and worse.facts["metric_drop"] > 0.05
    same = labelled.assign(challenger_score=good)
    assert evaluate(spec, rows, stage="canary", labelled=same, thresholds=(0.5, 0.5)).action == "advance"


def _signed(body: bytes, secret: str, *, at: float, delivery: str = "d-1") -> dict[str, str]:
    """Headers as MLflow's webhook delivery signs them (mlflow.webhooks.delivery)."""
    from mlflow.webhooks.delivery import _generate_hmac_signature

    return {"x-mlflow-signature": _generate_hmac_signature(secret, delivery, str(int(at)), body.decode()),
            "x-mlflow-timestamp": str(int(at)), "x-mlflow-delivery-id": delivery}


def test_a_registry_event_is_answered_only_when_signed_fresh_and_readable():
    import json
    import time

    from flywheel.serving.registry_events import RegistryEventRejected, verified_model

    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": "fraud-model", "alias": "champion", "version": "3"}}).encode()
    now = time.time()
    assert verified_model(body, _signed(body, "s3cret", at=now), "s3cret") == "fraud-model"
    for headers, why in ((_signed(body, "other", at=now), "wrong signature"), ({}, "missing"),
                         (_signed(body, "s3cret", at=now - 3600), "old")):
        with pytest.raises(RegistryEventRejected, match=why):
            verified_model(body, headers, "s3cret")
    tampered = body.replace(b"fraud-model", b"other-model")
    with pytest.raises(RegistryEventRejected, match="wrong signature"):
        verified_model(tampered, _signed(body, "s3cret", at=now), "s3cret")
    with pytest.raises(RegistryEventRejected, match="not an MLflow registry event"):
        verified_model(b"[]", _signed(b"[]", "s3cret", at=now), "s3cret")


def test_the_monitoring_dag_has_a_rollout_step_only_when_the_spec_rolls_out(fraud):
    from flywheel.airflow.factory import monitoring_dag

    assert "rollout_step" not in monitoring_dag(fraud).task_dict
    assert "rollout_step" in monitoring_dag(_with(fraud, mode="canary")).task_dict
