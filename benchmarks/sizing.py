"""Sizing: every stage of a data day and a training run, timed at 1M and 10M rows of one day.

Stages (the engine's own functions on a real SeaweedFS, the fraud spec, one day of N rows):

* ``ingest``: source files → raw partition (manifest, content hash);
* ``validate``: the contract's Great Expectations suite in chunks → curated + quarantine;
* ``features_local``: the day's entity aggregates in this process (duckdb), written to the features zone;
* ``features_dask``: the same on a local Dask cluster of ``--workers`` worker processes (TLS, 127.0.0.1),
  mapped by key-hash shards; its ratio to ``features_local`` is measured in the same run;
* ``train_<family>``: fitting one model on the day's labelled rows (model matrix: the rows joined with
  the day's aggregates, the spec's featurizer), bounded: XGBoost grows ``--trees`` trees (reported
  per 100 trees), the MLP runs one epoch, the linear baseline runs to convergence.

    python -m benchmarks.sizing --rows 1000000 10000000 [--workers 2] [--trees 20] [--skip-dask]

Prints a table and writes ``benchmarks/results/sizing.json`` (rows/s per stage, peak RSS of the
process). docs/deploy.md turns it into the sizing table and the extrapolation to 1B rows/day.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.pipeline import DAY, make_source  # noqa: E402


def _settings(home: Path):  # type: ignore[no-untyped-def]
    from flywheel.core.config import Ports, Settings

    offset = int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0"))
    base = 41000 + offset
    ports = Ports(s3=base + 333, weed_master=base + 334, weed_volume=base + 335, weed_filer=base + 336,
                  airflow=base + 80, airflow_worker_logs=base + 81, airflow_trigger_logs=base + 82,
                  mlflow=base + 500, model_server=base + 600, exporter=base + 700)
    return Settings(home=home, ports=ports)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _model_matrix(spec, settings, ds):  # type: ignore[no-untyped-def]
    """The day's curated rows joined with its aggregates (what a training row sees), prepared."""
    from flywheel.core import storage
    from flywheel.features import repo
    from flywheel.features.featurizer import featurizer_for
    from flywheel.training.trainer import prepare

    rows = storage.read_partition(zone="curated", dataset=spec.dataset.name, ds=ds, settings=settings)
    for entity, definition in spec.features.entities.items():
        table = storage.read_partition(zone="features", dataset=repo.feature_dataset(spec, entity), ds=ds,
                                       settings=settings).drop(columns=["event_timestamp"])
        rows = rows.merge(table, on=list(definition.keys), how="left")
    fz = featurizer_for(spec)
    prepared = prepare(spec, rows, fz.frame)
    return prepared.fit_data(spec, fz.categorical)


def _train(spec, data, settings, args) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    from flywheel.training import families

    out = {}
    xgb = spec.training.candidates["xgboost"].params | {"n_estimators": args.trees}
    plans = [("logistic_regression", {}, 1.0),
             ("xgboost", xgb, 100.0 / args.trees),  # seconds per 100 trees
             ("torch_mlp", spec.training.candidates["torch_mlp"].params | {"epochs": 1, "patience": 1}, 1.0)]
    for name, params, scale in plans:
        seconds, _ = _timed(lambda n=name, p=params: families.get(n).train(data, p, seed=1, settings=settings))
        out[f"train_{name}"] = {"seconds": seconds * scale, "measured_seconds": seconds,
                                "unit": {"xgboost": "per 100 trees", "torch_mlp": "per epoch"}.get(name, "fit")}
    return out


def run_size(rows: int, work: Path, settings, compute, args) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from flywheel.core.spec import load_spec_file
    from flywheel.data.ingest import ingest
    from flywheel.data.validation import validate_partition
    from flywheel.features import store as features

    source = work / "source" / f"rows={rows}"
    make_source(source, rows)
    actual = sum(pq.ParquetFile(p).metadata.num_rows for p in source.glob("*.parquet"))
    spec = load_spec_file(ROOT / "models" / "fraud.yaml")
    spec = spec.model_copy(update={"dataset": spec.dataset.model_copy(
        update={"name": f"sizing_{rows}", "source": str(source)})})
    ds = DAY.isoformat()
    stages: dict[str, dict[str, float]] = {}
    seconds, _ = _timed(lambda: ingest(spec, ds, run_id="sizing", settings=settings))
    stages["ingest"] = {"seconds": seconds}
    seconds, summary = _timed(lambda: validate_partition(spec, ds, run_id="sizing", settings=settings))
    stages["validate"] = {"seconds": seconds}
    seconds, local = _timed(lambda: features.compute_aggregates(spec, DAY, settings=settings))
    stages["features_local"] = {"seconds": seconds}
    if compute is not None:
        spread = settings.model_copy(update={"compute": compute})
        seconds, dask_run = _timed(lambda: features.compute_aggregates(spec, DAY, settings=spread))
        stages["features_dask"] = {"seconds": seconds, "ratio_to_local": seconds / stages["features_local"]["seconds"],
                                   "identical": float(dask_run.manifests == local.manifests)}
    if rows <= args.train_rows_max:
        seconds, data = _timed(lambda: _model_matrix(spec, settings, ds))
        stages["model_matrix"] = {"seconds": seconds}
        stages |= _train(spec, data, settings, args)
        train_rows = len(data.x_train)
    else:
        train_rows = 0
    for stage in stages.values():
        stage["rows_per_s"] = actual / stage["seconds"]
    return {"rows": rows, "source_rows": actual, "curated": summary["curated"], "train_rows": train_rows,
            "entity_rows": local.rows, "stages": stages, "peak_rss_mib": _rss_mib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--trees", type=int, default=20)
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--train-rows-max", type=int, default=10_000_000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sizing.json"))
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    from contextlib import ExitStack

    from flywheel.core import storage
    from flywheel.stack import launcher as stack

    work = Path(args.work or tempfile.mkdtemp(prefix="flywheel-sizing-"))
    settings = stack.up(_settings(work / "home"), services=["seaweedfs"])
    results = []
    out = Path(args.out)
    stack_ctx = ExitStack()
    try:
        storage.ensure_buckets(settings)
        compute = None
        if not args.skip_dask:
            from tests.integration.dask_cluster import local_cluster

            compute = stack_ctx.enter_context(local_cluster(work / "dask", port=41086 + int(
                os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0")), workers=args.workers))
        for rows in args.rows:
            results.append(run_size(rows, work, settings, compute, args))
            _report(results, out, args)
    finally:
        stack_ctx.close()
        stack.down(settings)


def _report(results: list[dict[str, Any]], out: Path, args: argparse.Namespace) -> None:
    names = sorted({s for r in results for s in r["stages"]}, key=lambda s: list(results[0]["stages"]).index(s)
                   if s in results[0]["stages"] else 99)
    print(f"{'stage':<26}" + "".join(f"{r['rows']:>14,} rows" for r in results))
    for name in names:
        cells = []
        for r in results:
            s = r["stages"].get(name)
            cells.append(f"{s['seconds']:>9.1f} s {s['rows_per_s'] / 1000:>6.0f}k/s" if s else f"{'-':>19}")
        print(f"{name:<26}" + "".join(cells))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(), "workers": args.workers,
                               "trees": args.trees, "results": results}, indent=2))


if __name__ == "__main__":
    main()
