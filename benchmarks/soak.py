"""Soak: the Flywheel model server under c=16 for 3 minutes while the champion alias moves twice.

Bounded in time and count, load on 127.0.0.1 only. The same prepared stack as
``benchmarks/serving.py`` (SeaweedFS, MLflow, Redis online features, a trained champion) plus a
second trained version. The server (``serving.service:ModelService``, as deployed) starts on v1;
a third of the way in, ``promotion.promote`` moves ``champion`` to v2; two thirds in,
``promotion.rollback`` moves it back. Reported:

- every response's status: the run fails (exit 1) on a single non-200 or transport error;
- the versions each client saw, in order (v1 → v2 → v1 expected of every client);
- the server's RSS (its whole process tree, sampled every 2 s) and its slope in MiB per minute,
  fitted after the warm-up, with the start and end figures, so a leak shows as a slope;
- RPS and p50/p99 per minute, so a slow-down shows as a trend.

    .venv/bin/python -m benchmarks.soak                      # 3 min at c=16 (+ ~4 min preparing on a fresh home)
    .venv/bin/python -m benchmarks.soak --duration 60 --concurrency 4   # shorter, lighter

Writes ``benchmarks/results/soak.json`` and prints a table. The test of the same behaviour in the
suite (tests/integration/test_serving_champion.py) is 40 s at c=4: this is its long form.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serving import END, HOST, bodies, prepare, servers, xgboost_only
from flywheel.core.config import PROJECT_ROOT, Settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "soak.json"
KEY = "bench-key"  # the key benchmarks.serving.servers() gives the server


def second_version(settings: Settings, spec: Any) -> tuple[str, str]:
    """(v1, v2): the prepared champion and another version training registered (trained once)."""
    from flywheel.training import promotion, registry
    from flywheel.training.trainer import train

    client = registry.client(settings)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{spec.model_name}'"))
    if len(versions) < 2:
        t = spec.training
        other = spec.model_copy(update={"training": t.model_copy(update={
            "search": t.search.model_copy(update={"trials": 0}),
            "candidates": {"xgboost": t.candidates["xgboost"].model_copy(update={
                "params": t.candidates["xgboost"].params | {"n_estimators": 60}})}})})
        versions.append(int(train(other, end=END, reason="soak: a second version", settings=settings).version))
    v1, v2 = str(versions[0]), str(versions[1])
    if str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings).version) != v1:
        promotion.promote(spec.model_name, v1, reason="soak: start on v1", actor="soak", settings=settings)
    return v1, v2


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def load(url: str, payloads: list[bytes], concurrency: int, duration: float,
               on_tick: Any) -> list[tuple[float, int, str, int, float]]:
    """(seconds since start, status, model version, client, latency s) of every request."""
    import aiohttp

    out: list[tuple[float, int, str, int, float]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"X-API-Key": KEY, "content-type": "application/json"}) as session:
        async def client(k: int) -> None:
            i = k
            while (now := time.perf_counter()) < started + duration:
                body = payloads[i % len(payloads)]
                i += concurrency
                try:
                    async with session.post(url, data=body) as r:
                        raw = await r.read()
                        status = r.status
                    version = json.loads(raw).get("model_version", "") if status == 200 else ""
                except (TimeoutError, aiohttp.ClientError):
                    status, version = -1, ""
                out.append((now - started, status, str(version), k, time.perf_counter() - now))

        async def ticker() -> None:
            while time.perf_counter() < started + duration:
                await asyncio.sleep(1.0)
                await asyncio.to_thread(on_tick, time.perf_counter() - started)

        await asyncio.gather(ticker(), *(client(k) for k in range(concurrency)))
    return out


def slope_mib_per_min(samples: list[tuple[float, int]], after_s: float) -> float:
    points = [(t, rss) for t, rss in samples if t >= after_s]
    if len(points) < 3:
        return float("nan")
    t, rss = np.array(points, dtype=float).T
    return float(np.polyfit(t / 60.0, rss / 2**20, 1)[0])


def summarize(requests: list[tuple[float, int, str, int, float]], rss: list[tuple[float, int]],
              moves: dict[str, float], duration: float, warmup: float, concurrency: int) -> dict[str, Any]:
    failed = [r for r in requests if r[1] != 200]
    per_client: dict[int, list[str]] = {}
    for _, _, version, k, _ in sorted(requests):
        if version and (not per_client.get(k) or per_client[k][-1] != version):
            per_client.setdefault(k, []).append(version)
    minutes = []
    for m in range(int(np.ceil(duration / 60))):
        window = [r for r in requests if m * 60 <= r[0] < (m + 1) * 60 and r[1] == 200]
        ms = np.array([r[4] for r in window]) * 1000
        if len(ms):
            span = min(60.0, duration - m * 60)
            minutes.append({"minute": m + 1, "requests": len(ms), "rps": round(len(ms) / span, 1),
                            "p50_ms": round(float(np.percentile(ms, 50)), 2),
                            "p99_ms": round(float(np.percentile(ms, 99)), 2)})
    return {
        "requests": len(requests), "errors": len(failed), "error_examples": failed[:5],
        "versions_seen_per_client": {str(k): v for k, v in sorted(per_client.items())},
        "alias_moves_at_s": moves, "per_minute": minutes,
        "rss_mib": {"start": round(rss[0][1] / 2**20, 1) if rss else None,
                    "after_warmup": next((round(r / 2**20, 1) for t, r in rss if t >= warmup), None),
                    "end": round(rss[-1][1] / 2**20, 1) if rss else None,
                    "max": round(max(r for _, r in rss) / 2**20, 1) if rss else None,
                    "slope_mib_per_min": round(slope_mib_per_min(rss, warmup), 2),
                    "samples": [(round(t, 1), round(r / 2**20, 1)) for t, r in rss]},
        "concurrency": concurrency, "duration_s": duration, "warmup_s": warmup,
    }


def print_report(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result["soak"]
    table = Table(title=f"Soak: c={s['concurrency']} for {s['duration_s']:.0f} s, champion moved twice")
    for column in ("minute", "requests", "RPS", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for m in s["per_minute"]:
        table.add_row(str(m["minute"]), str(m["requests"]), f"{m['rps']:.1f}", f"{m['p50_ms']:.2f}",
                      f"{m['p99_ms']:.2f}")
    console = Console(width=80)
    console.print(table)
    rss = s["rss_mib"]
    console.print(f"requests {s['requests']}, errors {s['errors']}; RSS {rss['start']} → {rss['end']} MiB "
                  f"(max {rss['max']}), slope after warm-up {rss['slope_mib_per_min']} MiB/min")
    seen = {" → ".join(f"v{v}" for v in vs) for vs in s["versions_seen_per_client"].values()}
    console.print(f"versions seen by the clients: {', '.join(sorted(seen))}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=PROJECT_ROOT / ".flywheel-bench",
                    help="stack home, shared with benchmarks/serving.py (prepared once)")
    ap.add_argument("--port-offset", type=int, default=500 + int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0")))
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("FLYWHEEL_BENCH_REDIS_DB", "5")))
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of load (bounded: at most 600)")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds left out of the RSS slope")
    ap.add_argument("--concurrency", type=int, default=16, help="closed-loop clients (at most 64)")
    ap.add_argument("--keep-stack", action="store_true")
    args = ap.parse_args(argv)
    if not 10 <= args.duration <= 600 or not 1 <= args.concurrency <= 64:
        ap.error("--duration must be 10..600 s and --concurrency 1..64 (the machine is shared)")

    from flywheel.core.spec import load_spec
    from flywheel.stack import launcher as stack
    from flywheel.training import promotion

    settings = prepare(args.home.resolve(), args.port_offset, args.redis_db)
    os.environ.update(settings.component_env())
    os.environ["FLYWHEEL_ONLINE_STORE"] = json.dumps(settings.online_store)
    try:
        spec = xgboost_only(load_spec(settings=settings))
        v1, v2 = second_version(settings, spec)
        # The deployed service exactly as benchmarks/serving.py starts it, watching the alias every 2 s.
        server = next(server for server, _ in servers(settings, v1, settings.ports.model_server + 20)
                      if server.name == "flywheel")
        server.env = server.env | {"FLYWHEEL_CHAMPION_REFRESH_S": "2"}
        port = server.port
        payloads = [json.dumps(b).encode() for b in bodies()]
        rss: list[tuple[float, int]] = []
        moves: dict[str, float] = {}
        lock = threading.Lock()

        def on_tick(t: float) -> None:
            with lock:
                if int(t) % 2 == 0:
                    rss.append((t, tree_rss(server.proc.pid)))
                if "promote" not in moves and t >= args.duration / 3:
                    moves["promote"] = round(t, 1)
                    promotion.promote(spec.model_name, v2, reason="soak: promote", actor="soak", settings=settings)
                elif "promote" in moves and "rollback" not in moves and t >= 2 * args.duration / 3:
                    moves["rollback"] = round(t, 1)
                    promotion.rollback(spec.model_name, reason="soak: roll back", actor="soak", settings=settings)

        with server:
            requests = asyncio.run(load(f"http://{HOST}:{port}/{spec.name}/predict", payloads, args.concurrency,
                                        args.duration, on_tick))
        result = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_avg_at_end": os.getloadavg()},
            "versions": {"v1": v1, "v2": v2},
            "soak": summarize(requests, rss, moves, args.duration, args.warmup, args.concurrency),
        }
        expected = [v1, v2, v1]
        result["every_client_saw_v1_v2_v1"] = all(
            seen == expected for seen in result["soak"]["versions_seen_per_client"].values())
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str))
        print_report(result)
        return result
    finally:
        if not args.keep_stack:
            stack.down(settings)


if __name__ == "__main__":
    outcome = main()
    raise SystemExit(0 if outcome["soak"]["errors"] == 0 and outcome["every_client_saw_v1_v2_v1"] else 1)
