"""Rollout benchmark: what shadow mode costs a request, and how fast the server follows an alias.

1. **Shadow cost**, in process, same run: two predictors of fraud on the same Redis features and
   champion, one ``champion_only`` and one ``shadow`` (the challenger: a second version of the
   same family, behind the ``rollout`` alias at stage ``shadow``), called alternately through
   their routes (validation, features, model, prediction log; the shadow scorer on its thread),
   so both see the same machine. Per-request latency, p50 and p99, and their ratios; a
   ``canary`` predictor is measured the same way for reference.
2. **Swap delay**, over HTTP: the model server (as deployed, ``champion_refresh_s`` =
   ``--refresh``) while the champion alias moves ``--swaps`` times between two versions; a client
   polls ``/predict`` and records when the new version first answers after the move returned.
   Once with polling only, once with reload on push (``serving_registry_webhook_secret`` set:
   MLflow's webhook reaches ``POST /registry/events``).

    .venv/bin/python -m benchmarks.rollout                    # ~4-6 min on 2 cores (first run prepares)
    .venv/bin/python -m benchmarks.rollout --requests 500 --swaps 3

Loopback only, bounded by ``--requests`` and ``--swaps`` (each wait capped). Writes
``benchmarks/results/rollout.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.serving import END, bodies, xgboost_only
from benchmarks.serving import prepare as serving_prepare
from flywheel.core.config import PROJECT_ROOT, Settings

RESULTS = PROJECT_ROOT / "benchmarks" / "results" / "rollout.json"


def quick(spec: Any, *, n_estimators: int, min_improvement: float) -> Any:
    """XGBoost alone, fixed params, no search: what both measurements need, trained fast."""
    t = spec.training
    xgb = t.candidates["xgboost"].model_copy(update={"search": {}, "params": {**t.candidates["xgboost"].params,
                                                                               "n_estimators": n_estimators}})
    return spec.model_copy(update={"training": t.model_copy(update={
        "candidates": {"xgboost": xgb}, "search": t.search.model_copy(update={"trials": 0}),
        "min_improvement": min_improvement})})


def prepare(home: Path, offset: int, redis_db: int) -> Settings:
    """benchmarks.serving's preparation (stack, data, features, a champion), with a quick training."""
    return serving_prepare(home, offset, redis_db,
                           training=lambda spec: quick(spec, n_estimators=200, min_improvement=0.0))


def second_version(settings: Settings, spec: Any) -> str:
    """A second signed version to roll out and swap to (trained once; never promoted: the gate
    asks too much, so it is registered as the challenger)."""
    from flywheel.training import registry
    from flywheel.training.trainer import train

    mv = registry.alias_version(spec.model_name, registry.CHALLENGER, settings=settings)
    if mv is not None:
        return str(mv.version)
    return train(quick(spec, n_estimators=120, min_improvement=1.0), end=END,
                 reason="rollout benchmark: a second version", settings=settings).version


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"n": len(ms), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


def shadow_cost(settings: Settings, spec: Any, challenger: str, requests: int) -> dict[str, Any]:
    from flywheel.serving.predictor import Predictor
    from flywheel.serving.routes import ScoringRoutes
    from flywheel.training import stages

    stages.begin(spec.model_name, challenger, "shadow", reason="rollout benchmark", actor="benchmark",
                 settings=settings)
    payloads = [json.dumps(b).encode() for b in bodies()]
    modes = {}
    for mode in ("champion_only", "shadow"):
        rolled = spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"mode": mode})})
        own = settings.model_copy(update={"prediction_spool_dir": settings.home / "bench-spool" / mode,
                                          "serving_batch_max_rows": 1})
        modes[mode] = ScoringRoutes(Predictor(rolled, own, watch=False))
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    try:
        for i in range(requests + 50):  # 50 warm-up calls each
            for mode, routes in (modes.items() if i % 2 else reversed(modes.items())):
                started = time.perf_counter()
                status, _ = routes.predict(payloads[i % len(payloads)])
                elapsed = time.perf_counter() - started
                assert status == 200, (mode, status)
                if i >= 50:
                    times[mode].append(elapsed)
        shadow = modes["shadow"].predictor.shadow
        skipped = shadow.skipped if shadow is not None else 0
    finally:
        for routes in modes.values():
            routes.predictor.close()
        _clear_rollout(settings, spec)
    out: dict[str, Any] = {mode: _percentiles(t) for mode, t in times.items()}
    out["shadow_skipped_requests"] = skipped
    out["ratio_p50"] = out["shadow"]["p50_ms"] / out["champion_only"]["p50_ms"]
    out["ratio_p99"] = out["shadow"]["p99_ms"] / out["champion_only"]["p99_ms"]
    return out


def _clear_rollout(settings: Settings, spec: Any) -> None:
    from flywheel.training import registry, stages

    if stages.current(spec.model_name, settings=settings) is not None:
        registry.client(settings).delete_registered_model_alias(spec.model_name, stages.ROLLOUT)


def _admin_webhooks(settings: Settings, *, delete: bool) -> int:
    """Flywheel's registry webhooks (deleted when ``delete``), as MLflow's admin."""
    from mlflow import MlflowClient

    from flywheel.stack import security

    saved = dict(os.environ)
    os.environ.update(security.mlflow_identity_env(settings, "admin"))
    try:
        client = MlflowClient(tracking_uri=str(settings.mlflow_tracking_uri))
        hooks = [w for w in client.list_webhooks() if w.name.startswith("flywheel-model-server-")]
        for hook in hooks if delete else ():
            client.delete_webhook(hook.webhook_id)
        return len(hooks)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def swap_delays(settings: Settings, spec: Any, versions: tuple[str, str], *, push: bool, swaps: int,
                refresh: float, tag: str) -> dict[str, Any]:
    from pydantic import SecretStr

    from flywheel.stack import launcher as stack
    from flywheel.training import promotion

    _admin_webhooks(settings, delete=True)
    served = settings.model_copy(update={
        "champion_refresh_s": refresh,
        "serving_registry_webhook_secret": SecretStr("bench-webhook-secret") if push else None})
    served = stack.up(served, services=["model-server"], bento=tag)
    key = served.api_key.get_secret_value() if served.api_key else ""
    delays: list[float] = []
    body = bodies(1)[0]
    try:
        with httpx.Client(base_url=str(served.model_server_url), headers={"X-API-Key": key}, timeout=10) as http:
            for n in range(swaps):
                target = versions[(n + 1) % 2]
                time.sleep(refresh * 0.37 + 0.5)  # land the move at varying points of the poll cycle
                promotion.promote(spec.model_name, target, reason="rollout benchmark: swap", actor="benchmark",
                                  settings=settings)
                moved = time.monotonic()
                while time.monotonic() - moved < refresh + 30:
                    if http.post("/predict", json=body).json()["model_version"] == target:
                        delays.append(time.monotonic() - moved)
                        break
                    time.sleep(0.02)
                else:
                    raise RuntimeError(f"v{target} never answered within {refresh + 30} s")
        hooks = _admin_webhooks(settings, delete=False)
    finally:
        stack.down(served, services=["model-server"])
        _admin_webhooks(settings, delete=True)
        promotion.promote(spec.model_name, versions[0], reason="rollout benchmark: restore", actor="benchmark",
                          settings=settings)
    return {"webhooks_registered": hooks, **_percentiles(delays), "delays_s": delays}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=PROJECT_ROOT / ".flywheel-bench-rollout")
    ap.add_argument("--port-offset", type=int, default=700 + int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0")),
                    help="shift of every stack port (default 700 + FLYWHEEL_TEST_PORT_OFFSET)")
    ap.add_argument("--redis-db", type=int, default=int(os.environ.get("FLYWHEEL_BENCH_REDIS_DB", "11")))
    ap.add_argument("--requests", type=int, default=1500, help="measured requests per mode (shadow cost)")
    ap.add_argument("--swaps", type=int, default=4, help="alias moves per way (swap delay)")
    ap.add_argument("--refresh", type=float, default=10.0, help="champion_refresh_s of the served model server")
    ap.add_argument("--keep-stack", action="store_true")
    args = ap.parse_args(argv)

    from flywheel.core.spec import load_spec
    from flywheel.stack import launcher as stack
    from flywheel.training import registry
    from flywheel.training.packaging import build_bento

    settings = prepare(args.home.resolve(), args.port_offset, args.redis_db)
    os.environ.update(settings.component_env())
    os.environ["FLYWHEEL_ONLINE_STORE"] = json.dumps(settings.online_store)
    try:
        spec = xgboost_only(load_spec(settings=settings))
        champion = str(registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings).version)
        challenger = second_version(settings, spec)
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                        "load_avg_at_start": os.getloadavg()},
            "settings": vars(args) | {"home": str(args.home)}, "versions": [champion, challenger]}
        result["shadow_cost"] = shadow_cost(settings, spec, challenger, args.requests)
        print(json.dumps(result["shadow_cost"], indent=1), flush=True)
        tag = build_bento(spec, version=champion, settings=settings)
        result["swap_delay"] = {way: swap_delays(settings, spec, (champion, challenger), push=way == "push",
                                                 swaps=args.swaps, refresh=args.refresh, tag=tag)
                                for way in ("polling", "push")}
        result["machine"]["load_avg_at_end"] = os.getloadavg()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2, default=str))
        print_report(result)
        return result
    finally:
        if not args.keep_stack:
            stack.down(settings)


def print_report(result: dict[str, Any]) -> None:
    cost = result["shadow_cost"]
    print("\nshadow cost (in process, alternating calls)")
    print(f"{'mode':<15}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}")
    for mode in ("champion_only", "shadow"):
        m = cost[mode]
        print(f"{mode:<15}{m['n']:>6}{m['p50_ms']:>10.3f}{m['p99_ms']:>10.3f}")
    print(f"shadow / champion_only: p50 x{cost['ratio_p50']:.2f}, p99 x{cost['ratio_p99']:.2f} "
          f"({cost['shadow_skipped_requests']} requests logged without a shadow score)")
    print(f"\nswap delay (champion_refresh_s = {result['settings']['refresh']})")
    print(f"{'way':<10}{'n':>4}{'p50 s':>9}{'max s':>9}")
    for way, m in result["swap_delay"].items():
        print(f"{way:<10}{m['n']:>4}{m['p50_ms'] / 1000:>9.2f}{m['max_ms'] / 1000:>9.2f}")


if __name__ == "__main__":
    main()
