"""The production-like profile: what changes when ``FLYWHEEL_PROFILE=production``.

The embedded profile keeps every metadata store in SQLite and runs Airflow with the
LocalExecutor. The production profile runs the *same* processes (see
``flywheel/stack/launcher.py``) against shared services given by URLs
(``Settings.production``):

* Airflow metadata DB and MLflow backend store on PostgreSQL, one database each
  (``<prefix>_airflow``, ``<prefix>_mlflow``), created by ``flywheel.stack.provision``;
* Feast online store on Redis, Feast registry in PostgreSQL (``<prefix>_feast``, SQL
  registry) or as an object in the features bucket;
* Airflow's CeleryExecutor with a Redis or RabbitMQ broker, results in PostgreSQL,
  one ``airflow celery worker`` process per ``celery_workers`` entry; tasks matching
  ``gpu_tasks`` go to the ``gpu_queue`` (``flywheel.airflow.policy``).

docker-compose.yml and the Helm values set the same variables: tests/unit/test_compose.py
compares them with :func:`airflow_production_env`, so the three cannot drift apart.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from flywheel.core.config import PRODUCTION_DERIVATIONS, ConfigError, Settings

DATABASES = ("airflow", "mlflow", "mlflow_auth", "feast")
CELERY_EXECUTOR = "CeleryExecutor"
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def redact(url: str) -> str:
    """A URL with its password replaced by ``***`` (for logs and error messages)."""
    return _USERINFO.sub(r"\1***@", url)


def _split(url: str, what: str, schemes: tuple[str, ...]) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{what}: {redact(url)!r} is not a {'/'.join(schemes)}:// URL with a host")
    return parts


def database_name(settings: Settings, purpose: str) -> str:
    """``<prefix>_<purpose>``: the database each component owns."""
    if purpose not in DATABASES:
        raise ConfigError(f"unknown database purpose {purpose!r}; known: {', '.join(DATABASES)}")
    return f"{settings.production.database_prefix}_{purpose}"


def database_role(settings: Settings, purpose: str) -> str | None:
    """The login role that owns a database (None: the admin user of ``postgres_url``)."""
    return database_name(settings, purpose) if settings.production.db_password else None


def database_url(settings: Settings, purpose: str, *, driver: str = "postgresql+psycopg2") -> str:
    """SQLAlchemy URL of a component's database on the configured PostgreSQL server."""
    admin = _split(settings.production.postgres_url.get_secret_value(), "production.postgres_url",
                   ("postgresql", "postgres", "postgresql+psycopg2"))
    host = admin.hostname or ""
    netloc = f"{host}:{admin.port}" if admin.port else host
    role = database_role(settings, purpose)
    if role is not None and settings.production.db_password is not None:
        netloc = f"{role}:{settings.production.db_password.get_secret_value()}@{netloc}"
    elif admin.username:
        userinfo = admin.username + (f":{admin.password}" if admin.password else "")
        netloc = f"{userinfo}@{netloc}"
    return urlunsplit((driver, netloc, f"/{database_name(settings, purpose)}", admin.query, ""))


def admin_dsn(settings: Settings) -> str:
    """libpq DSN of the administrative connection (``postgresql://``)."""
    url = settings.production.postgres_url.get_secret_value()
    parts = _split(url, "production.postgres_url", ("postgresql", "postgres", "postgresql+psycopg2"))
    return urlunsplit(("postgresql", *parts[1:]))


def feast_redis_connection_string(settings: Settings) -> str:
    """Feast's ``host:port[,db=N][,password=…][,ssl=true]`` from ``production.redis_url``."""
    url = settings.production.redis_url.get_secret_value()
    parts = _split(url, "production.redis_url", ("redis", "rediss"))
    value = f"{parts.hostname}:{parts.port or 6379}"
    db = parts.path.strip("/")
    if db:
        if not db.isdigit():
            raise ConfigError(f"production.redis_url: database {db!r} is not a number")
        value += f",db={db}"
    if parts.password:
        value += f",password={unquote(parts.password)}"
    if parts.scheme == "rediss":
        value += ",ssl=true"
    return value


def feast_registry_config(settings: Settings) -> dict[str, object]:
    """SQL registry in ``<prefix>_feast`` or a registry object in the features bucket."""
    if settings.production.feast_registry == "s3":
        return {"registry_type": "file", "path": f"s3://{settings.bucket('features')}/feast/registry.pb",
                "cache_ttl_seconds": 30}
    return {"registry_type": "sql", "path": database_url(settings, "feast"), "cache_ttl_seconds": 30,
            "sqlalchemy_config_kwargs": {"pool_pre_ping": True}}


def broker_url(settings: Settings) -> str:
    url = settings.production.broker_url.get_secret_value()
    _split(url, "production.broker_url", ("redis", "rediss", "amqp", "amqps", "pyamqp"))
    return url


def worker_name(index: int) -> str:
    return f"airflow-worker-{index + 1}"


def worker_queues(settings: Settings, index: int) -> list[str]:
    queues = [q.strip() for q in settings.production.celery_workers[index].split(",") if q.strip()]
    if not queues:
        raise ConfigError(f"production.celery_workers[{index}] names no queue")
    return queues


def airflow_production_env(settings: Settings) -> dict[str, str]:
    """The Airflow settings the production profile adds (native stack, compose, Helm)."""
    prod = settings.production
    return {
        "AIRFLOW__CORE__EXECUTOR": CELERY_EXECUTOR,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database_url(settings, "airflow"),
        "AIRFLOW__CELERY__BROKER_URL": broker_url(settings),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url(settings, "airflow"),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(prod.worker_concurrency),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": prod.default_queue,
        # Read by flywheel.airflow.policy (the cluster policy) when DAGs are parsed.
        "FLYWHEEL_PRODUCTION__GPU_QUEUE": prod.gpu_queue,
        "FLYWHEEL_PRODUCTION__GPU_TASKS": _json_list(prod.gpu_tasks),
    }


def mlflow_backend_store_uri(settings: Settings) -> str:
    return database_url(settings, "mlflow")


def production_env(settings: Settings) -> dict[str, str]:
    """``FLYWHEEL_PRODUCTION__*`` so a child process builds the same ``Settings.production``."""
    prod = settings.production
    env = {
        "FLYWHEEL_PRODUCTION__POSTGRES_URL": prod.postgres_url.get_secret_value(),
        "FLYWHEEL_PRODUCTION__DATABASE_PREFIX": prod.database_prefix,
        "FLYWHEEL_PRODUCTION__REDIS_URL": prod.redis_url.get_secret_value(),
        "FLYWHEEL_PRODUCTION__BROKER_URL": prod.broker_url.get_secret_value(),
        "FLYWHEEL_PRODUCTION__CELERY_WORKERS": _json_list(prod.celery_workers),
        "FLYWHEEL_PRODUCTION__WORKER_CONCURRENCY": str(prod.worker_concurrency),
        "FLYWHEEL_PRODUCTION__DEFAULT_QUEUE": prod.default_queue,
        "FLYWHEEL_PRODUCTION__GPU_QUEUE": prod.gpu_queue,
        "FLYWHEEL_PRODUCTION__GPU_TASKS": _json_list(prod.gpu_tasks),
        "FLYWHEEL_PRODUCTION__FEAST_REGISTRY": prod.feast_registry,
    }
    if prod.db_password is not None:
        env["FLYWHEEL_PRODUCTION__DB_PASSWORD"] = prod.db_password.get_secret_value()
    return env


def _json_list(values: list[str]) -> str:
    import json

    return json.dumps(list(values))


PRODUCTION_DERIVATIONS.update(redis=feast_redis_connection_string, feast_registry=feast_registry_config,
                              env=production_env)
