"""A bounded load test (loopback, ~40 s) during which the champion alias moves twice:
zero failed requests, and the responses switch model version without a restart. Then the alias
moves to a version training did not sign: the server refuses it and the champion serves on."""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from flywheel.stack import launcher as stack
from flywheel.training import promotion, registry
from flywheel.training.trainer import train

from .serving_support import END, champion_version, only, serve, txn

pytestmark = pytest.mark.integration
DURATION_S = float(os.environ.get("FLYWHEEL_SERVING_LOAD_S", "40"))
CLIENTS = 4


@pytest.fixture(scope="module")
def versions(services, loaded, spec):
    """(champion, other): a second registered version to promote to and roll back from."""
    champion = champion_version(spec, services)
    other = train(only(spec, "xgboost", n_estimators=4, max_depth=2), end=END, reason="serving load test",
                  settings=services)
    assert other.version != champion
    return champion, other.version


def _forged_copy(spec, version: str, settings) -> str:
    """A version registered outside training: the same artifacts, every tag of ``version`` copied
    (its signature included, which signs another version number)."""
    client = registry.client(settings)
    mv = client.get_model_version(spec.model_name, version)
    copy = client.copy_model_version(f"models:/{spec.model_name}/{version}", spec.model_name)
    for key, value in mv.tags.items():
        client.set_model_version_tag(spec.model_name, copy.version, key, value)
    return str(copy.version)


def _refresh_errors(http: httpx.Client) -> float:
    lines = [ln for ln in http.get("/metrics").text.splitlines()
             if ln.startswith('flywheel_model_refresh_errors_total{use_case="fraud"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


def _client_loop(url: str, key: str, stop: threading.Event, out: list, lock: threading.Lock, n: int) -> None:
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as http:
        i = 0
        while not stop.is_set():
            i += 1
            batch = i % 5 == 0
            started = time.monotonic()
            try:
                if batch:
                    resp = http.post("/fraud/predict_batch", json=[txn(user_id=u) for u in range(8)])
                    version = resp.json()[0]["model_version"] if resp.status_code == 200 else None
                else:
                    resp = http.post("/predict", json=txn(user_id=(n * 1000 + i) % 300))
                    version = resp.json()["model_version"] if resp.status_code == 200 else None
                status = resp.status_code
            except httpx.HTTPError as exc:
                status, version = repr(exc), None
            with lock:
                out.append((started, status, version, n))


def test_champion_moves_twice_under_load_without_a_failed_request(services, spec, versions):
    champion, other = versions
    settings, http, key = serve(spec, services, champion)
    results: list = []
    lock, stop = threading.Lock(), threading.Event()
    threads = [threading.Thread(target=_client_loop, args=(str(settings.model_server_url), key, stop, results,
                                                         lock, n)) for n in range(CLIENTS)]
    try:
        assert http.post("/predict", json=txn()).json()["model_version"] == champion
        for t in threads:
            t.start()
        time.sleep(DURATION_S / 3)
        moved_at = time.monotonic()
        promotion.promote(spec.model_name, other, reason="load test: promote", actor="test", settings=services)
        time.sleep(DURATION_S / 3)
        back_at = time.monotonic()
        promotion.rollback(spec.model_name, reason="load test: roll back", actor="test", settings=services)
        time.sleep(DURATION_S / 3)
        errors = _refresh_errors(http)
        forged = _forged_copy(spec, other, services)
        promotion.promote(spec.model_name, forged, reason="load test: a forged version", actor="test",
                          settings=services)
        time.sleep(settings.champion_refresh_s * 3 + 5)
        assert _refresh_errors(http) == errors + 1  # refused once, not downloaded again
        assert http.post("/predict", json=txn()).json()["model_version"] == champion
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        http.close()
        stack.down(settings, services=["model-server"])
        # The session stack is shared: leave the signed champion, or every later server refuses
        # to start on the forged version (CI's run of 2026-12-01 saw 35 tests fail that way).
        if registry.alias_version(spec.model_name, registry.CHAMPION, settings=services).version != champion:
            promotion.promote(spec.model_name, champion, reason="load test: restore the signed champion",
                              actor="test", settings=services)

    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, e.g. {failed[:3]}"
    assert len(results) > 100
    for n in range(CLIENTS):  # each client's requests are sequential: its view must be ordered
        seen = [v for _, _, v, client in sorted(results) if client == n]
        runs = [v for i, v in enumerate(seen) if i == 0 or v != seen[i - 1]]
        assert runs == [champion, other, champion], (n, runs)
    # Each switch is picked up within the refresh interval plus a model load, not at a restart.
    # Per client: the server's workers refresh on their own clocks, so another client may still
    # be answered by the old version after one client saw the new one (CI 2026-12-02).
    for n in range(CLIENTS):
        mine = sorted((t, v) for t, _, v, client in results if client == n)
        first_other = min(t for t, v in mine if v == other)
        back = min(t for t, v in mine if v == champion and t > first_other)
        assert moved_at - 1 < first_other < moved_at + settings.champion_refresh_s + 10, (n, first_other - moved_at)
        assert back_at - 1 < back < back_at + settings.champion_refresh_s + 10, (n, back - back_at)
