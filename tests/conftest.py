"""Shared fixtures. Markers: unit, integration, e2e (see pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.core.config import get_settings
from flywheel.core.spec import PipelineSpec, load_spec_file

ROOT = Path(__file__).resolve().parent.parent

# pytest-xdist (`make test` runs `-n N --dist loadgroup`) sends each xdist group whole to one worker.
# Every test gets one: its module's, or SESSION_STACK for every module that uses the session stack
# (tests/integration/conftest.py's `services`), so each port block and each session fixture starts in
# one worker only. A module may name its own group with `pytest.mark.xdist_group`.
SESSION_STACK = "session-stack"
# Groups start in collection order (xdist gives each worker two at once), so the longest come first:
# a long one started last makes the tail. LONGEST: an ordering hint from --durations, longest first;
# any other module ranks by its level in LEVEL_ORDER.
LONGEST = ("tests/e2e/test_loop.py", SESSION_STACK, "tests/e2e/test_simulation.py",
           "tests/e2e/test_backfill_retrain.py", "tests/integration/test_production_loop.py",
           "tests/integration/test_data_backfill.py", "tests/e2e/test_flights.py",
           "tests/integration/test_production_rabbitmq.py")  # 1199 ~1000 960 777 686 441 267 222 s (CI, 12-01)
LEVEL_ORDER = ("e2e", "integration", "unit")
# Session-stack modules that take the session's fraud champion as they find it (serving_support's
# champion_version trains one when there is none): they run after the rest of the group, so
# test_model_path's first training is still the session's first champion.
SESSION_STACK_LAST = ("tests/integration/test_airflow_view.py", "tests/integration/test_authoring_kit.py",
                      "tests/integration/test_batch_predict.py", "tests/integration/test_evidence.py",
                      "tests/integration/test_serving_rollout.py")


def _module(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def _uses_session_stack(item: pytest.Item) -> bool:
    # By definition, not by name: a unit module may have a `services` fixture of its own.
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.get("services", ()) if info is not None else ()
    return any(d.scope == "session" and d.func.__module__ == "tests.integration.conftest" for d in defs)


def _rank(item: pytest.Item, groups: dict[str, str]) -> int:
    group = groups[_module(item)]
    if group in LONGEST:
        return LONGEST.index(group)
    levels = [m for m in LEVEL_ORDER if item.get_closest_marker(m) is not None]
    return len(LONGEST) + (LEVEL_ORDER.index(levels[0]) if levels else len(LEVEL_ORDER))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, str] = {}
    for item in items:
        module = _module(item)
        if _uses_session_stack(item):
            groups[module] = SESSION_STACK
        groups.setdefault(module, module)
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(groups[_module(item)]))
        if config.getoption("loadgroup", False):  # set in xdist workers under --dist loadgroup
            _suffix_group(item)
    # stable: each module's tests stay together
    items.sort(key=lambda item: (_rank(item, groups), _module(item) in SESSION_STACK_LAST))


def _suffix_group(item: pytest.Item) -> None:
    """xdist 3.8 tells the controller a test's group by a ``@group`` nodeid suffix, written to
    ``item._nodeid``; pytest 9.2 keeps the id in ``item._id`` and ignores that, so no test is
    grouped (pytest-xdist issue 1386; this is its open fix, PR 1388). Remove with a fixed xdist."""
    from _pytest.nodeid import NodeId

    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    if hasattr(item, "_id") and "@" not in item.nodeid.rpartition("]")[2]:
        item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(names)}")


@pytest.fixture(scope="session")
def spec() -> PipelineSpec:
    return load_spec_file(ROOT / "models" / "fraud.yaml")


@pytest.fixture(autouse=True)
def _fresh_settings_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN201 - xdist's hook
    """loadgroup, reading the group of a parametrized id too: pytest 9.2 prints the id rebuilt from
    its parts, ``test[p]@group]``, where xdist 3.8 looks for ``@group`` after the last ``]``."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            _, sep, group = nodeid.rpartition("@")  # _suffix_group appends the group last
            return group.removesuffix("]") if sep and "::" not in group else nodeid

        def _assign_work_unit(self, node) -> None:  # noqa: ANN001 - xdist's WorkerController
            """A worker runs a test only once it holds the next one (xdist's remote loop), so a
            worker on a group of one or two tests is topped up with a second group at once. xdist
            takes the queue's next, which is the next long group: 18-minute e2e paths then ran one
            after another on one worker while two others sat idle (CI, 2026-12-01). A worker still
            busy with a long group gets the queue's first short group instead; long groups wait
            for a free worker."""
            busy = [scope for scope, unit in self.assigned_work.get(node, {}).items() if not all(unit.values())]
            if any(scope in LONGEST for scope in busy):
                short = next((scope for scope in self.workqueue if scope not in LONGEST), None)
                if short is not None:
                    self.workqueue.move_to_end(short, last=False)
            super()._assign_work_unit(node)

    return GroupScheduling(config, log)
