"""The warm entry point of the scheduler and Celery workers (flywheel/airflow/warm.py) is the
Airflow CLI: a real `airflow` subcommand, run after the task modules are imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flywheel.airflow import warm

pytestmark = pytest.mark.integration


def test_the_warm_entry_point_is_the_airflow_cli() -> None:
    """`python -m flywheel.airflow.warm ARGS` runs `airflow ARGS` after the imports."""
    done = subprocess.run([sys.executable, "-m", "flywheel.airflow.warm", "version"],
                          capture_output=True, text=True, timeout=300, check=True)
    import airflow

    assert done.stdout.strip().splitlines()[-1] == airflow.__version__
    assert f"{len(warm.TASK_MODULES)}/{len(warm.TASK_MODULES)} task modules imported" in done.stderr
