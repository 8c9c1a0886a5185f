"""The prediction log keeps every acknowledged prediction, exactly once, through a SIGKILL.

The real model server (the session's champion, its own spool folder) takes bounded load on
127.0.0.1 (4 clients, at most 400 requests); once 150 have been answered it is SIGKILLed with
every worker process it started, mid-load. It leaves spooled segments behind. Restarted, it uploads
them first; stopped with SIGTERM, it drains its own. Then every request id that got a 200 is in
the store exactly once, no logged request id appears twice, and the spool is empty.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import httpx
import psutil
import pytest

from flywheel.monitoring.drift import load_predictions
from flywheel.stack import launcher as stack
from flywheel.training.packaging import build_bento

from .serving_support import END, champion_version, txn

pytestmark = pytest.mark.integration
CLIENTS, PER_CLIENT, KILL_AFTER = 4, 100, 150


def _client(url: str, key: str, n: int, stop: threading.Event, acked: dict, lock: threading.Lock) -> None:
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as http:
        for i in range(PER_CLIENT):
            if stop.is_set():
                return
            try:
                resp = http.post("/predict", json=txn(transaction_id=f"crash-{n}-{i}", user_id=(n * 100 + i) % 300))
            except httpx.HTTPError:
                continue  # the server is gone: not acknowledged
            if resp.status_code == 200:
                with lock:
                    acked[resp.json()["request_id"]] = resp.json()["transaction_id"]


def _segments(folder) -> list:
    return [p for p in folder.rglob("*.seg") if p.stat().st_size]


def _kill_tree(pid: int) -> None:
    """SIGKILL the server and every worker it started (BentoML's workers run in sessions of their own)."""
    root = psutil.Process(pid)
    victims = [root, *root.children(recursive=True)]
    assert len(victims) > 1, "the server runs its workers as child processes"
    for proc in victims:
        proc.send_signal(signal.SIGKILL)
    _, alive = psutil.wait_procs(victims, timeout=30)
    assert not alive, alive


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _serve(settings, tag: str):
    served = stack.up(settings, services=["model-server"], bento=tag)
    return served, served.api_key.get_secret_value()


def test_every_acknowledged_prediction_is_stored_once_after_a_sigkill(services, loaded, spec, tmp_path):
    version = champion_version(spec, services)
    settings = services.model_copy(update={"prediction_spool_dir": tmp_path / "spool", "prediction_flush_s": 1.0})
    tag = build_bento(spec, version=version, settings=settings)
    served, key = _serve(settings, tag)
    acked: dict[str, str] = {}
    lock, stop = threading.Lock(), threading.Event()
    clients = [threading.Thread(target=_client, args=(str(served.model_server_url), key, n, stop, acked, lock))
               for n in range(CLIENTS)]
    try:
        for c in clients:
            c.start()
        deadline = time.monotonic() + 120
        while len(acked) < KILL_AFTER:
            assert any(c.is_alive() for c in clients) and time.monotonic() < deadline, len(acked)
            time.sleep(0.01)
        _kill_tree(int((settings.run_dir / "model-server.pid").read_text().split()[0]))  # mid-load
        stop.set()
        for c in clients:
            c.join(timeout=30)
        assert len(acked) < CLIENTS * PER_CLIENT, "the kill came before the load ended"
        while not _port_free(settings.ports.model_server):
            assert time.monotonic() < deadline, "the killed server's port stayed open"
            time.sleep(0.2)
        left = _segments(tmp_path / "spool")
        assert left, "the kill left spooled rows behind (what this test is about)"

        served, key = _serve(settings, tag)  # uploads the killed process's segments first
        with httpx.Client(base_url=str(served.model_server_url), headers={"X-API-Key": key}, timeout=10) as http:
            for i in range(20):  # and serves meanwhile: these are drained at shutdown
                resp = http.post("/predict", json=txn(transaction_id=f"crash-after-{i}", user_id=i))
                assert resp.status_code == 200, resp.text
                acked[resp.json()["request_id"]] = resp.json()["transaction_id"]
        assert _wait_gone(left), "the recovered segments are uploaded (and only then removed)"
    finally:
        stop.set()
        stack.down(settings, services=["model-server"])  # SIGTERM: drains its spool

    assert not _segments(tmp_path / "spool"), "the SIGTERM drain left segments behind"
    logged = load_predictions(spec, start=END, end=END, settings=services)
    ours = logged[logged["transaction_id"].str.startswith("crash-")]
    counts = ours["request_id"].value_counts()
    assert counts.max() == 1, counts[counts > 1]  # no row stored twice
    missing = set(acked) - set(counts.index)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged predictions are not in the store"
    by_id = ours.set_index("request_id")["transaction_id"]
    assert all(by_id[rid] == txn_id for rid, txn_id in acked.items())


def _wait_gone(paths, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while any(p.exists() for p in paths):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
