"""The production profile with RabbitMQ (127.0.0.1:5672, guest, vhost "/") as the Celery broker.

One day of the data DAG runs through the scheduler and two Celery workers that consume the
queue ``flywheel-prod-test-<id>`` (a name of our own on the shared vhost); metadata on
PostgreSQL (databases dropped afterwards). ~1.5 min: e2e only.
"""

from __future__ import annotations

import secrets
from datetime import date

import pytest

from examples.fraud.generator import write_landing
from flywheel.airflow.client import AirflowClient
from flywheel.core.config import ProductionServices, Profile, Settings
from flywheel.stack import launcher as stack
from flywheel.stack.provision import drop_databases
from tests.ports import ports

pytestmark = pytest.mark.e2e
DAY = date(2026, 1, 1)
# Its own Redis database: test_production_loop flushes 2 and 3, and may run beside it (pytest-xdist).
REDIS_ONLINE = "redis://127.0.0.1:6379/6"


def test_a_data_day_runs_through_rabbitmq(tmp_path, spec) -> None:
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
        states = client.wait_for_runs("fraud_data", backfill, timeout=400)
        assert list(states.values()) == ["success"]
        run_id = next(iter(states))
        assert set(client.task_states("fraud_data", run_id).values()) == {"success"}
        executed = {name: stack.log_path(settings, name).read_text().count("Executing workload in Celery")
                    for name in ("airflow-worker-1", "airflow-worker-2")}
        assert sum(executed.values()) >= 4, executed  # sensor, ingest, validate, features
    finally:
        stack.down(settings)
        drop_databases(settings)
