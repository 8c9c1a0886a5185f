"""Run an Airflow component whose task processes start warm: ``python -m flywheel.airflow.warm ARGS``
is ``airflow ARGS`` with Flywheel's task modules imported first.

The LocalExecutor (inside the scheduler) and Celery's prefork pool fork every task process from
a long-lived parent. A module the parent has imported is shared, copy on write, with each forked
task, so a task no longer pays the 3-7 s of imports (pandas, pyarrow, duckdb, Great Expectations,
Feast, MLflow, XGBoost, torch, Evidently) that used to come before its first line of work; on
the demo's backfill that was most of each task's time. Only imports happen here: no settings
are read, no client, thread or connection is made before the fork.

An import that fails is logged and skipped: the task that needs the module fails on its own,
with its own error, and every other task still starts warm.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time

log = logging.getLogger("flywheel.airflow.warm")

# What the DAGs' tasks import (flywheel/airflow/factory.py, flywheel/airflow/tasks.py); each pulls its libraries with it.
TASK_MODULES = (
    "flywheel.airflow.factory",
    "flywheel.data.ingest",
    "flywheel.data.validation",
    "flywheel.features.store",
    "flywheel.runs",
    "flywheel.training.trainer",
    "flywheel.training.promotion",
    "flywheel.monitoring.checks",
    "flywheel.monitoring.drift",
    "flywheel.monitoring.policy",
    "flywheel.serving.batch",
)


def preload(modules: tuple[str, ...] = TASK_MODULES) -> dict[str, float]:
    """Import ``modules``; returns the seconds each took (failed ones are left out)."""
    took: dict[str, float] = {}
    for name in modules:
        start = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken import must not stop the component
            log.warning("warm start: could not import %s (%s: %s); its tasks start cold",
                        name, type(exc).__name__, exc)
            continue
        took[name] = round(time.perf_counter() - start, 2)
    return took


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    took = preload()
    print(f"flywheel warm start: {len(took)}/{len(TASK_MODULES)} task modules imported in "
          f"{sum(took.values()):.1f} s before `airflow {' '.join(args[:1])}`", file=sys.stderr, flush=True)
    from airflow.__main__ import main as airflow_main

    sys.argv = ["airflow", *args]
    airflow_main()


if __name__ == "__main__":
    main()
