"""HTTP contract of the served bento (routes and schemas generated from models/fraud.yaml): valid,
invalid (422 naming the field), out-of-contract values (flagged by default: response, metric and
prediction log), unknown entity, auth missing/wrong, batch, the /predict alias, health, metrics by
use case, OpenAPI; the limits at the edge (413 by Content-Length before reading and counted on a
chunked body, 408 for a body that stops arriving); a server started from source with a spec that
rejects out-of-contract values (422) that refuses to start without an API key unless
`--arg insecure=true`; and Schemathesis over its OpenAPI (no 5xx)."""

from __future__ import annotations

import json
import time

import httpx
import hypothesis
import pytest
import schemathesis

from flywheel.monitoring.drift import load_predictions
from flywheel.serving.schemas import MAX_BATCH
from flywheel.stack import launcher as stack
from flywheel.training import compiled, registry

from .serving_support import (
    END,
    champion_version,
    chunked,
    has_series,
    raw_post,
    serve,
    source_server_env,
    start_source_server,
    stop_server,
    txn,
    wait_ready,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(services, loaded, spec):
    version = champion_version(spec, services)
    # A short body deadline keeps the 408 test short (the default is 5 s).
    settings, http, key = serve(spec, services.model_copy(update={"serving_body_timeout_s": 1.0}), version)
    try:
        yield settings, http, key, version
    finally:
        http.close()
        stack.down(settings, services=["model-server"])


def test_valid_transaction_is_scored_by_the_champion(served, spec):
    _, http, _, version = served
    resp = http.post(f"/{spec.name}/predict", json=txn())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert 0.0 <= body["probability"] <= 1.0
    assert body["decision"] == (body["probability"] >= body["threshold"])
    assert body["model_version"] == version and body["model_name"] == spec.model_name
    assert body["unknown"] == [] and body["unknown_entities"] == [] and body["defaults_used"] is False
    assert body["transaction_id"] == "t-1" and len(body["request_id"]) == 32
    alias = http.post("/predict", json=txn()).json()  # the only use case served: /predict is its alias
    assert alias["probability"] == pytest.approx(body["probability"], abs=1e-12)


def test_a_category_outside_the_contract_is_scored_and_flagged(served, spec):
    _, http, _, _ = served
    body = http.post(f"/{spec.name}/predict", json=txn(device="toaster", merchant_category="llamas")).json()
    assert sorted(body["unknown"]) == ["device", "merchant_category"] and 0.0 <= body["probability"] <= 1.0
    assert has_series(http.get("/metrics").text, "flywheel_unknown_values_total", column="device", use_case=spec.name)


@pytest.mark.parametrize(("change", "field"), [
    ({"amount": "lots"}, "amount"),
    ({"event_timestamp": "yesterday"}, "event_timestamp"),
    ({"user_id": None}, "user_id"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_input_is_422_naming_the_field(served, spec, change, field):
    _, http, _, _ = served
    body = {k: v for k, v in (txn() | change).items() if v is not None}
    resp = http.post(f"/{spec.name}/predict", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["fields"] == [field], resp.text
    assert field in resp.json()["error"]


def test_invalid_batch_row_is_422_naming_row_and_field(served, spec):
    _, http, _, _ = served
    resp = http.post(f"/{spec.name}/predict_batch", json=[txn(), txn(amount=None)])
    assert resp.status_code == 422 and resp.json()["fields"] == ["1.amount"], resp.text
    assert http.post(f"/{spec.name}/predict_batch", json=[]).status_code == 422
    assert http.post(f"/{spec.name}/predict", content=b"{not json", headers={"content-type": "application/json"}
                     ).status_code == 422
    nan = http.post(f"/{spec.name}/predict", content=json.dumps(txn(amount=float("nan"))).encode(),
                    headers={"content-type": "application/json"})
    assert nan.status_code == 422 and nan.json()["fields"] == ["amount"], nan.text
    assert http.post(f"/{spec.name}/predict_batch", json=[txn()] * (MAX_BATCH + 1)).status_code == 422


def test_a_value_outside_the_contract_range_is_scored_and_flagged_in_response_metric_and_log(served, spec):
    settings, http, _, _ = served
    body = http.post(f"/{spec.name}/predict", json=txn(transaction_id="oor-1", amount=60_000, user_id=-1))
    assert body.status_code == 200, body.text
    flagged = body.json()
    assert sorted(flagged["out_of_range"]) == ["amount", "user_id"] and 0.0 <= flagged["probability"] <= 1.0
    assert flagged["unknown"] == []
    within = http.post(f"/{spec.name}/predict", json=txn(transaction_id="oor-0", amount=50_000)).json()
    assert within["out_of_range"] == [], "the contract's bounds are inclusive"
    assert has_series(http.get("/metrics").text, "flywheel_out_of_range_values_total", use_case=spec.name,
                      column="amount")
    # The prediction log carries the flag, and the monitoring reader reads the log with it.
    ids = {flagged["request_id"]: True, within["request_id"]: False}
    deadline = time.monotonic() + 60
    while True:
        logs = load_predictions(spec, start=END, end=END, settings=settings)
        rows = logs[logs["request_id"].isin(ids)]
        if len(rows) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert dict(zip(rows["request_id"], rows["out_of_range"], strict=True)) == ids
    assert rows.set_index("request_id").loc[flagged["request_id"], "transaction_id"] == "oor-1"


def test_a_body_declared_over_the_limit_is_413_before_a_byte_is_read(served, spec):
    settings, _, key, _ = served
    limit = settings.serving_max_body_bytes
    # 50 MB declared, nothing sent: the answer comes without waiting for the body.
    status, headers, body = raw_post(str(settings.model_server_url), f"/{spec.name}/predict",
                                     {"X-API-Key": key, "Content-Type": "application/json",
                                      "Content-Length": str(50 * 1024 * 1024)})
    assert status == 413 and headers["connection"] == "close", body
    assert json.loads(body)["limit_bytes"] == limit and str(limit) in json.loads(body)["error"]
    # Authentication comes first: no key, no word about the limit.
    status, _, _ = raw_post(str(settings.model_server_url), f"/{spec.name}/predict",
                            {"Content-Length": str(50 * 1024 * 1024)})
    assert status == 401


def test_a_chunked_body_over_the_limit_is_413_once_the_limit_is_crossed(served, spec):
    settings, _, key, _ = served
    limit = settings.serving_max_body_bytes
    # No Content-Length, and the body never ends: the answer comes at the limit's next byte.
    status, _, body = raw_post(str(settings.model_server_url), f"/{spec.name}/predict_batch",
                               {"X-API-Key": key, "Content-Type": "application/json",
                                "Transfer-Encoding": "chunked"}, chunked(limit + 1))
    assert status == 413, body
    assert json.loads(body)["limit_bytes"] == limit


def test_a_body_that_stops_arriving_is_a_408_not_a_held_worker(served, spec):
    settings, http, key, _ = served
    status, _, body = raw_post(str(settings.model_server_url), f"/{spec.name}/predict",
                               {"X-API-Key": key, "Content-Type": "application/json", "Content-Length": "400"},
                               [b'{"transaction_id": "slow", '])
    assert status == 408, body
    assert "serving_body_timeout_s" in json.loads(body)["error"]
    assert http.post(f"/{spec.name}/predict", json=txn()).status_code == 200  # the worker serves on


def test_unknown_entities_get_defaults_and_a_flag(served, spec):
    _, http, _, _ = served
    body = http.post(f"/{spec.name}/predict", json=txn(user_id=987654321)).json()
    assert body["unknown_entities"] == ["user"] and body["defaults_used"] is True
    both = http.post(f"/{spec.name}/predict", json=txn(user_id=987654321, merchant_id=2**62)).json()
    assert both["unknown_entities"] == ["user", "merchant"]
    assert 0.0 <= both["probability"] <= 1.0


def test_auth_missing_or_wrong_is_401_and_probes_stay_open(served, spec):
    settings, _, key, _ = served
    with httpx.Client(base_url=str(settings.model_server_url), timeout=10) as anon:
        assert anon.post(f"/{spec.name}/predict", json=txn()).status_code == 401
        assert anon.post("/predict", json=txn()).status_code == 401
        assert anon.post(f"/{spec.name}/predict_batch", json=[txn()],
                         headers={"X-API-Key": key + "x"}).status_code == 401
        assert anon.post("/predict", json=txn(), headers={"X-API-Key": ""}).status_code == 401
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/readyz").status_code == 200
        assert anon.get("/").status_code == 200  # Swagger UI


def test_openapi_documents_the_spec_generated_schemas(served, spec):
    settings, _, _, _ = served
    doc = httpx.get(f"{settings.model_server_url}/docs.json", timeout=10).json()
    assert {f"/{spec.name}/predict", f"/{spec.name}/predict_batch", "/predict", "/predict_batch"} <= set(doc["paths"])
    body = doc["paths"][f"/{spec.name}/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"transaction_id", "user_id", "merchant_id", "amount", "event_timestamp",
                                       "merchant_category", "device", "country"}
    # Flagged, not enforced (serving.out_of_contract: flag): the range is documented, not a maximum.
    assert body["properties"]["amount"]["x-contract-maximum"] == spec.dataset.contract.columns["amount"].max
    assert "maximum" not in body["properties"]["amount"]
    responses = doc["paths"][f"/{spec.name}/predict"]["post"]["responses"]
    assert {"401", "408", "413", "422"} <= set(responses)
    response = doc["components"]["schemas"]["FraudPrediction"]["properties"]
    assert {"probability", "decision", "model_version", "request_id", "unknown", "out_of_range"} <= set(response)


def test_batch_keeps_order_and_flags_per_row(served, spec):
    _, http, _, version = served
    batch = [txn(transaction_id=f"b-{i}", user_id=i) for i in range(40)] + [txn(transaction_id="new", user_id=10**12)]
    batch[5] = txn(transaction_id="b-5")  # user 12: known
    resp = http.post(f"/{spec.name}/predict_batch", json=batch)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [p["transaction_id"] for p in out] == [b["transaction_id"] for b in batch]
    assert {p["model_version"] for p in out} == {version}
    assert out[-1]["unknown_entities"] == ["user"] and not out[5]["unknown_entities"]
    single = http.post(f"/{spec.name}/predict", json=batch[5]).json()
    # One row and 41 rows may be scored by different runtimes (ONNX Runtime, XGBoost): within parity.
    assert single["probability"] == pytest.approx(out[5]["probability"], abs=compiled.TOLERANCE)
    assert single["decision"] == out[5]["decision"]


def test_metrics_are_labelled_by_use_case(served, spec):
    _, http, _, version = served
    http.post(f"/{spec.name}/predict", json=txn(user_id=55555555))
    text = http.get("/metrics").text
    uc = spec.name
    assert has_series(text, "flywheel_request_latency_seconds_bucket", use_case=uc, endpoint="predict")
    assert has_series(text, "flywheel_predictions_total", use_case=uc, model_version=version, outcome="negative")
    assert has_series(text, "flywheel_feature_misses_total", use_case=uc, entity="user")
    assert has_series(text, "flywheel_feature_lookups_total", use_case=uc, entity="merchant")
    assert has_series(text, "flywheel_model_info", use_case=uc, model_version=version)


def test_access_log_is_structured_and_has_no_secrets(served):
    settings, http, key, _ = served
    http.post("/fraud/predict", json=txn(transaction_id="log-probe"))
    log_file = settings.log_dir / "model-server.log"
    lines = [ln for ln in log_file.read_text().splitlines() if ln.startswith("{") and '"path": "/fraud/predict"' in ln]
    assert lines, "one JSON access line per request"
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
    assert operations >= 4  # /fraud/predict, /fraud/predict_batch and their aliases
    assert not errors, errors[:5]


# ---- compiled inference and micro-batching --------------------------------------------------------

def test_packaging_recorded_a_checked_onnx_copy_on_the_version(served, spec):
    """The served version carries its ONNX copy: parity on the holdout, digest, measured limit."""
    from mlflow.artifacts import download_artifacts

    settings, _, _, version = served
    tags = registry.client(settings).get_model_version(spec.model_name, version).tags
    assert tags[compiled.TAGS.status] == "ok", tags.get(compiled.TAGS.reason)
    assert float(tags[compiled.TAGS.max_abs_diff]) <= compiled.TOLERANCE
    assert tags[compiled.TAGS.decisions_differ] == "0" and int(tags[compiled.TAGS.rows]) > 100
    assert int(tags[compiled.TAGS.max_rows]) in (0, *compiled.SIZES)
    path = download_artifacts(artifact_uri=tags[compiled.TAGS.artifact], tracking_uri=str(settings.mlflow_tracking_uri))
    import hashlib
    from pathlib import Path

    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == tags[compiled.TAGS.sha256]


def test_a_copy_whose_digest_does_not_match_is_never_served(served, spec):
    settings, _, _, version = served
    tags = dict(registry.client(settings).get_model_version(spec.model_name, version).tags)
    assert compiled.load(tags, spec.task, tracking_uri=str(settings.mlflow_tracking_uri)) is not None
    with pytest.raises(compiled.CompiledModelError, match="sha256"):
        compiled.load(tags | {compiled.TAGS.sha256: "0" * 64}, spec.task,
                      tracking_uri=str(settings.mlflow_tracking_uri))


def test_the_response_names_the_runtime_chosen_for_its_batch_size(served, spec):
    settings, http, _, version = served
    tags = registry.client(settings).get_model_version(spec.model_name, version).tags
    limit = int(tags[compiled.TAGS.max_rows])
    one = http.post(f"/{spec.name}/predict", json=txn())
    assert one.headers["x-flywheel-runtime"] == (compiled.ONNX if limit >= 1 else "xgboost")
    big = http.post(f"/{spec.name}/predict_batch", json=[txn(transaction_id=f"r{i}") for i in range(limit + 1)])
    assert big.status_code == 200 and big.headers["x-flywheel-runtime"] == "xgboost"
    text = http.get("/metrics").text
    assert has_series(text, "flywheel_batch_rows_count", use_case=spec.name, endpoint="predict_batch",
                      runtime="xgboost")


def test_concurrent_requests_are_micro_batched_and_each_gets_its_own_answer(served, spec):
    """64 different requests at once: each answer is that request's, equal to scoring it alone
    (within parity when batch and single row ran on different runtimes), and batches formed."""
    import asyncio
    import re

    settings, http, key, _ = served
    bodies = [txn(transaction_id=f"c-{i}", user_id=i % 50, merchant_id=i % 7, amount=5.0 + 17 * i)
              for i in range(64)]
    alone = {b["transaction_id"]: http.post(f"/{spec.name}/predict", json=b).json() for b in bodies}

    def calls(text: str) -> tuple[float, float]:
        values = {}
        for name in ("count", "sum"):
            found = re.findall(rf'flywheel_batch_rows_{name}{{[^}}]*endpoint="predict"[^}}]*}} ([0-9.e+]+)', text)
            values[name] = sum(float(v) for v in found)
        return values["count"], values["sum"]

    before = calls(http.get("/metrics").text)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(settings.model_server_url), headers={"X-API-Key": key},
                                     timeout=30, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(client.post(f"/{spec.name}/predict", json=b) for b in bodies))

    answers = asyncio.run(burst())
    assert all(r.status_code == 200 for r in answers)
    request_ids = set()
    for body, resp in zip(bodies, answers, strict=True):
        got, want = resp.json(), alone[body["transaction_id"]]
        assert got["transaction_id"] == body["transaction_id"]
        assert got["probability"] == pytest.approx(want["probability"], abs=compiled.TOLERANCE)
        assert got["decision"] == want["decision"] and got["unknown_entities"] == want["unknown_entities"]
        request_ids.add(got["request_id"])
    assert len(request_ids) == len(bodies)  # every request its own id (and prediction-log row)
    _, rows = (a - b for a, b in zip(calls(http.get("/metrics").text), before, strict=True))
    assert rows == len(bodies)  # each request scored exactly once


def test_requests_waiting_together_share_one_bounded_model_call(services, loaded, spec):
    """In the server's own routes, on the event loop: requests submitted together form batches of
    at most serving_batch_max_rows, and each answer equals that request scored alone."""
    import asyncio

    from flywheel.serving.predictor import Predictor
    from flywheel.serving.routes import ScoringRoutes

    champion_version(spec, services)
    settings = services.model_copy(update={"serving_batch_max_rows": 16})
    predictor = Predictor(spec, settings, watch=False, log_predictions=False)
    try:
        routes = ScoringRoutes(predictor)
        bodies = [json.dumps(txn(transaction_id=f"m-{i}", user_id=i, amount=3.0 + i)).encode() for i in range(40)]
        bodies.append(json.dumps(txn(amount=None)).encode())  # one bad request: its own 422, the rest unaffected

        async def together():
            return await asyncio.gather(*(routes.predict_async(b) for b in bodies))

        answers = asyncio.run(together())
        assert routes.batcher is not None and routes.batcher.batches == 3  # 40 rows, at most 16 a call
        assert answers[-1][0] == 422
        for body, (status, payload, runtime) in zip(bodies[:-1], answers[:-1], strict=True):
            status_alone, payload_alone, runtime_alone = routes.predict_one(body)
            got, want = json.loads(payload), json.loads(payload_alone)
            assert status == status_alone == 200 and got["transaction_id"] == want["transaction_id"]
            assert got["probability"] == pytest.approx(want["probability"], abs=compiled.TOLERANCE)
            assert got["decision"] == want["decision"]
            assert runtime in {predictor.models.current.runtime_for(16), predictor.models.current.runtime_for(8)}
    finally:
        predictor.close()


# ---- a server from source: a spec that rejects out-of-contract values, and no API key ------------

@pytest.fixture(scope="module")
def rejecting(served, spec, tmp_path_factory):
    """``bentoml serve serving.service:ModelService`` from source, as a deployment runs it, with no
    API key (an empty FLYWHEEL_API_KEY), twice at once: without ``--insecure`` (it must refuse to
    start) and with ``--arg insecure=true``, serving fraud's spec with ``serving:
    {out_of_contract: reject}`` and the same champion next to the module's server. Yields (its
    URL, its log, the refused one's process and log)."""
    import yaml

    from flywheel.core.config import PROJECT_ROOT

    settings, _, _, _ = served
    folder = tmp_path_factory.mktemp("reject")
    (folder / "models").mkdir()
    (folder / "examples").symlink_to(PROJECT_ROOT / "examples")  # the spec's own feature code: ../examples
    raw = yaml.safe_load(spec._path.read_text()) | {"serving": {"out_of_contract": "reject"}}
    (folder / "models" / "fraud.yaml").write_text(yaml.safe_dump(raw))
    port = settings.ports.model_server + 50  # inside this block, 50 from its other ports (tests/ports.py)
    env = source_server_env(settings, FLYWHEEL_SPECS_DIR=str(folder / "models"), FLYWHEEL_API_KEY="",
                            FLYWHEEL_PORTS__MODEL_SERVER=str(port))
    processes = {}
    for name, args in (("open", ["--arg", "insecure=true"]), ("refused", [])):
        # each its own BentoML home: it clears its metrics folder
        processes[name] = start_source_server(env | {"BENTOML_HOME": str(folder / f"bentoml-{name}")}, port,
                                              folder / f"{name}.log", *args)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(processes["open"], url, folder / "open.log")
        yield url, folder / "open.log", processes["refused"], folder / "refused.log"
    finally:
        for started in processes.values():
            stop_server(started)


def test_without_an_api_key_the_server_refuses_to_start_unless_insecure(rejecting, spec):
    url, log, refused, refused_log = rejecting
    assert refused.wait(timeout=300) != 0
    last = refused_log.read_text().strip().splitlines()[-1]
    assert last.startswith("flywheel model server: no API key configured: set FLYWHEEL_API_KEY"), last
    assert "--insecure" in last
    # The one started with `--arg insecure=true` serves without a key, and says so loudly.
    open_answer = httpx.post(f"{url}/{spec.name}/predict", json=txn(), timeout=30)
    assert open_answer.status_code == 200, open_answer.text
    assert "SERVING WITHOUT AUTHENTICATION" in log.read_text()


@pytest.mark.parametrize(("change", "field"), [({"amount": 60_000}, "amount"), ({"user_id": -1}, "user_id"),
                                               ({"device": "toaster"}, "device")])
def test_a_spec_that_rejects_out_of_contract_values_answers_422_naming_the_field(rejecting, spec, change, field):
    url, *_ = rejecting
    resp = httpx.post(f"{url}/{spec.name}/predict", json=txn(**change), timeout=30)
    assert resp.status_code == 422 and resp.json()["fields"] == [field], resp.text
    batch = httpx.post(f"{url}/{spec.name}/predict_batch", json=[txn(), txn(**change)], timeout=30)
    assert batch.status_code == 422 and batch.json()["fields"] == [f"1.{field}"], batch.text


def test_the_rejecting_servers_openapi_holds_the_limits_it_enforces(rejecting, spec):
    url, *_ = rejecting
    doc = httpx.get(f"{url}/docs.json", timeout=30).json()
    body = doc["paths"][f"/{spec.name}/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    amount = spec.dataset.contract.columns["amount"]
    assert body["properties"]["amount"]["minimum"] == amount.min and body["properties"]["amount"]["maximum"] == amount.max
    assert body["properties"]["device"]["enum"] == spec.dataset.contract.columns["device"].allowed
