"""Model families: one class per kind of model, behind one small interface.

A family knows how to fit on a train/validation split, score, log to and load from
MLflow, and sample hyperparameters for a search. Adding a family is one class
(subclass :class:`flywheel.training.families.base.Family`) plus one line here. This module
stays import-light: specs validate family names against it at DAG-parse time.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flywheel.training.families.base import Family

# name -> "module:Class"; the class is imported only when the family is used.
FAMILIES: dict[str, str] = {
    "logistic_regression": "flywheel.training.families.baseline:LogisticRegressionFamily",
    "xgboost": "flywheel.training.families.xgb:XGBoostFamily",
    "torch_mlp": "flywheel.training.families.torch_mlp:TorchMLPFamily",
}


class UnknownFamilyError(KeyError):
    """A spec or a model version names a family that is not registered."""


def get(name: str) -> Family:
    """An instance of the family registered under ``name``."""
    try:
        module, cls = FAMILIES[name].split(":")
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r} (known: {', '.join(sorted(FAMILIES))})") from None
    family: Family = getattr(import_module(module), cls)()
    return family
