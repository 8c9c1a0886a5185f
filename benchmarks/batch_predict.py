"""Batch prediction's scoring throughput on a ready feature matrix vs raw XGBoost, in one run.

The batch path (:func:`flywheel.serving.batch.score_matrix` plus the predictions table it commits:
the task's outputs, the decision, the model version) against the XGBoost booster called directly on
the same numpy matrix: ``inplace_predict`` (the fastest way to call it) and ``predict`` on a
``DMatrix`` built for the call. Same model, same threads (``--threads``), calls alternating so both see the same
machine; the best of ``--repeats`` per path. Target: the batch path >= 80 % of ``inplace_predict``'s
rows/s. In process, no stack. Output: a table and ``benchmarks/results/batch_predict.json``.

    .venv/bin/python -m benchmarks.batch_predict [--rows 200000] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.core.spec import load_spec_file

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "batch_predict.json"
TARGET = 0.8


def model_and_matrix(rows: int, threads: int, seed: int = 0) -> tuple[Any, np.ndarray, list[str]]:
    """A fraud-shaped XGBoost champion (the featurizer's columns, 200 trees of depth 6) and a matrix."""
    from xgboost import XGBClassifier

    from flywheel.features.featurizer import featurizer_for
    from flywheel.training import families
    from flywheel.training.registry import LoadedModel

    names = list(featurizer_for(load_spec_file(ROOT / "models" / "fraud.yaml")).names)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(names)))
    x[rng.random(x.shape) < 0.02] = np.nan  # missing aggregates, as new entities have
    y = (x[:, 0] + 0.5 * np.nan_to_num(x[:, 1]) + rng.normal(scale=0.5, size=rows) > 1.5).astype(int)
    fit = XGBClassifier(n_estimators=200, max_depth=6, tree_method="hist", n_jobs=threads, random_state=seed)
    fit.fit(x[:20_000], y[:20_000])
    model = LoadedModel(name="bench", version="1", family="xgboost", model=fit, threshold=0.5,
                        features=names, scorer=families.get("xgboost"))
    return model, np.ascontiguousarray(x), names


def batch_path(model: Any, matrix: np.ndarray, names: list[str]) -> int:
    import pyarrow as pa

    from flywheel.serving.batch import score_matrix

    out = score_matrix(model, matrix, names)
    table = pa.table({**out, "model_version": pa.array([model.version] * len(matrix))})
    return table.num_rows


def timed(call: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        out.append(time.perf_counter() - began)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import xgboost

    model, matrix, names = model_and_matrix(args.rows, args.threads)
    booster = model.model.get_booster()
    paths = {
        "xgboost_inplace_predict": lambda: booster.inplace_predict(matrix, missing=np.nan),
        # a fresh DMatrix each call: the booster caches its predictions of one DMatrix object
        "xgboost_predict_dmatrix": lambda: booster.predict(xgboost.DMatrix(matrix, missing=np.nan)),
        "flywheel_batch_path": lambda: batch_path(model, matrix, names),
    }
    for call in paths.values():  # warm each once
        call()
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # alternating: each path sees the same machine
        for name, call in paths.items():
            seconds[name] += timed(call, 1)
    rates = {name: args.rows / min(s) for name, s in seconds.items()}
    ratio = rates["flywheel_batch_path"] / rates["xgboost_inplace_predict"]
    result = {
        "rows": args.rows, "repeats": args.repeats, "threads": args.threads, "features": len(names),
        "load_average": os.getloadavg(),
        "rows_per_s": rates,
        "best_s": {name: min(s) for name, s in seconds.items()},
        "ratio_batch_vs_inplace_predict": ratio,
        "ratio_batch_vs_predict_dmatrix": rates["flywheel_batch_path"] / rates["xgboost_predict_dmatrix"],
        "target": {"ratio_batch_vs_inplace_predict_min": TARGET, "met": ratio >= TARGET},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    _table(result)


def _table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch scoring, {result['rows']} rows x {result['features']} features, "
                        f"{result['threads']} threads")
    for column in ("path", "rows/s", "best s", "vs inplace_predict"):
        table.add_column(column, justify="right" if column != "path" else "left")
    base = result["rows_per_s"]["xgboost_inplace_predict"]
    for name, rate in result["rows_per_s"].items():
        table.add_row(name, f"{rate:,.0f}", f"{result['best_s'][name]:.3f}", f"{rate / base:.1%}")
    Console().print(table)
    met = "met" if result["target"]["met"] else "MISSED"
    print(f"target batch path >= {TARGET:.0%} of inplace_predict: {met} "
          f"({result['ratio_batch_vs_inplace_predict']:.1%}); results: {RESULTS}")


if __name__ == "__main__":
    main()
