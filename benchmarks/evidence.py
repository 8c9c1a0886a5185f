"""What the evidence steps add to a training run, as ratios to the family's own fit, in process.

Per family (logistic regression, XGBoost, the PyTorch MLP; binary) on a synthetic model matrix
(``--rows`` training rows, 20 features, a rare positive class): the real fit with the family's
defaults is the baseline, measured in the same run; against it the overfit-one-batch check
(:mod:`flywheel.training.overfit`), the latency gate's measurement (:mod:`flywheel.training.latency`,
the default 60 calls per batch size) and the model card's statistics (bootstrap intervals,
reliability table, feature-group ablation; :mod:`flywheel.training.card`). Output: a table and
``benchmarks/results/evidence.json``.

    .venv/bin/python -m benchmarks.evidence [--rows 20000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.config import get_settings
from flywheel.core.spec import LatencyBudgetSpec
from flywheel.training import card, families, latency, overfit
from flywheel.training.families.base import FitData

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "evidence.json"
FAMILIES = ("logistic_regression", "xgboost", "torch_mlp")


def data(rows: int, seed: int = 0) -> tuple[FitData, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rows * 1.25)
    x = pd.DataFrame(rng.normal(size=(n, 20)), columns=[f"f{i}" for i in range(20)])
    logit = 1.5 * x["f0"] - x["f1"] * x["f2"] - 3.5
    y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int64"))
    cut, val = rows, rows + (n - rows) // 2
    fit = FitData(x.iloc[:cut], y.iloc[:cut], x.iloc[cut:val].reset_index(drop=True),
                  y.iloc[cut:val].reset_index(drop=True))
    return fit, x.iloc[val:].reset_index(drop=True), y.iloc[val:].to_numpy()


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def bench(name: str, fit: FitData, holdout: pd.DataFrame, y: np.ndarray) -> dict[str, float]:
    settings, family = get_settings(), families.get(name)
    trained, fit_s = _timed(lambda: family.train(fit, {}, seed=0, settings=settings))
    _, overfit_s = _timed(lambda: overfit.check(family, fit, seed=0, settings=settings))
    _, latency_s = _timed(lambda: latency.measure(trained, holdout, LatencyBudgetSpec()))
    scores = trained.scores(holdout)
    groups = {"a": [f"f{i}" for i in range(10)], "b": [f"f{i}" for i in range(10, 20)]}

    def stats() -> None:
        for metric in ("pr_auc", "roc_auc", "log_loss"):
            card.bootstrap_ci(metric, y, scores, seed=0)
        card.reliability("binary", y, scores)
        card.group_ablation(trained, holdout, y, groups, metric="pr_auc", seed=0)

    _, card_s = _timed(stats)
    total = overfit_s + latency_s + card_s
    return {"fit_s": fit_s, "overfit_s": overfit_s, "latency_s": latency_s, "card_s": card_s,
            "overfit_ratio": overfit_s / fit_s, "evidence_ratio": total / fit_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    fit, holdout, y = data(args.rows)
    families.get("torch_mlp").train(fit, {"epochs": 1}, seed=0, settings=get_settings())  # import + warm-up
    results = {name: bench(name, fit, holdout, y) for name in FAMILIES}
    print(f"{'family':<20}{'fit s':>8}{'overfit s':>11}{'latency s':>11}{'card s':>8}{'overfit/fit':>13}"
          f"{'evidence/fit':>14}")
    for name, r in results.items():
        print(f"{name:<20}{r['fit_s']:>8.2f}{r['overfit_s']:>11.2f}{r['latency_s']:>11.2f}{r['card_s']:>8.2f}"
              f"{r['overfit_ratio']:>13.2f}{r['evidence_ratio']:>14.2f}")
    RESULTS.write_text(json.dumps({"rows": args.rows, "families": results}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
