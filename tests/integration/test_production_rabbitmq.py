"""The production profile with RabbitMQ (127.0.0.1:5672, guest, vhost "/") as the Celery broker.

One day of the data DAG runs through the scheduler and two Celery workers that consume the
queue ``flywheel-prod-test-<id>`` (a name of our own on the shared vhost); metadata on
PostgreSQL (databases dropped afterwards). Midway, both workers are SIGKILLed during a writing task
and started again: its retry on a new worker writes the day once. ~3 min: e2e only.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from datetime import date

import pandas as pd
import pytest

from examples.fraud.generator import write_landing
from flywheel.airflow.client import AirflowClient
from flywheel.core import storage
from flywheel.core.config import ProductionServices, Profile, Settings
from flywheel.stack import launcher as stack
from flywheel.stack.provision import drop_databases
from tests.ports import ports

pytestmark = pytest.mark.e2e
DAY = date(2026, 1, 1)
# Its own Redis database: test_production_loop flushes 2 and 3, and may run beside it (pytest-xdist).
REDIS_ONLINE = "redis://127.0.0.1:6379/6"


WORKERS = ["airflow-worker-1", "airflow-worker-2"]


def _kill_workers_mid_task(settings: Settings, client: AirflowClient, backfill: int) -> str:
    """SIGKILL both Celery workers (their process groups: the task processes with them) while a
    writing task runs; returns its task id."""
    deadline = time.monotonic() + 300
    while True:
        runs = client.backfill_runs(backfill)
        running = [t for t, s in client.task_states("fraud_data", runs[0].run_id).items()
                   if s == "running" and t in ("ingest", "validate", "features")] if runs else []
        if running:
            break
        assert time.monotonic() < deadline, "no writing task ran"
        time.sleep(0.2)
    for status in stack.status(settings):
        if status.name in WORKERS and status.pid:
            os.killpg(os.getpgid(status.pid), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(s.name in WORKERS and s.running for s in stack.status(settings)):  # gone before the restart
        assert time.monotonic() < deadline, "the killed workers did not exit"
        time.sleep(0.2)
    return running[0]


def test_a_data_day_runs_through_rabbitmq(tmp_path, spec, monkeypatch) -> None:
    # A killed worker's task is found by its missing heartbeats: after 45 s here (300 s by default).
    monkeypatch.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", "45")
    token = secrets.token_hex(3)
    queue = f"flywheel-prod-test-{token}"
    settings = Settings(
        home=tmp_path, ports=ports(30000), profile=Profile.PRODUCTION,
        production=ProductionServices(
            database_prefix=f"flywheel_prod_test_{token}", redis_url=REDIS_ONLINE,
            broker_url="amqp://guest:guest@127.0.0.1:5672//", default_queue=queue,
            celery_workers=[queue, queue], worker_concurrency=1,
        ),
    )
    try:
        settings = stack.up(settings, services=[s.name for s in stack.SERVICES if not s.optional])
        assert stack.airflow_env(settings)["AIRFLOW__CELERY__BROKER_URL"].startswith("amqp://")
        write_landing(settings.home / "landing", DAY, 1, spec.generator, dataset=spec.dataset.name)
        client = AirflowClient(settings)
        client.wait_for_dag("fraud_data", timeout=180)
        client.unpause("fraud_data")
        backfill = client.backfill("fraud_data", DAY, DAY)
        # Fault (issue 14 §6): both Celery workers SIGKILLed mid-task, then started again; the
        # scheduler finds the task's heartbeats gone and its retry runs on a new worker.
        killed = _kill_workers_mid_task(settings, client, backfill)
        stack.up(settings, services=WORKERS)
        states = client.wait_for_runs("fraud_data", backfill, timeout=600)
        assert list(states.values()) == ["success"]
        run_id = next(iter(states))
        assert set(client.task_states("fraud_data", run_id).values()) == {"success"}
        tries = {ti["task_id"]: ti["try_number"] for ti in client.request(
            "GET", f"/dags/fraud_data/dagRuns/{run_id}/taskInstances", params={"limit": 100})["task_instances"]}
        assert tries[killed] >= 2, (killed, tries)  # the killed try, then the retry
        executed = {name: stack.log_path(settings, name).read_text().count("Executing workload in Celery")
                    for name in WORKERS}
        assert sum(executed.values()) >= 4, executed  # sensor, ingest, validate, features
        raw = storage.read_manifest(zone="raw", dataset="transactions", ds=DAY.isoformat(), settings=settings)
        landed = pd.read_parquet(settings.home / "landing" / "transactions" / f"ds={DAY.isoformat()}")
        curated = storage.read_partition(zone="curated", dataset="transactions", ds=DAY.isoformat(), settings=settings)
        quarantined = storage.read_manifest(zone="quarantine", dataset="transactions", ds=DAY.isoformat(),
                                            settings=settings)
        assert raw.rows == len(landed) and len(curated) + quarantined.rows == raw.rows, "0 lost"
        assert curated["transaction_id"].is_unique, "0 duplicated"
    finally:
        stack.down(settings)
        drop_databases(settings)
