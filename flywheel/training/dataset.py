"""From a point-in-time training frame to model inputs: labels, a temporal split, matrices.

Rows whose label is null (not known yet, or an expression over null columns) are counted
and left out, loudly: the count is returned, logged and recorded on the training run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

from flywheel.core.spec import PipelineSpec
from flywheel.training import tasks
from flywheel.training.families.base import FitData

log = logging.getLogger(__name__)
PARTS = ("train", "validation", "holdout")


class TrainingDataError(ValueError):
    """The training frame cannot train the spec's task; the message says why and what to do."""


@dataclass(frozen=True)
class Labelled:
    """The rows with a label (``spec.target`` holds it), the classes and what was left out."""

    frame: pd.DataFrame
    classes: list[Any]
    rows_in: int
    null_labels: int


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame

    def parts(self) -> dict[str, pd.DataFrame]:
        return {"train": self.train, "validation": self.validation, "holdout": self.holdout}


@dataclass(frozen=True)
class Matrices:
    """Model matrices and encoded labels per split part, and the families' fit input."""

    x: dict[str, pd.DataFrame]
    y: dict[str, pd.Series]
    fit: FitData
    features: list[str]


def labelled(spec: PipelineSpec, frame: pd.DataFrame) -> Labelled:
    """The rows whose label is known, with the label (column or expression) in ``spec.target``.

    Raises :class:`TrainingDataError` when no row has a label, and
    :class:`~flywheel.training.tasks.LabelError` when the labels do not fit the task.
    """
    from flywheel.features.featurizer import label_values

    values = label_values(spec, frame)
    known = values.notna().to_numpy()
    nulls = int((~known).sum())
    if nulls:
        log.warning("%s: %d of %d rows have no label (%s): left out of training", spec.name, nulls,
                    len(frame), spec.target)
    if not known.any():
        raise TrainingDataError(f"{spec.name}: none of the {len(frame)} rows has a label ({spec.target}): "
                                "check the label column/expression and the training window")
    kept = frame.loc[known].assign(**{spec.target: values[known].to_numpy()})
    return Labelled(kept, tasks.classes_of(spec.task, kept[spec.target]), len(frame), nulls)


def temporal_split(frame: pd.DataFrame, spec: PipelineSpec) -> Split:
    """Train / validation / holdout by time: no holdout row precedes a training row.

    Ties in time are ordered by the dataset's key columns, or by a hash of the row when the
    dataset has no key, so the split does not depend on the frame's incoming order.
    """
    frame = frame.reset_index(drop=True)
    keys = [c for c in spec.dataset.key_columns if c in frame.columns]
    order = pd.DataFrame({"_ts": frame[spec.dataset.timestamp]})
    for i, key in enumerate(keys):
        order[f"_k{i}"] = frame[key]
    if not keys:
        order["_k0"] = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    position = order.sort_values(list(order.columns), kind="mergesort").index
    ordered = frame.iloc[position].reset_index(drop=True)
    n = len(ordered)
    a = int(n * spec.training.split.train)
    b = int(n * (spec.training.split.train + spec.training.split.validation))
    return Split(ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:])


def features_of(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The model matrix of training rows: the one featurizer's frame (float64, ``fz.names``)."""
    from flywheel.features.featurizer import featurizer_for

    return featurizer_for(spec).frame(frame)


def matrices(spec: PipelineSpec, split: Split, classes: list[Any]) -> Matrices:
    """Model matrices and encoded labels of each part; raises
    :class:`~flywheel.training.tasks.LabelError` when a class never occurs in training."""
    from flywheel.features.featurizer import featurizer_for

    fz = featurizer_for(spec)
    x = {name: fz.frame(part) for name, part in split.parts().items()}
    y = {name: tasks.encode(spec.task, part[spec.target], classes).reset_index(drop=True)
         for name, part in split.parts().items()}
    x = {name: m.reset_index(drop=True) for name, m in x.items()}
    for name in PARTS:
        if x[name].empty:
            raise TrainingDataError(f"{spec.name}: the {name} split is empty ({len(split.train)} / "
                                    f"{len(split.validation)} / {len(split.holdout)} rows): widen the window")
    tasks.check_classes_trained(spec.task, y["train"], classes)
    fit = FitData(x["train"], y["train"], x["validation"], y["validation"],
                  n_classes=len(classes), categorical=dict(fz.categorical), metric=tasks.metric_of(spec))
    return Matrices(x, y, fit, list(fz.names))
