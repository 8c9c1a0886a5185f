"""Airflow cluster policy: route tasks that need a GPU to the GPU queue, by configuration.

Loaded through ``airflow_local_settings.py`` (``infra/airflow/``), which the native
production stack copies to ``$AIRFLOW_HOME/config/`` and the images and the Helm
values install the same way. Which tasks need a GPU is configuration, not DAG code:
``FLYWHEEL_PRODUCTION__GPU_TASKS='["fraud_training.train"]'`` (fnmatch patterns
over ``<dag_id>.<task_id>``), queue ``FLYWHEEL_PRODUCTION__GPU_QUEUE`` (``gpu``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from flywheel.core.config import Settings, get_settings


def gpu_queue_for(dag_id: str, task_id: str, settings: Settings | None = None) -> str | None:
    """The GPU queue when ``<dag_id>.<task_id>`` matches a configured pattern, else None."""
    prod = (settings or get_settings()).production
    name = f"{dag_id}.{task_id}"
    return prod.gpu_queue if any(fnmatchcase(name, pattern) for pattern in prod.gpu_tasks) else None


def task_policy(task: Any) -> None:
    """Airflow calls this for every task when a DAG is parsed."""
    dag_id = task.dag_id if getattr(task, "has_dag", lambda: True)() else None
    if dag_id is None:
        return
    queue = gpu_queue_for(dag_id, task.task_id)
    if queue is not None:
        task.queue = queue
