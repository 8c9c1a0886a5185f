"""Create what the production profile needs on its shared services (idempotent).

* PostgreSQL: one database per component (``<prefix>_airflow``, ``_mlflow``, ``_feast``),
  each owned by its own login role when ``production.db_password`` is set;
* Redis (online store) and the Celery broker (Redis or RabbitMQ): reachable and
  authenticated, or a :class:`ProvisionError` naming which URL failed and why.

Schemas are not created here: ``airflow db migrate``, MLflow and Feast create their own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flywheel.core.config import Settings
from flywheel.core.profiles import DATABASES, admin_dsn, broker_url, database_name, database_role, redact

log = logging.getLogger(__name__)


class ProvisionError(RuntimeError):
    """A shared service of the production profile is unreachable or refused a change."""


@dataclass
class ProvisionReport:
    created_databases: list[str] = field(default_factory=list)
    existing_databases: list[str] = field(default_factory=list)
    created_roles: list[str] = field(default_factory=list)


def ensure_databases(settings: Settings) -> ProvisionReport:
    """Create the missing databases (and owner roles); leave existing ones untouched."""
    import psycopg2
    from psycopg2 import sql

    report = ProvisionReport()
    dsn = admin_dsn(settings)
    try:
        conn = psycopg2.connect(dsn, connect_timeout=5)
    except psycopg2.Error as exc:
        raise ProvisionError(f"PostgreSQL {redact(dsn)}: cannot connect: {str(exc).strip()}") from exc
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for purpose in DATABASES:
                name = database_name(settings, purpose)
                role = database_role(settings, purpose)
                if role is not None:
                    _ensure_role(cur, settings, role, report)
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    report.existing_databases.append(name)
                    continue
                owner = sql.SQL(" OWNER {}").format(sql.Identifier(role)) if role else sql.SQL("")
                cur.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), owner))
                report.created_databases.append(name)
                log.info("created database %s", name)
    except psycopg2.Error as exc:
        raise ProvisionError(f"PostgreSQL {redact(dsn)}: {str(exc).strip()}") from exc
    finally:
        conn.close()
    return report


def _ensure_role(cur: object, settings: Settings, role: str, report: ProvisionReport) -> None:
    from psycopg2 import sql

    assert settings.production.db_password is not None
    password = settings.production.db_password.get_secret_value()
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))  # type: ignore[attr-defined]
    verb = "ALTER" if cur.fetchone() else "CREATE"  # type: ignore[attr-defined]
    statement = sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role))
    cur.execute(statement, (password,))  # type: ignore[attr-defined]
    if verb == "CREATE":
        report.created_roles.append(role)


def drop_databases(settings: Settings) -> list[str]:
    """Drop the profile's databases (tests and ``flywheel`` resets only); returns those dropped."""
    import psycopg2
    from psycopg2 import sql

    dropped = []
    conn = psycopg2.connect(admin_dsn(settings), connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for purpose in DATABASES:
                name = database_name(settings, purpose)
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone():
                    cur.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                    dropped.append(name)
    finally:
        conn.close()
    return dropped


def check_redis(settings: Settings) -> None:
    """PING the online store's Redis with the configured URL."""
    import redis

    url = settings.production.redis_url.get_secret_value()
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
    except redis.RedisError as exc:
        raise ProvisionError(f"Redis {redact(url)}: {exc}") from exc


def check_broker(settings: Settings) -> None:
    """Connect to the Celery broker (Redis or AMQP) with the configured URL."""
    from kombu import Connection

    url = broker_url(settings)
    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # kombu raises transport-specific errors
        raise ProvisionError(f"Celery broker {redact(url)}: {exc}") from exc


def provision(settings: Settings) -> ProvisionReport:
    """Everything the production profile needs before its processes start."""
    report = ensure_databases(settings)
    check_redis(settings)
    check_broker(settings)
    return report


def main() -> None:
    """``python -m flywheel.stack.provision``: the compose/Helm init step (no secrets printed)."""
    from flywheel.core.config import get_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = provision(get_settings())
    print(f"databases created: {report.created_databases or '-'}; existing: {report.existing_databases or '-'}; "
          f"roles created: {report.created_roles or '-'}")


if __name__ == "__main__":
    main()
