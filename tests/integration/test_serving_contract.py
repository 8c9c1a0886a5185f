"""HTTP contract of the served bento: valid, invalid (422 naming the field), unknown entity,
auth missing/wrong, batch, health, metrics, OpenAPI; and Schemathesis over its OpenAPI (no 5xx)."""

from __future__ import annotations

import httpx
import hypothesis
import pytest
import schemathesis

from flywheel.stack import launcher as stack

from .serving_support import champion_version, serve, txn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(services, loaded, spec):
    version = champion_version(spec, services)
    settings, http, key = serve(spec, services, version)
    try:
        yield settings, http, key, version
    finally:
        http.close()
        stack.down(settings, services=["model-server"])


def test_valid_transaction_is_scored_by_the_champion(served, spec):
    _, http, _, version = served
    resp = http.post("/predict", json=txn())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["is_fraud"] == (body["fraud_probability"] >= body["threshold"])
    assert body["model_version"] == version and body["model_name"] == spec.model_name
    assert body["unknown_entities"] == [] and body["defaults_used"] is False
    assert body["transaction_id"] == "t-1" and len(body["request_id"]) == 32


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": -5}, "amount"),
    ({"device": "toaster"}, "device"),
    ({"event_timestamp": "yesterday"}, "event_timestamp"),
    ({"user_id": None}, "user_id"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_input_is_422_naming_the_field(served, change, field):
    _, http, _, _ = served
    body = {k: v for k, v in (txn() | change).items() if v is not None}
    resp = http.post("/predict", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["fields"] == [field], resp.text
    assert field in resp.json()["error"]


def test_invalid_batch_row_is_422_naming_row_and_field(served):
    _, http, _, _ = served
    resp = http.post("/predict_batch", json=[txn(), txn(amount=0)])
    assert resp.status_code == 422 and resp.json()["fields"] == ["1.amount"], resp.text
    assert http.post("/predict_batch", json=[]).status_code == 422
    assert http.post("/predict", content=b"{not json", headers={"content-type": "application/json"}
                     ).status_code == 422


def test_unknown_entities_get_defaults_and_a_flag(served):
    _, http, _, _ = served
    body = http.post("/predict", json=txn(user_id=987654321)).json()
    assert body["unknown_entities"] == ["user"] and body["defaults_used"] is True
    both = http.post("/predict", json=txn(user_id=987654321, merchant_id=2**62)).json()
    assert both["unknown_entities"] == ["user", "merchant"]
    assert 0.0 <= both["fraud_probability"] <= 1.0


def test_auth_missing_or_wrong_is_401_and_probes_stay_open(served):
    settings, _, key, _ = served
    with httpx.Client(base_url=str(settings.model_server_url), timeout=10) as anon:
        assert anon.post("/predict", json=txn()).status_code == 401
        assert anon.post("/predict_batch", json=[txn()], headers={"X-API-Key": key + "x"}).status_code == 401
        assert anon.post("/predict", json=txn(), headers={"X-API-Key": ""}).status_code == 401
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        assert "/predict" in anon.get("/docs.json").json()["paths"]
        assert anon.get("/").status_code == 200  # Swagger UI


def test_batch_keeps_order_and_flags_per_row(served):
    _, http, _, version = served
    batch = [txn(transaction_id=f"b-{i}", user_id=i) for i in range(40)] + [txn(transaction_id="new", user_id=10**12)]
    batch[5] = txn(transaction_id="b-5")  # user 12: known
    resp = http.post("/predict_batch", json=batch)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [p["transaction_id"] for p in out] == [b["transaction_id"] for b in batch]
    assert {p["model_version"] for p in out} == {version}
    assert out[-1]["unknown_entities"] == ["user"] and not out[5]["unknown_entities"]
    single = http.post("/predict", json=batch[5]).json()
    assert single["fraud_probability"] == pytest.approx(out[5]["fraud_probability"], abs=1e-9)


def test_metrics_expose_latency_decisions_misses_and_version(served):
    _, http, _, version = served
    http.post("/predict", json=txn(user_id=55555555))
    text = http.get("/metrics").text
    assert "flywheel_request_latency_seconds_bucket" in text
    assert 'flywheel_predictions_total{' in text and 'decision="legit"' in text
    assert 'flywheel_feature_misses_total{entity="user"}' in text
    assert 'flywheel_feature_lookups_total{entity="merchant"}' in text
    assert f'model_version="{version}"' in text and "flywheel_model_info" in text


def test_access_log_is_structured_and_has_no_secrets(served):
    settings, http, key, _ = served
    http.post("/predict", json=txn(transaction_id="log-probe"))
    log_file = settings.log_dir / "model-server.log"
    lines = [ln for ln in log_file.read_text().splitlines() if ln.startswith("{") and '"path": "/predict"' in ln]
    assert lines, "one JSON access line per request"
    import json

    entry = json.loads(lines[-1])
    assert {"method", "path", "status", "duration_ms"} <= entry.keys()
    text = log_file.read_text()
    assert key not in text and "log-probe" not in text


def test_openapi_fuzzing_never_gets_a_server_error(served):
    """Schemathesis generates valid and invalid requests for every operation of the OpenAPI."""
    settings, _, key, _ = served
    url = str(settings.model_server_url)
    schema = schemathesis.openapi.from_url(f"{url}/docs.json")
    errors: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=30, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def check(case):
            response = case.call(base_url=url, headers={"X-API-Key": key}, timeout=30)
            if response.status_code >= 500:
                errors.append(f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}")

        check()
    assert operations >= 2
    assert not errors, errors[:5]
