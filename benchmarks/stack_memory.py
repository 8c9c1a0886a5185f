"""Memory per component: the embedded stack vs the production-like stack, measured in one run.

Starts each stack natively (``flywheel.stack.launcher.up``) on its own home and ports, lets it settle,
samples every service's PSS (proportional set size, summed over the service's session:
Airflow task processes and BentoML workers included) a few times and keeps the median,
then stops it. The production stack uses the shared PostgreSQL/Redis given by
``FLYWHEEL_PRODUCTION__*`` (defaults: 127.0.0.1, databases ``flywheel_prod_bench_*``,
Redis DB 2/3), dropped afterwards. Prints a table and writes JSON.

    .venv/bin/python benchmarks/stack_memory.py [--out benchmarks/results/stack_memory.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil

from flywheel.core.config import Ports, ProductionServices, Profile, Settings
from flywheel.stack import launcher as stack

SETTLE_S, SAMPLES, EVERY_S = 20.0, 5, 2.0


def sessions(settings: Settings) -> dict[int, str]:
    """Session id (each service starts its own session: its pid) → service name, of the live ones."""
    return {s.pid: s.name for s in stack.status(settings) if s.pid is not None}


def sample(owners: dict[int, str]) -> dict[str, float]:
    """PSS in MiB per service (its whole session)."""
    totals: dict[str, float] = dict.fromkeys(owners.values(), 0.0)
    for proc in psutil.process_iter():
        try:
            sid = os.getsid(proc.pid)
            if sid in owners:
                totals[owners[sid]] += proc.memory_full_info().pss / 2**20
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return totals


def measure(settings: Settings) -> dict[str, float]:
    t0 = time.monotonic()
    settings = stack.up(settings, services=[s.name for s in stack.SERVICES if not s.optional])
    started = time.monotonic() - t0
    try:
        time.sleep(SETTLE_S)
        owners = sessions(settings)
        samples = []
        for _ in range(SAMPLES):
            samples.append(sample(owners))
            time.sleep(EVERY_S)
        result = {name: round(statistics.median(s[name] for s in samples)) for name in samples[0]}
        result["total"] = sum(result.values())
        result["start_s"] = round(started, 1)
        return result
    finally:
        stack.down(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/stack_memory.json"))
    parser.add_argument("--port-base", type=int, default=29000 + int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0")))
    args = parser.parse_args()
    base = args.port_base
    ports = Ports(s3=base + 333, weed_master=base + 334, weed_volume=base + 335, weed_filer=base + 336,
                  s3_grpc=base + 433, weed_master_grpc=base + 434, weed_volume_grpc=base + 435,
                  weed_filer_grpc=base + 436, airflow=base + 80, airflow_worker_logs=base + 81, airflow_trigger_logs=base + 82,
                  mlflow=base + 500, model_server=base + 600)
    production = ProductionServices(database_prefix="flywheel_prod_bench", redis_url="redis://127.0.0.1:6379/2",
                                    broker_url="redis://127.0.0.1:6379/3", worker_concurrency=1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["embedded"] = measure(Settings(home=Path(tmp) / "embedded", ports=ports))
        prod = Settings(home=Path(tmp) / "production", ports=ports, profile=Profile.PRODUCTION, production=production)
        try:
            results["production"] = measure(prod)
        finally:
            from flywheel.stack.provision import drop_databases

            drop_databases(prod)
    names = sorted({n for r in results.values() for n in r} - {"total", "start_s"})
    print(f"{'component (PSS MiB, idle)':28s} {'embedded':>9s} {'production':>11s}")
    for name in [*names, "total", "start_s"]:
        row = [results[p].get(name) for p in ("embedded", "production")]
        print(f"{name:28s} " + " ".join(f"{'-' if v is None else v:>10}" for v in row))
    ratio = results["production"]["total"] / results["embedded"]["total"]
    print(f"production / embedded total memory: {ratio:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": results, "ratio_total": round(ratio, 3),
                                    "settle_s": SETTLE_S, "samples": SAMPLES}, indent=2) + "\n")


if __name__ == "__main__":
    main()
