"""What the prediction log's write-ahead spool adds to a request, in process (no server, no store).

A request's ``PredictionLogger.log`` used to put its scores on an in-memory queue; it now encodes
them, appends them to a segment file and waits for the group commit (``fdatasync``). Measured
here, on the disk the spool would use (``--dir``, default ``.flywheel-bench/spool``), against the
old queue put in the same run:

- ``c=1``: one thread logging one-row requests back to back (what a lone request waits);
- ``c=8``: eight threads at once (appends share syncs: ``syncs/request`` < 1);
- ``batch=k``: one ``log`` call per micro-batch of k concurrent ``/predict`` requests (the
  server's event loop logs a micro-batch as one record: one sync for k requests).

Each for ``prediction_spool_sync`` = ``fsync`` (the default: durable against a host crash) and
``write`` (page cache only: durable against a process crash). Per-request latency is each call's
own time (divided by k for a batch). Output: a table and ``benchmarks/results/prediction_spool.json``.

    .venv/bin/python -m benchmarks.prediction_spool [--requests 2000] [--dir PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec, load_spec_file
from flywheel.serving.prediction_log import PredictionLogger, encode, log_schema

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "prediction_spool.json"
REQUEST = {"transaction_id": "t-1", "user_id": 12, "merchant_id": 7, "amount": 42.5,
           "event_timestamp": "2026-01-09T13:05:00Z", "merchant_category": "grocery", "country": "US",
           "device": "pos"}


def scores(spec: PipelineSpec, rows: int) -> Any:
    """Scores of ``rows`` fraud requests, built as the predictor builds them (no model call)."""
    from flywheel.features.featurizer import featurizer_for
    from flywheel.serving.predictor import Scores, request_ids, task_outputs
    from flywheel.serving.schemas import route_schemas
    from flywheel.training.registry import LoadedModel

    fz = featurizer_for(spec)
    s = route_schemas(spec, fz.request_columns)
    validated = [s.request.model_validate(REQUEST | {"user_id": i}) for i in range(rows)]
    fields = tuple(dict.fromkeys((*s.id_columns, *s.columns)))
    columns = {f: [getattr(r, f) for r in validated] for f in fields}
    entities = {a: np.full(rows, 3.0) for a in fz.entity_features if fz.aggregates[a] != "string"}
    features = fz.transform(columns, entities)
    model = LoadedModel(name="m", version="3", family="xgboost", model=None, threshold=0.5, features=[], scorer=None)
    raw = np.full(rows, 0.2)
    misses = {name: np.zeros(rows, dtype=bool) for name in spec.features.entities}
    return Scores("binary", columns, s.id_columns, tuple(fz.names), features.matrix, raw,
                  task_outputs("binary", model, raw), misses, dict(features.unknown), request_ids(rows), model)


def timed(call: Any, n: int, threads: int) -> list[float]:
    """Each call's own seconds, ``n`` calls spread over ``threads`` threads started together."""
    out: list[float] = []
    lock, start = threading.Lock(), threading.Barrier(threads)

    def run() -> None:
        mine = []
        start.wait()
        for _ in range(n // threads):
            began = time.perf_counter()
            call()
            mine.append(time.perf_counter() - began)
        with lock:
            out.extend(mine)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return out


def summary(seconds: list[float], per: int = 1) -> dict[str, float]:
    ordered = sorted(s / per for s in seconds)
    return {"p50_us": ordered[len(ordered) // 2] * 1e6, "p99_us": ordered[int(len(ordered) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(ordered) * 1e6}


def measure(spec: PipelineSpec, folder: Path, sync: str, n: int) -> dict[str, Any]:
    settings = Settings(home=folder / "home", s3_endpoint_url="http://127.0.0.1:9", s3_access_key="x",
                        s3_secret_key="y", prediction_flush_s=3600, prediction_spool_sync=sync,  # type: ignore[arg-type]
                        prediction_spool_dir=folder / f"spool-{sync}", prediction_drain_s=0)
    logger = PredictionLogger(log_schema(spec), settings)
    one = scores(spec, 1)
    out: dict[str, Any] = {}
    try:
        for threads in (1, 8):
            before = logger.spool.syncs
            out[f"c={threads}"] = summary(timed(lambda: logger.log(one), n, threads))
            out[f"c={threads}"]["syncs_per_request"] = (logger.spool.syncs - before) / n
        for k in (8, 32):
            batch = scores(spec, k)
            out[f"batch={k}"] = summary(timed(lambda b=batch: logger.log(b), max(n // k, 50), 1), per=k)
    finally:
        logger.close()  # drain_s=0: no upload, the store is not part of this benchmark
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--dir", type=Path, default=ROOT / ".flywheel-bench")
    args = parser.parse_args()
    spec = load_spec_file(ROOT / "models" / "fraud.yaml")
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="spool-bench-") as tmp:
        one = scores(spec, 1)
        q: queue.Queue[Any] = queue.Queue()
        result: dict[str, Any] = {
            "load_average": os.getloadavg(),
            "baseline_queue_put": summary(timed(lambda: q.put_nowait(one), args.requests, 1)),
            "encode_only": summary(timed(lambda: encode(one, logged_at=_now()), args.requests, 1)),
        }
        for sync in ("write", "fsync"):
            result[sync] = measure(spec, Path(tmp), sync, args.requests)
    result["added_p50_us_c1"] = {s: result[s]["c=1"]["p50_us"] - result["baseline_queue_put"]["p50_us"]
                                 for s in ("write", "fsync")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


if __name__ == "__main__":
    main()
