"""Provisioning and routing of the production profile against the real shared services.

PostgreSQL 127.0.0.1:5432 (databases ``flywheel_prod_test_*``, dropped afterwards), Redis
(DB 2) and RabbitMQ 127.0.0.1:5672 (guest, vhost ``/``) as the alternative Celery broker.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg2
import pytest

from flywheel.core.config import ConfigError, ProductionServices, Profile, Settings
from flywheel.core.profiles import DATABASES, admin_dsn, database_name, database_url, redact
from flywheel.stack.provision import (
    ProvisionError,
    check_broker,
    check_redis,
    drop_databases,
    ensure_databases,
)

pytestmark = pytest.mark.integration


def production_settings(tmp_path, **production) -> Settings:
    prefix = f"flywheel_prod_test_{secrets.token_hex(3)}"
    fields = {"database_prefix": prefix, "redis_url": "redis://127.0.0.1:6379/2",
              "broker_url": "redis://127.0.0.1:6379/3"} | production
    services = ProductionServices(**fields)
    return Settings(home=tmp_path, profile=Profile.PRODUCTION, production=services)


@pytest.fixture()
def settings(tmp_path) -> Iterator[Settings]:
    s = production_settings(tmp_path, db_password=secrets.token_urlsafe(12))
    try:
        yield s
    finally:
        drop_databases(s)
        with psycopg2.connect(admin_dsn(s)) as conn, conn.cursor() as cur:
            for purpose in DATABASES:
                cur.execute(f'DROP ROLE IF EXISTS "{database_name(s, purpose)}"')


def test_databases_and_owner_roles_are_created_once(settings: Settings) -> None:
    first = ensure_databases(settings)
    names = [database_name(settings, p) for p in DATABASES]
    assert first.created_databases == names and first.created_roles == names
    again = ensure_databases(settings)  # idempotent: nothing new, nothing dropped
    assert again.created_databases == [] and again.existing_databases == names and again.created_roles == []
    # Each component logs in as its own role, which owns its database and can create tables.
    url = database_url(settings, "mlflow", driver="postgresql")
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("create table probe (id int)")
        cur.execute("select current_user, current_database()")
        assert cur.fetchone() == (database_name(settings, "mlflow"),) * 2


def test_unreachable_postgres_is_a_typed_error_without_the_password(tmp_path) -> None:
    s = production_settings(tmp_path, postgres_url="postgresql://postgres:hunter2secret@127.0.0.1:1/postgres")
    with pytest.raises(ProvisionError, match=r"PostgreSQL postgresql://postgres:\*\*\*@127.0.0.1:1") as err:
        ensure_databases(s)
    assert "hunter2secret" not in str(err.value)


def test_invalid_urls_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="production.redis_url"):
        production_settings(tmp_path, redis_url="http://127.0.0.1:6379").online_store_config()
    with pytest.raises(ConfigError, match="production.broker_url"):
        check_broker(production_settings(tmp_path, broker_url="kafka://127.0.0.1:9092"))
    assert redact("amqp://guest:guest@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"


def test_redis_and_both_broker_kinds_are_reachable(tmp_path) -> None:
    check_redis(production_settings(tmp_path))
    check_broker(production_settings(tmp_path))  # Redis DB 3
    check_broker(production_settings(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    with pytest.raises(ProvisionError, match="Celery broker amqp://guest:\\*\\*\\*@"):
        check_broker(production_settings(tmp_path, broker_url="amqp://guest:wrong@127.0.0.1:5672//"))
    with pytest.raises(ProvisionError, match="Redis redis://127.0.0.1:1/2"):
        check_redis(production_settings(tmp_path, redis_url="redis://127.0.0.1:1/2"))


def test_cluster_policy_routes_configured_tasks_to_the_gpu_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real DAGs, parsed the way the dag-processor parses them, with the policy installed."""
    from airflow.dag_processing.dagbag import DagBag

    from flywheel.core.config import PROJECT_ROOT, get_settings

    monkeypatch.setenv("FLYWHEEL_PRODUCTION__GPU_TASKS", '["fraud_training.train", "*.drift_check"]')
    monkeypatch.setenv("FLYWHEEL_PRODUCTION__GPU_QUEUE", "gpu")
    get_settings.cache_clear()
    import airflow.settings

    from flywheel.airflow.policy import task_policy

    monkeypatch.setattr(airflow.settings, "task_policy", task_policy, raising=False)
    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    queues = {(d.dag_id, t.task_id): t.queue for d in bag.dags.values() for t in d.tasks}
    assert queues[("fraud_training", "train")] == "gpu"
    assert queues[("fraud_monitoring", "drift_check")] == "gpu"
    assert queues[("fraud_training", "package")] != "gpu"
    assert queues[("fraud_data", "ingest")] != "gpu"


def test_feast_registry_in_the_object_store(services: Settings, monkeypatch: pytest.MonkeyPatch, spec) -> None:
    """``production.feast_registry = "s3"``: the registry is an object in the features bucket."""
    from flywheel.core import storage
    from flywheel.features import store as features

    settings = services.model_copy(update={
        "profile": Profile.PRODUCTION,
        "production": ProductionServices(feast_registry="s3", redis_url="redis://127.0.0.1:6379/2"),
    })
    for key, value in settings.aws_env().items():
        monkeypatch.setenv(key, value)
    features.apply(spec, settings)
    keys = storage.list_keys("features", "feast/", settings=settings)
    assert "feast/registry.pb" in keys
    assert {v.name for v in features.feature_store(settings).list_feature_views()} >= {"fraud_user", "fraud_merchant"}
