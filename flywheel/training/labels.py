"""The label of a training frame: rows without one left out (counted), values encoded per task.

Binary labels are 0/1 (or booleans: an expression such as ``arr_delay > 15``); multiclass labels
are any values, encoded as codes ``0..k-1`` in sorted order of the classes seen in training;
regression labels are numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.spec import PipelineSpec
from flywheel.features.featurizer import label_values

log = logging.getLogger(__name__)


class LabelError(ValueError):
    """The label's values do not fit the task; the message names the use case and the values."""


def drop_null(spec: PipelineSpec, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The rows that have a label (its value in column ``spec.target``) and how many had none.

    Rows whose label is null are left out of training, never silently: the count is logged here
    and returned for the run's ``rows_label_null`` metric.
    """
    values = pd.Series(label_values(spec, frame)).reset_index(drop=True)
    null = values.isna().to_numpy()
    count = int(null.sum())
    if count:
        log.warning("%s: %d of %d rows have no label (%s): left out of training",
                    spec.name, count, len(frame), spec.target)
    kept = frame.reset_index(drop=True).loc[~null].copy()
    kept[spec.target] = values[~null].to_numpy()
    return kept.reset_index(drop=True), count


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value JSON writes (class labels are stored as a version tag)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class LabelEncoding:
    """How labels become model targets; ``classes`` (multiclass): labels in code order."""

    task: str
    classes: tuple[Any, ...] = ()

    @classmethod
    def fit(cls, spec: PipelineSpec, values: pd.Series) -> LabelEncoding:
        """The encoding of the training labels; raises :class:`LabelError` when they do not fit."""
        if spec.task != "multiclass":
            encoding = cls(spec.task)
            encoding.encode(values, name=spec.name)  # validates
            return encoding
        distinct = pd.unique(values.dropna())
        try:
            classes = sorted(_plain(v) for v in distinct)
        except TypeError:  # mixed types: a stable order all the same
            classes = sorted((_plain(v) for v in distinct), key=str)
        if all(isinstance(c, float) and c.is_integer() for c in classes):
            classes = [int(c) for c in classes]  # an int column read with nulls arrives as floats
        if len(classes) < 2:
            raise LabelError(f"{spec.name}: a multiclass label needs at least 2 classes in the training "
                             f"split, found {classes}")
        return cls("multiclass", tuple(classes))

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.task == "multiclass" else 2

    def encode(self, values: pd.Series, *, name: str = "") -> pd.Series:
        """Model targets: binary 0/1 ints, multiclass codes (NaN for a class unseen in training),
        regression floats. Raises :class:`LabelError` for values the task cannot take."""
        if self.task == "multiclass":
            codes = {c: i for i, c in enumerate(self.classes)}
            return values.map(lambda v: codes.get(_plain(v), np.nan)).astype("float64")
        numeric = pd.to_numeric(values.astype("float64") if values.dtype == bool else values, errors="coerce")
        bad = values[numeric.isna() & values.notna()]
        if len(bad):
            raise LabelError(f"{name}: {self.task} labels must be numbers; got {list(pd.unique(bad))[:5]}")
        if self.task == "binary":
            outside = pd.unique(numeric[~numeric.isin([0, 1])])
            if len(outside):
                raise LabelError(f"{name}: binary labels must be 0/1 or booleans; got {list(outside)[:5]} "
                                 "(write label.expr, e.g. 'x > 15', or use task: multiclass)")
            return numeric.astype("int64")
        return numeric.astype("float64")
