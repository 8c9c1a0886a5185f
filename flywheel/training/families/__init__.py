"""Model families: one class per kind of model, behind one small interface.

A family knows how to fit on a train/validation split for a task type, score, log to and
load from MLflow, and sample hyperparameters for a search. Adding a family is one class
(subclass :class:`flywheel.training.families.base.Family`) plus one line in each table of
:mod:`flywheel.core.model_families` (where specs validate family names without importing this).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from flywheel.core.model_families import DEFAULT_BASELINE, FAMILIES, TASKS, baseline_name, check_task

if TYPE_CHECKING:
    from flywheel.training.families.base import Family

__all__ = ["DEFAULT_BASELINE", "FAMILIES", "TASKS", "UnknownFamilyError", "baseline_name", "check_task", "get"]


class UnknownFamilyError(KeyError):
    """A spec or a model version names a family that is not registered."""


def get(name: str, task: str = "binary") -> Family:
    """An instance of the family registered under ``name``, bound to ``task``."""
    try:
        module, cls = FAMILIES[name].split(":")
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r} (known: {', '.join(sorted(FAMILIES))})") from None
    check_task(name, task)
    family: Family = getattr(import_module(module), cls)(task)
    return family
