"""Overfit one small batch before real training: the first debugging step of a model.

A family that can learn at all drives its loss on a handful of rows it is trained on far below
what a constant prediction (the class shares, the mean) scores on them. One that cannot has a
bug (labels misaligned, a frozen layer, a broken objective), and training stops with
:class:`OverfitError` before the search spends its budget. Constant families (``majority``,
``mean``) have nothing to overfit: their result says so and passes.

Each family declares the parameters of the attempt (``Family.overfit_params``: no
regularisation, enough iterations) and its batch size (``Family.overfit_rows``); the fit is
local whatever ``compute.engine`` says (a batch of 32 rows needs no cluster).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.config import ComputeSettings, Settings
from flywheel.training.families.base import Family, FitData

MAX_LOSS_RATIO = 0.5  # the batch's loss after fitting must be at most this share of the constant's
# Early stopping (where a family has it) follows the loss: a ranking metric saturates long before.
LOSS_METRICS = {"binary": "log_loss", "multiclass": "log_loss", "regression": "rmse"}


class OverfitError(RuntimeError):
    """A family could not overfit one small batch: it cannot learn; the message says how far it got."""


@dataclass(frozen=True)
class OverfitResult:
    family: str
    rows: int
    loss: float
    constant_loss: float
    passed: bool
    seconds: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.loss / self.constant_loss if self.constant_loss > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def _sample_batch(data: FitData, rows: int, seed: int) -> pd.Index:
    """Row positions of the batch: classification takes rows of every class present (up to an
    equal share each), so a rare positive class is in it; regression a seeded sample."""
    y = data.y_train.reset_index(drop=True)
    rng = np.random.default_rng(seed)
    if data.task == "regression":
        return pd.Index(rng.choice(len(y), size=min(rows, len(y)), replace=False))
    classes = sorted(y.unique())
    share = max(1, rows // max(1, len(classes)))
    picked = [rng.choice(np.flatnonzero(y.to_numpy() == c), size=min(share, int((y == c).sum())), replace=False)
              for c in classes]
    return pd.Index(np.sort(np.concatenate(picked)))


def single_batch(data: FitData, rows: int, *, seed: int) -> FitData:
    """A FitData whose train and validation parts are the same small batch of training rows."""
    at = _sample_batch(data, rows, seed)
    x = data.x_train.reset_index(drop=True).iloc[at].reset_index(drop=True)
    y = data.y_train.reset_index(drop=True).iloc[at].reset_index(drop=True)
    return FitData(x, y, x, y, task=data.task, n_classes=data.n_classes, categorical=dict(data.categorical),
                   metric=LOSS_METRICS[data.task])


def loss(task: str, y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Log loss (classification) or mean squared error (regression) of raw outputs ``pred``."""
    eps = 1e-12
    if task == "regression":
        return float(np.mean((np.asarray(pred, dtype="float64") - y) ** 2))
    p = np.asarray(pred, dtype="float64")
    if task == "binary":
        p = np.column_stack([1 - p, p])
    picked = np.clip(p[np.arange(len(y)), y.astype(int)], eps, 1.0)
    return float(-np.mean(np.log(picked)))


def constant_loss(task: str, y: np.ndarray, n_classes: int) -> float:
    """The loss of the best constant prediction on ``y`` (class shares / the mean)."""
    if task == "regression":
        return float(np.var(y))
    shares = np.bincount(y.astype(int), minlength=max(n_classes, 2)) / len(y)
    pred = np.tile(shares, (len(y), 1))
    return loss("multiclass", y, pred, n_classes)


def check(family: Family, data: FitData, *, seed: int, settings: Settings) -> OverfitResult:
    """Fit ``family`` on one small batch of ``data``'s training rows and score it on that batch.

    Raises :class:`OverfitError` when its loss stays above :data:`MAX_LOSS_RATIO` of the
    constant prediction's (a family that cannot learn)."""
    if family.constant:
        return OverfitResult(family.name, 0, float("nan"), float("nan"), True, 0.0,
                             "a constant model: nothing to overfit")
    batch = single_batch(data, family.overfit_rows(data.x_train), seed=seed)
    y = batch.y_train.to_numpy()
    started = time.perf_counter()
    local = settings.model_copy(update={"compute": ComputeSettings()})
    model = family.fit(batch, dict(family.overfit_params), seed=seed, settings=local)
    pred = family.predict(model, batch.x_train, task=batch.task)
    seconds = time.perf_counter() - started
    fitted, constant = loss(batch.task, y, pred, batch.n_classes), constant_loss(batch.task, y, batch.n_classes)
    if constant <= 0:  # one label value in the batch: already perfect for a constant
        return OverfitResult(family.name, len(y), fitted, constant, True, seconds, "the batch has one label value")
    result = OverfitResult(family.name, len(y), fitted, constant, bool(fitted <= MAX_LOSS_RATIO * constant), seconds)
    if not result.passed:
        raise OverfitError(
            f"family {family.name!r} cannot overfit one batch of {len(y)} training rows: its loss there is "
            f"{fitted:.4g}, {result.ratio:.0%} of a constant prediction's {constant:.4g} (at most "
            f"{MAX_LOSS_RATIO:.0%} expected); the model does not learn: check its code and parameters")
    return result
