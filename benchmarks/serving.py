"""Serving benchmark: the Flywheel service on its generic path (schemas, featurizer and routes
generated from ``models/fraud.yaml``, ``/fraud/predict``) against a FastAPI floor (fraud's request
model and featurization written by hand: the fixed floor), a default BentoML service and
``mlflow models serve`` — same run, same machine, same model, same Redis online features; load
on 127.0.0.1 only. Writes ``benchmarks/results/serving.json`` and compares its ratios with the
previous run's (``change_vs_previous``: the generic path must stay within 10 % of it).

    .venv/bin/python -m benchmarks.serving                 # defaults: ~3-4 min on 2 cores
    .venv/bin/python -m benchmarks.serving --duration 5 --home /tmp/fw-bench   # reuse a prepared home

Latency is each request's own (closed loop, one timer per request: no averaging and no
coordinated omission from a rate-based schedule). The servers run one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from flywheel.core.config import PROJECT_ROOT, Ports, Settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "serving.json"
FIRST_DAY, DAYS = date(2026, 1, 1), 9
END = FIRST_DAY + timedelta(days=DAYS - 1)
HOST = "127.0.0.1"
SERVERS = ["fastapi_floor", "null_asgi", "flywheel", "bentoml_default", "mlflow_serve"]


# ---- environment: stack, data, model ------------------------------------------------------------

def xgboost_only(spec: Any) -> Any:
    """The benchmark serves one XGBoost model everywhere: `mlflow models serve` scores an XGBoost
    pyfunc from the feature matrix (the PyTorch family's module takes two tensors), and the batch
    target compares with in-process XGBoost scoring."""
    t = spec.training
    return spec.model_copy(update={"training": t.model_copy(update={
        "candidates": {"xgboost": t.candidates["xgboost"]}})})


def prepare(home: Path, offset: int, redis_db: int, *, training: Any = None) -> Settings:
    """SeaweedFS + MLflow, DAYS of data through ingest/validate/features into Redis, a champion
    (trained from ``training(spec)`` when given: another benchmark's quicker spec)."""
    from examples.fraud.generator import write_landing
    from flywheel.core.spec import load_spec
    from flywheel.data.ingest import ingest
    from flywheel.data.validation import validate_partition
    from flywheel.features import store as features
    from flywheel.stack import launcher as stack
    from flywheel.training import registry
    from flywheel.training.trainer import train

    settings = Settings(home=home, ports=Ports().shifted(offset),
                        online_store={"type": "redis", "connection_string": f"{HOST}:6379,db={redis_db}"})
    settings = stack.up(settings, services=["seaweedfs", "mlflow"])
    spec = xgboost_only(load_spec(settings=settings))
    if registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings) is None:
        import redis

        redis.Redis(host=HOST, db=redis_db).flushdb()
        write_landing(settings.home / "landing", FIRST_DAY, DAYS, spec.generator)
        features.apply(spec, settings)
        for i in range(DAYS):
            day = FIRST_DAY + timedelta(days=i)
            ingest(spec, day.isoformat(), run_id="bench", settings=settings)
            validate_partition(spec, day.isoformat(), settings=settings)
            features.compute_aggregates(spec, day, settings=settings)
        features.materialize(spec, END, settings=settings)
        train(training(spec) if training else spec, end=END, reason="benchmark", settings=settings)
    return settings


SECOND, SECOND_FIRST_DAY = "flights", date(2013, 6, 1)


def prepare_second(settings: Settings) -> list[dict[str, Any]]:
    """The second use case (models/flights.yaml, regression, composite route key), when its spec
    exists: DAYS of its real data through the same stages and a champion; returns request bodies
    (the last day's flights). Served by the same Flywheel server (every use case with a champion)."""
    from examples.flights.landing import write_landing
    from examples.flights.traffic import landed_day, requests_of
    from flywheel.core.spec import load_spec
    from flywheel.runs import data_day
    from flywheel.training import registry
    from flywheel.training.trainer import train

    spec = load_spec(SECOND, settings=settings)
    last = SECOND_FIRST_DAY + timedelta(days=DAYS - 1)
    if registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings) is None:
        write_landing(settings.home / "landing", SECOND_FIRST_DAY, DAYS)
        for i in range(DAYS):
            data_day(spec, (SECOND_FIRST_DAY + timedelta(days=i)).isoformat(), run_id="bench", settings=settings)
        trained = train(xgboost_only(spec), end=last, reason="benchmark", settings=settings)
        if not trained.promoted:  # the gate is not what is measured: serve the model anyway
            from flywheel.training import promotion

            promotion.promote(spec.model_name, trained.version, reason=f"benchmark ({trained.reason})",
                              actor="benchmark", settings=settings)
    return requests_of(landed_day(settings, spec, last), spec)[:256]


def bodies(n: int = 256) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    cats = ["grocery", "electronics", "travel", "restaurants", "fuel"]
    return [{"transaction_id": f"b{i}", "user_id": int(rng.integers(0, 2000)),
             "merchant_id": int(rng.integers(0, 300)), "amount": round(float(rng.lognormal(3.5, 1)), 2),
             "event_timestamp": f"{END}T{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:00Z",
             "merchant_category": cats[i % len(cats)], "country": "US", "device": "pos"} for i in range(n)]


# ---- servers ------------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, ready: str, log: Path) -> None:
        self.name, self.cmd, self.env, self.port, self.ready, self.log = name, cmd, env, port, ready, log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=PROJECT_ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}{self.ready}", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready in 180 s: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def servers(settings: Settings, version: str, base_port: int) -> list[tuple[Server, str]]:
    from flywheel.training.packaging import bentoml_env

    env = bentoml_env(settings)
    env["FLYWHEEL_ONLINE_STORE"] = json.dumps(settings.online_store)
    env.pop("FLYWHEEL_API_KEY", None)
    env["FLYWHEEL_API_KEY"] = "bench-key"
    env["FLYWHEEL_CHAMPION_REFRESH_S"] = "30"
    # Same model runtime everywhere: one native thread per worker (the Flywheel service sets this
    # itself, serving_threads); without it every service pays OpenMP spinning on a shared machine.
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # mlflow serve execs uvicorn
    bin_dir = Path(sys.executable).parent
    logs = settings.log_dir
    logs.mkdir(parents=True, exist_ok=True)
    p = base_port
    return [
        (Server("fastapi_floor", [str(bin_dir / "uvicorn"), "--factory", "benchmarks.serving_apps:create_floor",
                                  "--host", HOST, "--port", str(p), "--no-access-log", "--log-level", "warning"],
                env, p, "/docs", logs / "bench-floor.log"), "predict"),
        (Server("null_asgi", [str(bin_dir / "uvicorn"), "--factory", "benchmarks.serving_apps:create_null",
                              "--host", HOST, "--port", str(p + 4), "--no-access-log", "--log-level", "warning"],
                env, p + 4, "/", logs / "bench-null.log"), "predict"),
        (Server("flywheel", [str(bin_dir / "bentoml"), "serve", "serving.service:ModelService", "--host", HOST,
                             "--port", str(p + 1)], env, p + 1, "/readyz", logs / "bench-flywheel.log"),
         "fraud/predict"),
        (Server("bentoml_default", [str(bin_dir / "bentoml"), "serve", "benchmarks.serving_apps:DefaultBento",
                                    "--host", HOST, "--port", str(p + 2)], env, p + 2, "/readyz",
                logs / "bench-bento-default.log"), "predict"),
        (Server("mlflow_serve", [str(bin_dir / "mlflow"), "models", "serve", "-m",
                                 f"models:/fraud-detector/{version}", "--env-manager", "local", "-h", HOST,
                                 "-p", str(p + 3), "-w", "1"], env, p + 3, "/ping", logs / "bench-mlflow.log"),
         "invocations"),
    ]


# ---- load ---------------------------------------------------------------------------------------

async def _load(url: str, payloads: list[Any], headers: dict[str, str], concurrency: int,
                duration: float, warmup: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    limits = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=limits, headers=headers) as session:
        async def worker(k: int, until: float, record: bool) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < until:
                body = payloads[i % len(payloads)]
                i += concurrency
                start = time.perf_counter()
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
                    await r.read()
                    ok = r.status == 200
                if record:
                    latencies.append(time.perf_counter() - start)
                    errors += not ok

        await asyncio.gather(*(worker(k, time.perf_counter() + warmup, False) for k in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker(k, started + duration, True) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "errors": errors, "rps": len(ms) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "p999_ms": float(np.percentile(ms, 99.9)), "max_ms": float(ms.max())}


def mlflow_payloads(settings: Settings, raw: list[dict[str, Any]]) -> list[bytes]:
    """mlflow serve cannot look features up: it gets the finished model matrix (a head start)."""
    import pandas as pd

    from benchmarks.serving_apps import Scorer, Transaction

    scorer = Scorer()
    out = []
    for body in raw:
        t = Transaction(**body)
        online, _ = scorer.features.fetch([{"user_id": t.user_id, "merchant_id": t.merchant_id}])
        matrix = pd.DataFrame(scorer.fraud_array([t], online), columns=scorer.names)[scorer.model.features]
        out.append(json.dumps({"dataframe_split": json.loads(matrix.to_json(orient="split", index=False))}).encode())
    return out


# ---- in-process measurements --------------------------------------------------------------------

def _timeit(fn: Any, n: int) -> float:
    """Median seconds per call over n calls."""
    times = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    return float(np.median(times))


def _timeit_pair(a: Any, b: Any, n: int) -> tuple[float, float]:
    """Median seconds per call of ``a`` and of ``b``, calls alternating: both see the same machine."""
    ta, tb = [], []
    for _ in range(n):
        s = time.perf_counter()
        a()
        m = time.perf_counter()
        b()
        ta.append(m - s)
        tb.append(time.perf_counter() - m)
    return float(np.median(ta)), float(np.median(tb))


def feature_fetch(settings: Settings, redis_db: int, n: int) -> dict[str, Any]:
    import redis

    from flywheel.core.spec import load_spec
    from flywheel.features.store import feature_store, online_features
    from flywheel.serving.online import OnlineFeatures

    spec = load_spec(settings=settings)
    store = feature_store(settings)
    reader = OnlineFeatures(store, spec)
    client = redis.Redis(host=HOST, db=redis_db)
    client.set("fw-serving:bench", b"x" * 64)
    row = [{"user_id": 12, "merchant_id": 7}]
    get_s, fetch_s = _timeit_pair(lambda: client.get("fw-serving:bench"), lambda: reader.fetch(row), n)
    out = {
        "raw_redis_get_us": get_s * 1e6,
        "flywheel_fetch_us": fetch_s * 1e6,
        "flywheel_fetch_frame_us": _timeit(lambda: reader.frame(row), n) * 1e6,
        "feast_get_online_features_us": _timeit(lambda: online_features(store, spec, row), max(n // 10, 50)) * 1e6,
    }
    client.delete("fw-serving:bench")
    out["ratio_fetch_vs_get"] = out["flywheel_fetch_us"] / out["raw_redis_get_us"]
    return out


def profile(settings: Settings, raw: list[dict[str, Any]], n: int) -> dict[str, float]:
    """Where one /fraud/predict spends its time in the engine (median µs per stage)."""
    from benchmarks.serving_apps import Scorer, Transaction
    from flywheel.core.spec import load_spec
    from flywheel.serving.predictor import Predictor, predict_array
    from flywheel.serving.routes import ScoringRoutes
    from flywheel.training import registry

    predictor = Predictor(load_spec(settings=settings), settings, watch=False, log_predictions=False)
    routes = ScoringRoutes(predictor)
    model = predictor.models.current
    body = json.dumps(raw[0]).encode()
    row = predictor.schemas.request.model_validate_json(body)
    columns = {name: [getattr(row, name)] for name in predictor._fields}
    keys = {key: columns[key] for key in predictor.join_keys}
    online, _ = predictor.features.fetch_keys(keys)
    arrays = predictor._arrays(dict(online))
    matrix = predictor.featurizer.transform(columns, arrays).matrix
    scores = predictor.score([row])
    scorer, t = Scorer(), Transaction.model_validate_json(body)

    native = registry.load_alias(predictor.spec.model_name, settings=settings)
    stages = {
        "validate_json (generated schema)": lambda: predictor.schemas.request.model_validate_json(body),
        "feature_fetch": lambda: predictor.features.fetch_keys(keys),
        "featurizer.transform (the one featurizer)": lambda: predictor.featurizer.transform(columns, arrays),
        f"model_predict_array (served: {model.runtime_for(1)})": lambda: predict_array(model, matrix, predictor.names),
        "model: native XGBoost inplace_predict, 1 row": lambda: predict_array(native, matrix, predictor.names),
        "response_json": lambda: scores.to_json(single=True),
        "whole_score": lambda: predictor.score([row]),
        "whole_route (bytes in, bytes out)": lambda: routes.predict(body),
        "floor: validate_json (hand-written model)": lambda: Transaction.model_validate_json(body),
        "floor: hand-written fraud featurization": lambda: scorer.fraud_array([t], online),
    }
    out = {name: _timeit(fn, n) * 1e6 for name, fn in stages.items()}
    predictor.close()
    return out


def batch_scoring(settings: Settings, raw: list[dict[str, Any]], url: str, key: str, rows: int,
                  rounds: int) -> dict[str, Any]:
    """Batch throughput over HTTP against in-process XGBoost on a ready matrix (the fastest way
    to call it: ``inplace_predict`` on a numpy array), plus the parts of a batch request that no
    implementation can skip — parsing/validating the JSON rows and the Redis round trip for
    their entities — measured alone."""
    from flywheel.core.spec import load_spec
    from flywheel.serving.predictor import Predictor, predict_array
    from flywheel.training import registry

    batch = [raw[i % len(raw)] | {"transaction_id": f"r{i}"} for i in range(rows)]
    payload = json.dumps(batch)
    predictor = Predictor(load_spec(settings=settings), settings, watch=False, log_predictions=False)
    adapter = predictor.schemas.batch
    txns = adapter.validate_json(payload)
    columns = {name: [getattr(r, name) for r in txns] for name in predictor._fields}
    keys = {key: columns[key] for key in predictor.join_keys}
    online, _ = predictor.features.fetch_keys(keys)
    matrix = predictor.featurizer.transform(columns, predictor._arrays(online)).matrix
    native = registry.load_alias(predictor.spec.model_name, settings=settings)  # XGBoost itself, as a user has it
    xgb_s = _timeit(lambda: predict_array(native, matrix, predictor.names), rounds)
    served_runtime = predictor.models.current.runtime_for(rows)
    validate_s = _timeit(lambda: adapter.validate_json(payload), rounds)
    features_s = _timeit(lambda: predictor.features.fetch_keys(keys), rounds)
    engine_s = _timeit(lambda: predictor.score(txns, endpoint="predict_batch").to_json(), rounds)
    predictor.close()
    with httpx.Client(timeout=60, headers={"X-API-Key": key, "content-type": "application/json"}) as http:
        header = http.post(url, content=payload).raise_for_status().headers.get("x-flywheel-runtime", "")
        http_s = _timeit(lambda: http.post(url, content=payload).raise_for_status(), rounds)
    return {"rows": rows, "runtime_served": header or served_runtime, "in_process_xgboost_rows_s": rows / xgb_s, "in_process_engine_rows_s": rows / engine_s,
            "http_batch_rows_s": rows / http_s, "ratio_http_vs_xgboost": xgb_s / http_s,
            "ratio_http_vs_engine": engine_s / http_s,
            "xgboost_ms": xgb_s * 1e3, "validate_json_ms": validate_s * 1e3, "feature_fetch_ms": features_s * 1e3,
            "http_ms": http_s * 1e3,
            # Upper bound of the ratio for any server that validates the rows and reads their features.
            "ceiling_ratio_validate_plus_fetch": xgb_s / (xgb_s + validate_s + features_s)}


# ---- report -------------------------------------------------------------------------------------

def ratios(load: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Ratios of the servers that ran (``--servers``)."""
    fw, floor = load["flywheel"], load["fastapi_floor"]
    out = {}
    for c in fw:
        out[f"flywheel_p50_vs_floor_c{c}"] = fw[c]["p50_ms"] / floor[c]["p50_ms"]
        out[f"flywheel_rps_vs_floor_c{c}"] = fw[c]["rps"] / floor[c]["rps"]
        if "mlflow_serve" in load:
            mlf = load["mlflow_serve"]
            out[f"flywheel_rps_vs_mlflow_c{c}"] = fw[c]["rps"] / mlf[c]["rps"]
            out[f"floor_rps_vs_mlflow_c{c}"] = floor[c]["rps"] / mlf[c]["rps"]
            if "null_asgi" in load:
                # A server that does no work at all, same machine and load generator: no scoring
                # server can exceed this multiple of mlflow serve here.
                out[f"null_rps_vs_mlflow_c{c}"] = load["null_asgi"][c]["rps"] / mlf[c]["rps"]
        if "bentoml_default" in load:
            out[f"flywheel_rps_vs_bentoml_default_c{c}"] = fw[c]["rps"] / load["bentoml_default"][c]["rps"]
    second = load.get("flywheel_" + SECOND, {})
    for c in second:  # the second use case through the same server: its cost next to fraud's
        out[f"{SECOND}_p50_vs_fraud_c{c}"] = second[c]["p50_ms"] / fw[c]["p50_ms"]
        out[f"{SECOND}_p50_vs_floor_c{c}"] = second[c]["p50_ms"] / floor[c]["p50_ms"]
    if "1" in fw:
        out["flywheel_p99_vs_p50_c1"] = fw["1"]["p99_ms"] / fw["1"]["p50_ms"]
        out["floor_p99_vs_p50_c1"] = floor["1"]["p99_ms"] / floor["1"]["p50_ms"]  # the machine's own tail
        if "null_asgi" in load:  # a server doing nothing: the tail of this machine and load generator
            out["null_p99_vs_p50_c1"] = load["null_asgi"]["1"]["p99_ms"] / load["null_asgi"]["1"]["p50_ms"]
    if "null_asgi" in load:
        for c in fw:  # no scoring server can exceed this multiple of the floor here
            out[f"null_rps_vs_floor_c{c}"] = load["null_asgi"][c]["rps"] / floor[c]["rps"]
    return out


def change_vs_previous(now: dict[str, float], previous: dict[str, float]) -> dict[str, float]:
    """Each floor ratio of this run over the previous run's (1.0 = unchanged; the generic path's
    p50 must stay <= 1.1x and its RPS >= 0.9x of the previous ratios)."""
    out: dict[str, float] = {}
    for key in ("flywheel_p50_vs_floor_c1", "flywheel_p50_vs_floor_c32"):
        if key in now and key in previous:
            out[key] = now[key] / previous[key]
    for c in ("1", "32"):  # older runs stored RPS only through the mlflow ratios
        key = f"flywheel_rps_vs_floor_c{c}"
        before = previous.get(key)
        if before is None and f"flywheel_rps_vs_mlflow_c{c}" in previous:
            before = previous[f"flywheel_rps_vs_mlflow_c{c}"] / previous[f"floor_rps_vs_mlflow_c{c}"]
        if key in now and before:
            out[key] = now[key] / before
    return out


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 16 §4: ahead of the hand-written floor (which keeps XGBoost, as a user would)."""
    r, out = result["ratios"], {}
    if "flywheel_p50_vs_floor_c1" in r:
        out["p50 <= 0.8x FastAPI floor (c=1)"] = {"value": r["flywheel_p50_vs_floor_c1"],
                                                  "met": r["flywheel_p50_vs_floor_c1"] <= 0.8}
    if "flywheel_rps_vs_floor_c32" in r:
        out["rps >= 2x FastAPI floor (c=32)"] = {"value": r["flywheel_rps_vs_floor_c32"],
                                                 "met": r["flywheel_rps_vs_floor_c32"] >= 2,
                                                 **({"bound": r["null_rps_vs_floor_c32"]}
                                                    if "null_rps_vs_floor_c32" in r else {})}
    for key, v in result.get("change_vs_previous", {}).items():
        within = v <= 1.1 if "p50" in key else v >= 0.9
        out[f"{key} within 10% of the previous run"] = {"value": v, "met": within}
    if "flywheel_rps_vs_mlflow_c32" in r:
        out["rps >= 10x mlflow serve (c=32)"] = {"value": r["flywheel_rps_vs_mlflow_c32"],
                                                 "met": r["flywheel_rps_vs_mlflow_c32"] >= 10,
                                                 "floor": r["floor_rps_vs_mlflow_c32"],
                                                 **({"bound": r["null_rps_vs_mlflow_c32"]}
                                                    if "null_rps_vs_mlflow_c32" in r else {})}
    if "flywheel_p99_vs_p50_c1" in r:
        out["p99 <= 3x p50 (c=1)"] = {"value": r["flywheel_p99_vs_p50_c1"], "met": r["flywheel_p99_vs_p50_c1"] <= 3,
                                      "floor": r["floor_p99_vs_p50_c1"],
                                      **({"bound": r["null_p99_vs_p50_c1"]} if "null_p99_vs_p50_c1" in r else {})}
    out["feature fetch <= 2x raw Redis GET"] = {"value": result["feature_fetch"]["ratio_fetch_vs_get"],
                                                "met": result["feature_fetch"]["ratio_fetch_vs_get"] <= 2}
    if result["batch"]:
        out["batch rows/s >= 30% in-process XGBoost"] = {"value": result["batch"]["ratio_http_vs_xgboost"],
                                                         "met": result["batch"]["ratio_http_vs_xgboost"] >= 0.3,
                                                         "bound": result["batch"]["ceiling_ratio_validate_plus_fetch"]}
    return out


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Serving: one run, same model, same Redis features, 127.0.0.1")
    for col in ("service", "conc.", "requests", "errors", "RPS", "p50 ms", "p99 ms", "p99.9 ms"):
        table.add_column(col, justify="right" if col != "service" else "left")
    for name, levels in result["load"].items():
        for c, m in levels.items():
            table.add_row(name, c, str(m["requests"]), str(m["errors"]), f"{m['rps']:.0f}", f"{m['p50_ms']:.2f}",
                          f"{m['p99_ms']:.2f}", f"{m['p999_ms']:.2f}")
    console.print(table)
    for title, data in (("ratios", result["ratios"]), ("change vs the previous run", result["change_vs_previous"]),
                        ("feature fetch (µs, ratio)", result["feature_fetch"]),
                        ("batch", result["batch"]), ("compiled runtime (the version's tags)", result["runtime"]),
                        ("profile of one /predict (median µs)", result["profile"])):
        t = Table(title=title)
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in data.items():
            t.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
        console.print(t)
    t = Table(title="targets (floor: the FastAPI floor's own value; bound: the most any server could reach here)")
    for col in ("target", "value", "met", "reference"):
        t.add_column(col)
    for k, v in result["targets"].items():
        ref = " / ".join(f"{name} {v[name]:.2f}" for name in ("floor", "bound") if name in v)
        t.add_row(k, f"{v['value']:.2f}", "yes" if v["met"] else "NO", ref)
    console.print(t)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=PROJECT_ROOT / ".flywheel-bench",
                    help="stack home (reused on a rerun: data and model are prepared once)")
    ap.add_argument("--port-offset", type=int, help="shift of every stack port (default 500 + FLYWHEEL_TEST_PORT_OFFSET)",
                    default=500 + int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0")))
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("FLYWHEEL_BENCH_REDIS_DB", "5")))
    ap.add_argument("--duration", type=float, default=8.0, help="seconds measured per service and concurrency")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--micro-n", type=int, default=2000, help="calls per in-process micro-benchmark")
    ap.add_argument("--batch-rows", type=int, default=1000)
    ap.add_argument("--keep-stack", action="store_true")
    ap.add_argument("--no-second", action="store_true", help=f"skip the second use case ({SECOND})")
    ap.add_argument("--servers", nargs="+", default=SERVERS, choices=SERVERS,
                    help="servers to load (fastapi_floor and flywheel are always needed)")
    args = ap.parse_args(argv)

    from flywheel.core.spec import load_spec
    from flywheel.stack import launcher as stack
    from flywheel.training import registry

    load_at_start = os.getloadavg()
    settings = prepare(args.home.resolve(), args.port_offset, args.redis_db)
    os.environ.update({k: v for k, v in settings.component_env().items()})
    os.environ["FLYWHEEL_ONLINE_STORE"] = json.dumps(settings.online_store)
    try:
        spec = load_spec(settings=settings)
        champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
        assert champion is not None, "prepare() trains one"
        version = str(champion.version)
        raw = bodies()
        second = prepare_second(settings) if (PROJECT_ROOT / "models" / f"{SECOND}.yaml").is_file() \
            and not args.no_second else []
        json_bodies = [json.dumps(b).encode() for b in raw]
        load: dict[str, dict[str, Any]] = {}
        batch: dict[str, Any] = {}
        base_port = settings.ports.model_server + 10
        wanted = set(args.servers) | {"fastapi_floor", "flywheel"}
        for server, route in [(s, r) for s, r in servers(settings, version, base_port) if s.name in wanted]:
            payloads = mlflow_payloads(settings, raw) if server.name == "mlflow_serve" else json_bodies
            url = f"http://{HOST}:{server.port}/{route}"
            with server:
                load[server.name] = {
                    str(c): asyncio.run(_load(url, payloads, {"X-API-Key": "bench-key"}, c, args.duration,
                                              args.warmup)) for c in args.concurrency}
                if server.name == "flywheel" and second:
                    load["flywheel_" + SECOND] = {
                        str(c): asyncio.run(_load(f"http://{HOST}:{server.port}/{SECOND}/predict",
                                                  [json.dumps(b).encode() for b in second], {"X-API-Key": "bench-key"},
                                                  c, args.duration, args.warmup)) for c in args.concurrency}
                if server.name == "flywheel":
                    batch = batch_scoring(settings, raw, f"http://{HOST}:{server.port}/fraud/predict_batch",
                                          "bench-key", args.batch_rows, rounds=15)
            print(f"{server.name}: {load[server.name]}", flush=True)
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_avg_at_start": load_at_start, "load_avg_at_end": os.getloadavg()},
            "settings": vars(args) | {"home": str(args.home)}, "model_version": version, "load": load,
            "feature_fetch": feature_fetch(settings, args.redis_db, args.micro_n),
            "profile": profile(settings, raw, max(args.micro_n // 4, 100)), "batch": batch,
            "runtime": {k: v for k, v in champion.tags.items() if k.startswith("runtime.")},
        }
        result["ratios"] = ratios(load)
        previous = json.loads(RESULTS.read_text()).get("ratios", {}) if RESULTS.is_file() else {}
        result["change_vs_previous"] = change_vs_previous(result["ratios"], previous)
        result["targets"] = targets(result)
        failed = {name: c for name, levels in load.items() for c, m in levels.items() if m["errors"]}
        if failed:  # a server that failed requests makes its ratios meaningless: say so loudly
            result["invalid"] = f"requests failed: {failed}"
            print(f"INVALID RUN: requests failed on {failed}", flush=True)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str))
        print_report(result)
        return result
    finally:
        if not args.keep_stack:
            stack.down(settings)


if __name__ == "__main__":
    main()
