"""Scale benchmark: ingest → validate → features through Flywheel vs a plain script.

Both paths do the same work with the same libraries (pyarrow, Great Expectations,
duckdb, boto3 on a real SeaweedFS): read the source files, store the raw batch,
validate it with the contract's expectations in chunks, store curated rows, and
compute the entity aggregates. Flywheel adds what a platform must: manifests,
content hashes, atomic commits, batch-level rules against history, cross-chunk
uniqueness, quarantine, GX Data Docs and freshness records. Each path runs in its
own process so peak RSS is measured per path.

    python benchmarks/pipeline.py --rows 1000000 10000000

Prints a table and writes ``benchmarks/results/pipeline.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The fraud example (generator, hand-written features) is a folder of the checkout, not an installed
# package: run from a checkout, as `python benchmarks/pipeline.py` or `python -m benchmarks.pipeline`.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DAY = date(2026, 1, 5)
FILE_ROWS = 1_000_000


def _settings(home: Path):  # type: ignore[no-untyped-def]
    from flywheel.core.config import Ports, Settings

    offset = int(os.environ.get("FLYWHEEL_TEST_PORT_OFFSET", "0"))
    ports = Ports(s3=27333 + offset, weed_master=27334 + offset, weed_volume=27335 + offset,
                  weed_filer=27336 + offset, s3_grpc=27433 + offset, weed_master_grpc=27434 + offset,
                  weed_volume_grpc=27435 + offset, weed_filer_grpc=27436 + offset, airflow=27080 + offset, airflow_worker_logs=27081 + offset,
                  airflow_trigger_logs=27082 + offset, mlflow=27500 + offset, model_server=27600 + offset)
    return Settings(home=home, ports=ports)


def make_source(folder: Path, rows: int) -> None:
    """``rows`` generated transactions of one day in files of at most 1M rows (not timed).

    One seeded 1M-row day (with its bad records) is generated once; each file is a
    copy with its own transaction ids, so keys stay unique across files.
    """
    import pandas as pd

    from examples.fraud.generator import GeneratorSpec, generate_day

    folder.mkdir(parents=True, exist_ok=True)
    base_path = folder.parent / "base.parquet"
    if not base_path.exists():
        # the generator varies a day's size by ±10 %: ask for more, keep exactly FILE_ROWS rows
        base = generate_day(DAY, GeneratorSpec(seed=100, rows_per_day=int(FILE_ROWS * 1.15)), bad_records=True)
        base.head(FILE_ROWS).to_parquet(base_path, index=False)
    base = pd.read_parquet(base_path)
    for i in range(-(-rows // FILE_ROWS)):
        path = folder / f"part-{i:03d}.parquet"
        if not path.exists():
            n = min(FILE_ROWS, rows - i * FILE_ROWS)
            base.head(n).assign(transaction_id=f"f{i:03d}-" + base.transaction_id.head(n)).to_parquet(
                path, index=False)


def run_flywheel(home: Path, source: Path, rows: int) -> dict:
    from flywheel.core.spec import load_spec_file
    from flywheel.data.ingest import ingest
    from flywheel.data.validation import validate_partition
    from flywheel.features import store as features

    settings = _settings(home)
    spec = load_spec_file(ROOT / "models" / "fraud.yaml")
    dataset = spec.dataset.model_copy(update={"name": f"bench_fw_{rows}", "source": str(source)})
    spec = spec.model_copy(update={"dataset": dataset})
    ds = DAY.isoformat()
    start = time.perf_counter()
    ingest(spec, ds, run_id="bench", settings=settings)
    summary = validate_partition(spec, ds, run_id="bench", settings=settings)
    features.compute_aggregates(spec, DAY, settings=settings)
    return {"seconds": time.perf_counter() - start, "curated": summary["curated"],
            "quarantined": summary["quarantined"]}


def run_plain(home: Path, source: Path, rows: int) -> dict:
    """The same steps written as one script: no manifests, history, quarantine files or docs."""
    import great_expectations as gx
    import pyarrow as pa
    import pyarrow.parquet as pq

    from examples.fraud.handwritten_features import merchant_aggregates, user_aggregates
    from flywheel.core.spec import load_spec_file
    from flywheel.core.storage import s3_client
    from flywheel.data.validation import build_expectations

    settings = _settings(home)
    spec = load_spec_file(ROOT / "models" / "fraud.yaml")
    client = s3_client(settings)
    bucket = settings.bucket("raw")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.parquet"
        files = sorted(source.glob("*.parquet"))
        schema = pq.read_schema(files[0])
        with pq.ParquetWriter(raw, schema, compression="zstd") as writer:
            for f in files:
                for batch in pq.ParquetFile(f).iter_batches(batch_size=256 * 1024):
                    writer.write_batch(batch)
        client.upload_file(str(raw), bucket, f"plain/{rows}/raw.parquet")
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch_def = context.data_sources.add_pandas("plain").add_dataframe_asset("tx") \
            .add_batch_definition_whole_dataframe("b")
        suite = gx.ExpectationSuite(name="plain")
        for e in build_expectations(spec.dataset, DAY):
            suite.add_expectation(e)
        curated = Path(tmp) / "curated.parquet"
        with pq.ParquetWriter(curated, schema, compression="zstd") as writer:
            offset = 0
            for batch in pq.ParquetFile(raw).iter_batches(batch_size=spec.dataset.chunk_rows):
                frame = batch.to_pandas()
                frame["_row"] = range(offset, offset + len(frame))
                result = batch_def.get_batch(batch_parameters={"dataframe": frame}).validate(
                    suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]})
                bad = {int(i["_row"]) - offset for r in result.results if not r.success
                       for i in r.result.get("unexpected_index_list") or []}
                keep = [i not in bad for i in range(len(frame))]
                writer.write_batch(batch.filter(pa.array(keep)))
                offset += len(frame)
        client.upload_file(str(curated), bucket, f"plain/{rows}/curated.parquet")
        users = user_aggregates([str(curated)], DAY)
        merchants = merchant_aggregates([str(curated)], DAY, label=spec.target)
        for name, table in (("users", users), ("merchants", merchants)):
            out = Path(tmp) / f"{name}.parquet"
            table.to_parquet(out, index=False)
            client.upload_file(str(out), bucket, f"plain/{rows}/{name}.parquet")
    return {"seconds": time.perf_counter() - start}


def _child_rss(kind: str, home: Path, source: Path, rows: int) -> dict:
    code = (f"import json, resource, sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks import pipeline; "
            f"r = pipeline.run_{kind}(pipeline.Path({str(home)!r}), pipeline.Path({str(source)!r}), {rows}); "
            f"r['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
            f"print('RESULT' + json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT"))[len("RESULT"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline.json"))
    parser.add_argument("--work", default=None, help="Where sources and the S3 store live (default: a temp dir)")
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from flywheel.core import storage
    from flywheel.stack import launcher as stack

    work = Path(args.work or tempfile.mkdtemp(prefix="flywheel-bench-"))
    home = work / "home"
    settings = stack.up(_settings(home), services=["seaweedfs"])
    results = []
    try:
        storage.ensure_buckets(settings)
        for rows in args.rows:
            source = work / "source" / f"rows={rows}"
            make_source(source, rows)
            actual = sum(pq.ParquetFile(p).metadata.num_rows for p in source.glob("*.parquet"))
            plain = _child_rss("plain", home, source, rows)
            flywheel = _child_rss("flywheel", home, source, rows)
            results.append({"rows": rows, "source_rows": actual, "flywheel": flywheel, "plain": plain,
                            "ratio": flywheel["seconds"] / plain["seconds"],
                            "flywheel_rows_per_s": actual / flywheel["seconds"],
                            "plain_rows_per_s": actual / plain["seconds"]})
    finally:
        stack.down(settings)
    if len(results) >= 2:
        growth = results[-1]["flywheel"]["seconds"] / results[0]["flywheel"]["seconds"]
        summary = {"growth_first_to_last": growth}
    else:
        summary = {}
    print(f"{'rows':>10} {'flywheel s':>11} {'plain s':>8} {'ratio':>6} {'rows/s':>10} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{r['rows']:>10} {r['flywheel']['seconds']:>11.1f} {r['plain']['seconds']:>8.1f} "
              f"{r['ratio']:>6.2f} {r['flywheel_rows_per_s']:>10.0f} {r['flywheel']['peak_rss_mib']:>13.0f}")
    if summary:
        print(f"time growth {results[0]['rows']} → {results[-1]['rows']}: {summary['growth_first_to_last']:.2f}×")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(),
                                          "results": results, **summary}, indent=2))


if __name__ == "__main__":
    main()
