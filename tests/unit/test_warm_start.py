"""flywheel/airflow/warm.py: the scheduler and Celery workers import the task modules before
Airflow forks task processes from them."""

from __future__ import annotations

import pytest

from flywheel.airflow import warm

pytestmark = pytest.mark.unit


def test_every_task_module_imports_and_a_broken_one_is_skipped() -> None:
    took = warm.preload((*warm.TASK_MODULES, "flywheel.no_such_module"))
    assert set(took) == set(warm.TASK_MODULES)  # all real ones imported, the broken one left out
