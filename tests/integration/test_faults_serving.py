"""Faults while serving (issue 14 §6), on real processes: a Redis online store that hangs and
dies, an MLflow that dies. Each ends with the prediction log reconciled against the answers.

- **Redis down**: the model server answers 503 (``the online feature store is unavailable``)
  within its timeout (``serving_online_timeout_s``), for a hung Redis (SIGSTOP) as for a dead one
  (SIGKILL), never a hang and never a silent default; once Redis is back, requests score with
  their features again. Only answered predictions are logged: every 200 once, no 503.
- **MLflow down**: the loaded champion keeps serving while its champion check fails; training
  fails with an error and no alias moves or version appears.

The module runs its own SeaweedFS, MLflow and Redis (port block 16000): the session stack's and
the machine's Redis serve other tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from flywheel.core.config import Settings
from flywheel.core.spec import load_spec_file
from flywheel.monitoring.drift import load_predictions
from flywheel.runs import data_day, training_run
from flywheel.stack import launcher as stack
from flywheel.training import promotion, registry
from tests.ports import ports

from .serving_support import source_server

pytestmark = pytest.mark.integration
FIRST, DAYS, RIDERS = date(2026, 7, 1), 4, 40
PORTS = ports(16000)
REDIS_PORT = PORTS.model_server + 10
SPEC = {
    "name": "trips",
    "model_name": "trips-long",
    "owner": "fault-test",
    "dataset": {
        "name": "trips", "source": "{home}/landing/trips/ds={ds}", "format": "csv", "timestamp": "started_at",
        "key": "trip_id",
        "contract": {"columns": {
            "trip_id": {"type": "string", "nullable": False, "unique": True},
            "started_at": {"type": "datetime", "nullable": False},
            "rider": {"type": "int", "nullable": False, "min": 0},
            "km": {"type": "float", "nullable": False, "min": 0, "max": 100},
            "minutes": {"type": "float", "nullable": False, "min": 0},
        }},
    },
    "label": {"expr": "minutes > 25", "name": "long_trip"},
    "features": {
        "entities": {"rider": {"keys": ["rider"], "aggregations": {
            "rider_trips_7d": {"fn": "count", "window": "7d", "default": 0},
            "rider_km_mean_7d": {"fn": "mean", "column": "km", "window": "7d"}}}},
        "request": {"km": {"fn": "value", "column": "km"}, "hour": {"fn": "hour"}},
    },
    "training": {"lookback_days": 10, "split": {"train": 0.7, "validation": 0.15, "holdout": 0.15},
                 "min_improvement": -1.0, "slice_tolerance": 1.0,
                 "candidates": {"xgboost": {"params": {"n_estimators": 20, "max_depth": 3}}},
                 "search": {"trials": 0}},
    "monitoring": {"features": ["km"], "min_rows": 10},
}


def _land(home: Path, day: date, rng: np.random.Generator) -> None:
    n = 300
    km = rng.gamma(2.0, 2.0, n).round(2)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    frame = pd.DataFrame({
        "trip_id": [f"{day:%m%d}-{k:04d}" for k in range(n)],
        "started_at": [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_400, n))],
        "rider": rng.integers(0, RIDERS, n), "km": km,
        "minutes": (km * 5 + rng.normal(0, 4, n)).clip(1).round(1)})
    folder = home / "landing" / "trips" / f"ds={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "part-0.csv", index=False)


class Redis:
    """A redis-server of this module's own, persisting to an append-only file (a restart keeps
    the materialized features, as a production Redis with AOF does)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        deadline = time.monotonic() + 30
        while True:
            try:
                redis.Redis(port=REDIS_PORT, socket_connect_timeout=1).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[tuple[Settings, object, Redis, Path]]:
    home = tmp_path_factory.mktemp("faults-serving-home")
    redis = Redis(tmp_path_factory.mktemp("redis"))
    redis.start()
    settings = Settings(home=home, ports=PORTS, champion_refresh_s=1.0, prediction_flush_s=1.0,
                        online_store={"type": "redis", "connection_string": f"127.0.0.1:{REDIS_PORT}"})
    settings = stack.up(settings, services=["seaweedfs", "mlflow"])
    try:
        specs = home / "specs"
        specs.mkdir()
        (specs / "trips.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
        spec = load_spec_file(specs / "trips.yaml")
        settings = settings.model_copy(update={"specs_dir": specs})
        rng = np.random.default_rng(3)
        for offset in range(DAYS):
            _land(home, FIRST + timedelta(days=offset), rng)
            data_day(spec, (FIRST + timedelta(days=offset)).isoformat(), run_id="faults", settings=settings)
        trained = training_run(spec, FIRST + timedelta(days=DAYS - 1), reason="fault test", settings=settings)
        if not trained.promoted:
            promotion.promote(spec.model_name, trained.version, reason="fault test", actor="test", settings=settings)
        yield settings, spec, redis, home
    finally:
        stack.down(settings)
        if redis.proc is not None and redis.proc.poll() is None:
            redis.signal(signal.SIGKILL)


def _server(settings: Settings, folder: Path):
    """``bentoml serve`` from source on the module's specs, with the stack's environment for it."""
    return source_server(settings, folder, port=settings.ports.model_server,
                         FLYWHEEL_SPECS_DIR=str(settings.specs_dir))


def _trip(k: int, day: date) -> dict:
    return {"trip_id": f"live-{day:%m%d}-{k}", "started_at": f"{day.isoformat()}T{8 + k % 12:02d}:30:00Z",
            "rider": k % RIDERS, "km": float(1 + k % 7)}


def _timed(http: httpx.Client, body: dict) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    answer = http.post("/trips/predict", json=body)
    return answer, time.monotonic() - started


def test_redis_hung_or_down_is_a_503_within_the_timeout_and_serving_recovers(world, tmp_path):
    settings, spec, redis, _ = world
    day = FIRST + timedelta(days=DAYS - 1)  # its own day of the prediction log
    answered: list[str] = []
    with _server(settings, tmp_path) as http:
        for k in range(20):
            answer, _ = _timed(http, _trip(k, day))
            assert answer.status_code == 200 and answer.json()["unknown_entities"] == [], answer.text
            answered.append(answer.json()["request_id"])
        for sig, state in ((signal.SIGSTOP, "hung"), (signal.SIGKILL, "down")):
            redis.signal(sig)
            for k in range(5):
                answer, took = _timed(http, _trip(100 + k, day))
                assert answer.status_code == 503, (state, answer.status_code, answer.text)
                assert "online feature store is unavailable" in answer.json()["error"]
                assert took < 6 * settings.serving_online_timeout_s + 2, f"Redis {state}: answered in {took:.1f} s"
            if sig == signal.SIGSTOP:
                redis.signal(signal.SIGCONT)
                answer, _ = _timed(http, _trip(150, day))
                assert answer.status_code == 200, f"a resumed Redis serves again: {answer.text}"
                answered.append(answer.json()["request_id"])
        redis.start()  # back, with its append-only file: the features are there again
        deadline = time.monotonic() + 30
        while True:
            answer, _ = _timed(http, _trip(200, day))
            if answer.status_code == 200:
                break
            assert time.monotonic() < deadline, f"serving did not recover: {answer.status_code} {answer.text}"
            time.sleep(0.5)
        answered.append(answer.json()["request_id"])
        assert answer.json()["unknown_entities"] == [], "the restarted Redis kept its features"
        for k in range(10):
            answer, _ = _timed(http, _trip(300 + k, day))
            assert answer.status_code == 200
            answered.append(answer.json()["request_id"])
    logged = load_predictions(spec, start=day, end=day, settings=settings)
    ours = logged[logged["request_id"].isin(answered)]
    assert len(ours) == len(answered) and ours["request_id"].is_unique, "every answer logged once"
    refused = {_trip(100 + k, day)["trip_id"] for k in range(5)}
    assert not logged["trip_id"].isin(refused).any(), "no 503 is logged"
    assert len(logged) == len(answered)


def _versions(model_name: str, settings: Settings) -> int:
    return len(registry.client(settings).search_model_versions(f"name='{model_name}'"))


def _kill_mlflow(settings: Settings) -> None:
    (mlflow,) = [s for s in stack.status(settings) if s.name == "mlflow"]
    assert mlflow.pid
    os.killpg(os.getpgid(mlflow.pid), signal.SIGKILL)


def test_mlflow_down_the_champion_serves_on_and_training_fails_without_moving_an_alias(world, tmp_path,
                                                                                      monkeypatch):
    settings, spec, _, _ = world
    champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    versions = _versions(spec.model_name, settings)
    day = FIRST + timedelta(days=DAYS - 2)
    with _server(settings, tmp_path) as http:
        _kill_mlflow(settings)
        answered = []
        for k in range(30):  # 30 requests over ~6 s, while the champion check (every 1 s) fails
            answer = http.post("/trips/predict", json=_trip(k, day))
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == str(champion.version)
            answered.append(answer.json()["request_id"])
            time.sleep(0.2)
        # The champion check met the dead registry meanwhile (MLflow's client retries it with
        # backoff, off the request path), and the loaded champion answered every request.
        assert "registered-models/alias" in (tmp_path / "model-server.log").read_text()
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # fail in seconds, not minutes
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        with pytest.raises(Exception) as failed:  # noqa: PT011 - whatever MLflow's client raises, it fails
            training_run(spec, FIRST + timedelta(days=DAYS - 1), reason="mlflow down", settings=settings)
        assert "Connection refused" in str(failed.value) or "Max retries" in str(failed.value), failed.value
    restarted = stack.up(settings, services=["mlflow"])
    after = registry.alias_version(spec.model_name, registry.CHAMPION, settings=restarted)
    assert str(after.version) == str(champion.version), "no alias moved"
    assert _versions(spec.model_name, restarted) == versions, "no version registered"
    logged = load_predictions(spec, start=day, end=day, settings=restarted)
    assert logged["request_id"].isin(answered).sum() == len(answered), "every answer logged once"
