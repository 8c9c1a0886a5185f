"""Model families: one class per kind of model, behind one small interface.

A family knows which task types it supports, how to fit on a train/validation split, score,
log to and load from MLflow, and report its training curve. Families are entry points of the
group ``flywheel.families`` (see ``pyproject.toml``): a package of its own can add one with
no engine edit. Specs check family names against the entry points without importing this
layer; :func:`check` checks that each family named by a spec supports the spec's task.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from flywheel.core.spec import FAMILY_GROUP, PipelineSpec
from flywheel.training.families.base import Family, FamilyTaskError, UnknownFamilyError

__all__ = ["Family", "FamilyTaskError", "UnknownFamilyError", "check", "get", "registered"]


def registered() -> dict[str, EntryPoint]:
    """Installed families by name."""
    return {ep.name: ep for ep in entry_points(group=FAMILY_GROUP)}


def get(name: str) -> Family:
    """An instance of the family registered under ``name``; raises :class:`UnknownFamilyError`."""
    known = registered()
    if name not in known:
        raise UnknownFamilyError(f"unknown model family {name!r} (known: {', '.join(sorted(known)) or 'none'})")
    family: Family = known[name].load()()
    return family


def check(spec: PipelineSpec) -> None:
    """Raise :class:`FamilyTaskError` when the baseline or a candidate cannot learn ``spec.task``."""
    for field, name in [("training.baseline", spec.training.baseline),
                        *((f"training.candidates.{c}", c) for c in spec.training.candidates)]:
        family = get(name)
        if spec.task not in family.tasks:
            raise FamilyTaskError(
                f"{spec.name}: {field}: family {name!r} does not support task {spec.task!r} "
                f"(it supports: {', '.join(sorted(family.tasks))}); pick another family or task")
