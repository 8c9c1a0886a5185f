"""The latency budget as a gate: a candidate's in-process p99 on holdout rows, per batch size.

Measured in the training process on the serving path (``Family.predict_array`` of a float
matrix, as the model server calls it), for batches of 1 and of 100 holdout rows. The figures
are recorded on the version (``latency.*`` tags) and compared with the spec's
``training.latency_budget`` by the gate (:func:`flywheel.training.registry.decide`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flywheel.core.spec import LatencyBudgetSpec
from flywheel.training.families.base import Trained

BATCHES = (1, 100)
WARMUP = 3  # untimed calls first: lazy initialisation (thread pools, kernels) is not steady state


@dataclass(frozen=True)
class Latency:
    """p99 milliseconds by batch size, and the budget they were held to."""

    p99_ms: dict[int, float]
    budget_ms: dict[int, float]

    def over_budget(self) -> list[str]:
        """Each batch size whose p99 exceeds its budget, worded for the gate's reason."""
        return [f"p99 {self.p99_ms[b]:.3g} ms at batch {b} > budget {self.budget_ms[b]:.3g} ms"
                for b in sorted(self.p99_ms) if b in self.budget_ms and self.p99_ms[b] > self.budget_ms[b]]

    def tags(self) -> dict[str, str]:
        """The version's tags: ``latency.p99_ms.batch_<n>`` and ``latency.budget_ms.batch_<n>``."""
        out = {f"latency.p99_ms.batch_{b}": f"{v:.6g}" for b, v in self.p99_ms.items()}
        return out | {f"latency.budget_ms.batch_{b}": f"{v:.6g}" for b, v in self.budget_ms.items()}

    def metrics(self) -> dict[str, float]:
        return {f"latency_p99_ms_batch_{b}": v for b, v in self.p99_ms.items()}


def budget_of(spec: LatencyBudgetSpec) -> dict[int, float]:
    return {1: spec.p99_ms_batch_1, 100: spec.p99_ms_batch_100}


def p99_ms(model: Trained, x: pd.DataFrame, *, batch: int, repeats: int, seed: int = 0) -> float:
    """The 99th percentile (ms) of ``repeats`` timed calls scoring ``batch`` rows of ``x`` drawn
    at random (with replacement when ``x`` is smaller). Raises ``ValueError`` when ``x`` is empty."""
    if x.empty:
        raise ValueError("no holdout rows to time the model on")
    features = list(x.columns)
    matrix = x.to_numpy(dtype="float64")
    rng = np.random.default_rng(seed)
    draws = [matrix[rng.integers(0, len(matrix), size=batch)] for _ in range(repeats + WARMUP)]
    timings = []
    for i, rows in enumerate(draws):
        started = time.perf_counter()
        model.family.predict_array(model.model, rows, features, task=model.task)
        if i >= WARMUP:
            timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.percentile(timings, 99))


def measure(model: Trained, x: pd.DataFrame, budget: LatencyBudgetSpec, *, seed: int = 0) -> Latency:
    """p99 per batch size of :data:`BATCHES` on holdout rows ``x`` against ``budget``."""
    return Latency({b: p99_ms(model, x, batch=b, repeats=budget.repeats, seed=seed) for b in BATCHES},
                   budget_of(budget))
