"""Feast's file registry (the embedded profile) has one writer at a time: two use cases applying
their objects from two processes at once both end up in the registry (a lost update used to
leave one use case's feature views missing)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from flywheel.core.config import Settings
from flywheel.core.spec import load_spec
from flywheel.features import repo, store

pytestmark = pytest.mark.integration  # two processes applying Feast objects: tens of seconds

ROUNDS = 2


def _apply(home: str, name: str, rounds: int) -> None:
    settings = Settings(home=Path(home))
    spec = load_spec(name, settings=settings)
    for _ in range(rounds):
        store.apply(spec, settings)


def test_two_use_cases_applied_at_once_both_stay_in_the_registry(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    specs = [load_spec(name, settings=settings) for name in ("fraud", "flights")]
    fork = multiprocessing.get_context("fork")  # both start from this process's imports
    writers = [fork.Process(target=_apply, args=(str(tmp_path), spec.name, ROUNDS)) for spec in specs]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
        assert writer.exitcode == 0
    registered = {view.name for view in store.feature_store(settings).list_feature_views()}
    for spec in specs:
        assert set(repo.view_names(spec)) <= registered, spec.name


def test_the_writer_lock_is_taken_only_for_a_local_file_registry(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    with store.registry_writer(settings):
        assert Path(str(settings.feast_registry_config()["path"]) + ".lock").exists()
