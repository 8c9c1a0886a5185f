"""A challenger taken through every rollout stage on real traffic (loopback, bounded), then a bad
one rolled back, without a single failed request.

The served spec says ``rollout.mode: shadow``. Under a steady load on the model server: the
challenger enters shadow (every response still the champion's, its scores in the prediction
log); ``flywheel rollout``'s step reads those rows and moves it to canary (each entity answered
by the version its hash picks, always the same); the next step makes it champion. A second
challenger whose threshold tag is broken (every transaction flagged) enters at canary; the step
sees its agreement fail and takes it out of traffic. Every move is in the audit log.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from flywheel.core.spec import load_spec_file
from flywheel.monitoring import rollout
from flywheel.serving.challenger import canary_rows
from flywheel.stack import launcher as stack
from flywheel.training import promotion, registry, stages
from flywheel.training.trainer import train

from .serving_support import END, champion_version, only, serve, txn

pytestmark = pytest.mark.integration
CLIENTS = 3
USERS = 200
ROLLOUT = {"mode": "shadow", "canary_share": 0.5, "min_requests": 150, "min_agreement": 0.9,
           "max_p99_ms": 2000, "max_error_rate": 0.0, "min_labelled_rows": 0}


@pytest.fixture(scope="module")
def served_spec(services, loaded, spec, tmp_path_factory):
    """(settings whose specs_dir holds fraud with a rollout section, that spec)."""
    import yaml

    folder = tmp_path_factory.mktemp("rollout-specs")
    raw = yaml.safe_load(spec._path.read_text())
    for feature in raw["features"]["request"].values():  # its custom code, found from the new folder
        if isinstance(feature, dict) and feature.get("fn") == "python":
            path, _, name = feature["function"].partition(":")
            feature["function"] = f"{(spec._path.parent / path).resolve()}:{name}"
    (folder / "fraud.yaml").write_text(yaml.safe_dump({**raw, "rollout": ROLLOUT}, sort_keys=False))
    return services.model_copy(update={"specs_dir": folder}), load_spec_file(folder / "fraud.yaml")


def _no_gate(spec):
    """The spec with a gate no version passes: the rollout, not training, moves the aliases here."""
    return spec.model_copy(update={"training": spec.training.model_copy(update={"min_improvement": 1.0})})


def _load(url: str, key: str, stop: threading.Event, out: list, lock: threading.Lock, n: int) -> None:
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as http:
        i = 0
        while not stop.is_set():
            i += 1
            user = (n * 7919 + i) % USERS
            try:
                if i % 7 == 0:
                    resp = http.post("/fraud/predict_batch", json=[txn(user_id=u) for u in range(5)])
                    version, user = (resp.json()[0]["model_version"] if resp.status_code == 200 else None), None
                else:
                    resp = http.post("/predict", json=txn(user_id=user))
                    version = resp.json()["model_version"] if resp.status_code == 200 else None
                status = resp.status_code
            except httpx.HTTPError as exc:
                status, version = repr(exc), None
            with lock:
                out.append((time.monotonic(), status, version, user))


def _step_until_moved(spec, settings, *, timeout: float = 120) -> tuple[rollout.StepResult, float]:
    """The step that moved (or the last one), and when it began: every response completed before
    then was served before the move."""
    deadline = time.monotonic() + timeout
    while True:
        began = time.monotonic()
        result = rollout.step(spec, ds=END, actor="test", settings=settings)
        if result.record is not None or time.monotonic() > deadline:
            return result, began
        time.sleep(2)


def _since(results, lock, start: float) -> list:
    with lock:
        return [r for r in results if r[0] >= start]


def _wait_for(results, lock, start: float, version: str, *, timeout: float = 30) -> float:
    """When a response of ``version`` first came after ``start``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = [t for t, _, v, _ in _since(results, lock, start) if v == version]
        if seen:
            return min(seen)
        time.sleep(0.2)
    raise AssertionError(f"no response of v{version} within {timeout} s")


def test_a_challenger_goes_through_every_stage_and_a_bad_one_is_rolled_back(services, spec, served_spec):
    settings, rolled = served_spec
    original = champion_version(spec, services)
    good = train(_no_gate(only(spec, "xgboost")), end=END, reason="rollout test: a good challenger",
                 settings=services)
    bad = train(_no_gate(only(spec, "xgboost", n_estimators=4, max_depth=2)), end=END,
                reason="rollout test: a bad one", settings=services)
    assert not good.promoted and not bad.promoted
    registry.client(services).set_model_version_tag(spec.model_name, bad.version, "threshold", "0.0")
    served, http, key = serve(rolled, settings, original)
    results: list = []
    lock, stop = threading.Lock(), threading.Event()
    threads = [threading.Thread(target=_load, args=(str(served.model_server_url), key, stop, results, lock, n))
               for n in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        # shadow: the challenger scores every request; the champion answers all of them
        shadow_at = time.monotonic()
        stages.begin(spec.model_name, good.version, "shadow", reason="rollout test", actor="test",
                     expected_champion=original, settings=services)
        to_canary, canary_at = _step_until_moved(rolled, services)
        assert to_canary.record is not None and to_canary.record.action == "canary", to_canary.verdict
        assert to_canary.verdict.facts["requests"] >= ROLLOUT["min_requests"]
        assert to_canary.verdict.facts["agreement"] >= ROLLOUT["min_agreement"]
        assert {v for t, s, v, _ in _since(results, lock, shadow_at) if t < canary_at} == {original}
        # canary: each entity is answered by the version its hash picks
        steady = _wait_for(results, lock, canary_at, good.version) + 3 * settings.champion_refresh_s + 2
        time.sleep(max(0.0, steady + 4 - time.monotonic()))  # every worker serves the canary for a while
        to_champion, promoted_at = _step_until_moved(rolled, services)
        assert to_champion.record is not None and to_champion.record.action == "promote", to_champion.verdict
        moved_at = time.monotonic()  # the move is the step's last act
        canary = [(u, v) for t, _, v, u in _since(results, lock, steady) if t < promoted_at and u is not None]
        assert len(canary) > 50
        picked = dict(zip(range(USERS), canary_rows(list(range(USERS)), version=good.version,
                                                    share=ROLLOUT["canary_share"]).tolist(), strict=True))
        assert all(v == (good.version if picked[u] else original) for u, v in canary), "sticky per entity"
        assert {v for _, v in canary} == {original, good.version}
        # champion: the challenger answers everything
        alone = moved_at + 3 * settings.champion_refresh_s + 2
        time.sleep(max(0.0, alone + 3 - time.monotonic()))
        # a bad challenger at canary: served to its share, then rolled back on its agreement
        bad_at = time.monotonic()
        stages.begin(spec.model_name, bad.version, "canary", reason="rollout test: bad", actor="test",
                     expected_champion=good.version, settings=services)
        assert {v for t, _, v, _ in _since(results, lock, alone) if t < bad_at} == {good.version}
        _wait_for(results, lock, bad_at, bad.version)
        aborted, _ = _step_until_moved(rolled, services)
        assert aborted.record is not None and aborted.record.action == "abort", aborted.verdict
        assert "agreement" in aborted.verdict.reason
        assert stages.current(spec.model_name, settings=services) is None
        back = time.monotonic() + 3 * settings.champion_refresh_s + 2
        time.sleep(back - time.monotonic() + 2)
        assert {v for t, _, v, _ in _since(results, lock, back)} == {good.version}
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        http.close()
        stack.down(served, services=["model-server"])
        if stages.current(spec.model_name, settings=services) is not None:
            registry.client(services).delete_registered_model_alias(spec.model_name, stages.ROLLOUT)
        promotion.promote(spec.model_name, original, reason="rollout test: restore the champion", actor="test",
                          settings=services)

    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
    moves = [(r.action, r.to_version, r.outcome) for r in promotion.history(spec.model_name, settings=services)
             if r.actor == "test" and r.outcome == "done"]
    assert [m for m in moves if m[1] in (good.version, bad.version)] == [
        ("shadow", good.version, "done"), ("canary", good.version, "done"), ("promote", good.version, "done"),
        ("canary", bad.version, "done"), ("abort", bad.version, "done")]


def test_the_server_swaps_on_a_registry_event_before_any_poll(services, spec, served_spec):
    """Reload on push: with a refresh interval no test waits for, only MLflow's webhook can make
    the server follow the alias; an unsigned event is refused."""
    from pydantic import SecretStr

    settings, rolled = served_spec
    original = champion_version(spec, services)
    other = train(_no_gate(only(spec, "xgboost", n_estimators=8, max_depth=3)), end=END,
                  reason="push test: another version", settings=services)
    pushed = settings.model_copy(update={"champion_refresh_s": 3600.0,
                                         "serving_registry_webhook_secret": SecretStr("push-test-secret")})
    served, http, _ = serve(rolled, pushed, original)
    try:
        assert http.post("/predict", json=txn()).json()["model_version"] == original
        forged = http.post("/registry/events", content=b'{"data": {"name": "fraud-model"}}',
                           headers={"x-mlflow-signature": "v1,AAAA", "x-mlflow-timestamp": str(int(time.time())),
                                    "x-mlflow-delivery-id": "x"})
        assert forged.status_code == 401
        promotion.promote(spec.model_name, other.version, reason="push test", actor="test", settings=services)
        deadline = time.monotonic() + 60
        while http.post("/predict", json=txn()).json()["model_version"] != other.version:
            assert time.monotonic() < deadline, "the webhook never made the server follow the alias"
            time.sleep(0.2)
    finally:
        http.close()
        stack.down(served, services=["model-server"])
        _delete_webhooks(services)  # later servers on this port are not told of events
        promotion.promote(spec.model_name, original, reason="push test: restore the champion", actor="test",
                          settings=services)


def _delete_webhooks(settings) -> None:
    import os

    from mlflow import MlflowClient

    from flywheel.stack import security

    admin = security.mlflow_identity_env(settings, "admin")
    saved = {k: os.environ.get(k) for k in admin}
    os.environ.update(admin)
    try:
        client = MlflowClient(tracking_uri=str(settings.mlflow_tracking_uri))
        for hook in client.list_webhooks():
            if hook.name.startswith("flywheel-model-server-"):
                client.delete_webhook(hook.webhook_id)
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
