"""The production profile's derived settings (flywheel/core/profiles.py) and its stack layout, no services."""

from __future__ import annotations

import pytest

from flywheel.core import profiles, storage
from flywheel.core.config import ConfigError, ProductionServices, Profile, Settings
from flywheel.stack import launcher as stack

pytestmark = pytest.mark.unit


def prod(tmp_path, **fields) -> Settings:
    return Settings(home=tmp_path, profile=Profile.PRODUCTION, production=ProductionServices(**fields))


def test_database_urls_use_the_admin_user_or_the_owner_role(tmp_path) -> None:
    admin = prod(tmp_path, postgres_url="postgresql://admin:s3cret@db.internal:6543/postgres?sslmode=require",
                 database_prefix="fw")
    assert profiles.database_url(admin, "airflow") == (
        "postgresql+psycopg2://admin:s3cret@db.internal:6543/fw_airflow?sslmode=require")
    roles = prod(tmp_path, postgres_url="postgresql://admin:s3cret@db.internal/postgres", db_password="pw")
    assert profiles.database_url(roles, "mlflow") == "postgresql+psycopg2://flywheel_mlflow:pw@db.internal/flywheel_mlflow"
    with pytest.raises(ConfigError, match="unknown database purpose"):
        profiles.database_name(admin, "metrics")


def test_database_prefix_must_be_a_safe_identifier(tmp_path) -> None:
    with pytest.raises(ValueError, match="database_prefix"):
        prod(tmp_path, database_prefix='x"; drop database postgres; --')


def test_feast_online_store_and_registry(tmp_path) -> None:
    s = prod(tmp_path, redis_url="rediss://:tok%40en@cache.example:6380/4")
    assert s.online_store_config() == {
        "type": "redis", "connection_string": "cache.example:6380,db=4,password=tok@en,ssl=true"}
    assert s.feast_registry_config()["registry_type"] == "sql"
    assert s.feast_registry_config()["path"].endswith("/flywheel_feast")
    s3 = prod(tmp_path, feast_registry="s3")
    assert s3.feast_registry_config()["path"] == "s3://flywheel-features/feast/registry.pb"
    embedded = Settings(home=tmp_path)
    assert embedded.online_store_config()["type"] == "sqlite"
    assert embedded.feast_registry_config()["registry_type"] == "file"
    with pytest.raises(ConfigError, match="not a number"):
        prod(tmp_path, redis_url="redis://127.0.0.1:6379/x").online_store_config()


def test_airflow_env_switches_executor_and_metadata_db(tmp_path) -> None:
    s = prod(tmp_path, broker_url="amqp://guest:guest@127.0.0.1:5672/flywheel-prod", default_queue="q",
             gpu_tasks=["*.train"])
    env = stack.airflow_env(stack.ensure_secrets(s))
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("/flywheel_airflow")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "amqp://guest:guest@127.0.0.1:5672/flywheel-prod"
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "q"
    assert env["FLYWHEEL_PRODUCTION__GPU_TASKS"] == '["*.train"]'
    embedded = stack.airflow_env(stack.ensure_secrets(Settings(home=tmp_path / "e")))
    assert embedded["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert embedded["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")


def test_child_processes_rebuild_the_same_production_settings(tmp_path, monkeypatch) -> None:
    s = prod(tmp_path, celery_workers=["default", "default,gpu"], worker_concurrency=3, db_password="pw")
    for key, value in s.component_env().items():
        monkeypatch.setenv(key, value)
    child = Settings()
    assert child.profile is Profile.PRODUCTION
    assert child.production == s.production


def test_workers_exist_only_in_the_production_profile(tmp_path) -> None:
    s = prod(tmp_path, celery_workers=["default", "default,gpu", "gpu"], worker_concurrency=1)
    names = [svc.name for svc in stack.SERVICES if svc.enabled(s)]
    assert [n for n in names if n.startswith("airflow-worker")] == [
        "airflow-worker-1", "airflow-worker-2", "airflow-worker-3"]
    assert not [svc.name for svc in stack.SERVICES if svc.enabled(Settings(home=tmp_path))
                and svc.name.startswith("airflow-worker")]
    argv = stack.get_service("airflow-worker-2").command(s)
    # a worker runs warm (flywheel/airflow/warm.py): `python -m flywheel.airflow.warm celery worker ...`
    assert argv[1:5] == ["-m", "flywheel.airflow.warm", "celery", "worker"]
    assert argv[argv.index("--queues") + 1] == "default,gpu"
    assert argv[argv.index("--concurrency") + 1] == "1" and "--skip-serve-logs" in argv
    with pytest.raises(ValueError, match="celery_workers"):
        prod(tmp_path, celery_workers=["default"] * 5)
    # the backend store URI (a password) is in MLflow's environment, never on its command line
    assert "--backend-store-uri" not in stack.get_service("mlflow").command(s)
    assert stack.get_service("mlflow").env(stack.ensure_secrets(s))["MLFLOW_BACKEND_STORE_URI"].endswith(
        "/flywheel_mlflow")


def test_s3_addressing_style_and_region_reach_the_client(tmp_path) -> None:
    s = Settings(home=tmp_path, s3_endpoint_url="https://s3.eu-west-1.amazonaws.com", s3_region="eu-west-1",
                 s3_addressing_style="virtual", s3_access_key="AKIAEXAMPLE", s3_secret_key="secret")
    url = storage.s3_client(s).generate_presigned_url("get_object", Params={"Bucket": "fw-raw", "Key": "k"})
    assert url.startswith("https://fw-raw.s3.eu-west-1.amazonaws.com/k?")
    path = storage.s3_client(s.model_copy(update={"s3_addressing_style": "path"}))
    assert path.generate_presigned_url("get_object", Params={"Bucket": "fw-raw", "Key": "k"}).startswith(
        "https://s3.eu-west-1.amazonaws.com/fw-raw/k?")


def test_redact_hides_passwords_only() -> None:
    assert profiles.redact("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert profiles.redact("postgresql://u@h/db") == "postgresql://u@h/db"
