"""The embedded stack: SeaweedFS, MLflow, Airflow, the model server and the exporter as local processes.

Every service binds ``settings.host`` (127.0.0.1) and runs in its own session
(process group) so that ``down`` can stop it together with its children. State
lives under ``settings.home``: ``run/<service>.pid`` and ``logs/<service>.log``.
Nothing happens at import time; ``up`` is idempotent.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from flywheel.core.config import PROJECT_ROOT, SECRETS_FILE, Profile, Settings, mask, read_secrets
from flywheel.stack import security
from flywheel.stack.common import StackError, _secret, _write_private

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)

SETTINGS_SECRETS = ("s3_access_key", "s3_secret_key", "airflow_password", "api_key", "pii_key")
# Not fields of Settings: every Airflow component must share these values.
AIRFLOW_SECRETS = ("airflow_secret_key", "airflow_jwt_secret", "airflow_fernet_key")
AIRFLOW_COMPONENTS = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
GRPC_PORT_OFFSET = 10_000  # SeaweedFS's admin worker dials <admin port> + 10000 (gRPC)
LOG_TAIL_LINES = 30
STOP_TIMEOUT_S = 15.0
MAX_CELERY_WORKERS = 4  # service slots airflow-worker-1..4 (Settings.production.celery_workers)


class PortInUseError(StackError):
    """A port a service needs is held by a process that is not that service."""

    def __init__(self, service: str, port: int) -> None:
        super().__init__(f"port {port} needed by {service} is already in use by another process")
        self.service = service
        self.port = port


class ServiceStartError(StackError):
    """A service did not become healthy; the message ends with its last log lines."""

    def __init__(self, service: str, reason: str, log_path: Path) -> None:
        tail = "\n".join(_tail(log_path, LOG_TAIL_LINES))
        super().__init__(f"{service} {reason} (log: {log_path}); last lines:\n{tail}")
        self.service = service
        self.log_path = log_path


class UnknownServiceError(StackError, ValueError):
    """A service name that is not in the stack."""


@dataclass(frozen=True)
class Service:
    """How to run and probe one process of the stack."""

    name: str
    command: Callable[[Settings], list[str]]
    env: Callable[[Settings], dict[str, str]]
    health: Callable[[Settings], bool]
    ports: Callable[[Settings], tuple[int, ...]] = lambda _: ()
    url: Callable[[Settings], str | None] = lambda _: None
    requires: tuple[str, ...] = ()
    prepare: Callable[[Settings], None] | None = None
    on_healthy: Callable[[Settings], None] | None = None
    start_timeout_s: float = 120.0
    optional: bool = False  # started by ``up`` only when asked for (or, model-server, when a bento exists)
    # Whether the service belongs to the stack of these settings (profile, worker count).
    enabled: Callable[[Settings], bool] = lambda _: True


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    port: int | None
    url: str | None
    healthy: bool
    log: Path

    @property
    def running(self) -> bool:
        return self.pid is not None


# ---- secrets -----------------------------------------------------------------


def ensure_secrets(settings: Settings) -> Settings:
    """Generate missing secrets into ``<home>/secrets.json`` (0600); return settings that hold them.

    Existing values are kept, so reruns never rotate credentials.
    """
    path = settings.home / SECRETS_FILE
    current = read_secrets(settings.home)
    wanted = (*SETTINGS_SECRETS, *AIRFLOW_SECRETS, *security.MLFLOW_SECRETS, *security.WEED_SECRETS)
    missing = [k for k in wanted if not current.get(k)]
    if not all(current.get(k) for k in security.SIGNING_SECRETS):
        current.update(security.new_signing_pair())
        missing += list(security.SIGNING_SECRETS)
    if missing:
        current.update({key: _new_secret(key) for key in missing if key not in security.SIGNING_SECRETS})
        _write_private(path, json.dumps(current, indent=2) + "\n")
        log.info("generated secrets %s in %s", ", ".join(missing), path)
    else:
        path.chmod(0o600)
    return Settings(**{name: getattr(settings, name) for name in settings.model_fields_set})


def _new_secret(key: str) -> str:
    if key == "airflow_fernet_key":
        from cryptography.fernet import Fernet

        return Fernet.generate_key().decode()
    return secrets.token_urlsafe(16 if key == "s3_access_key" else 32)


# ---- environments --------------------------------------------------------------


def _bin(name: str) -> str:
    """An executable of this interpreter's environment (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"executable {name!r} not found next to {sys.executable} or on PATH")
    return found


def _base_env() -> dict[str, str]:
    """The launcher's environment without any secret in it (each component gets its own)."""
    env = security.scrub(dict(os.environ))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # Nothing leaves the machine: opt out of the tools' usage reporting.
    env.update({"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "BENTOML_DO_NOT_TRACK": "true"})
    return env


def flywheel_env(settings: Settings) -> dict[str, str]:
    """``FLYWHEEL_*`` variables so a child process builds the same Settings as the launcher."""
    env = settings.component_env()
    env["FLYWHEEL_READ_SECRETS_FILE"] = "false"  # its secrets come in its environment
    env["FLYWHEEL_HOST"] = settings.host
    env["FLYWHEEL_BUCKET_PREFIX"] = settings.bucket_prefix
    for field, port in settings.ports.model_dump().items():
        env[f"FLYWHEEL_PORTS__{field.upper()}"] = str(port)
    return env


def _tasks_env(settings: Settings, component: str = "tasks") -> dict[str, str]:
    """Environment of processes that run pipeline code (Airflow tasks, the model server), with
    that component's secrets (:func:`flywheel.stack.security.component_secrets`)."""
    env = _base_env()
    env.update(flywheel_env(settings))
    env.update(settings.aws_env())
    env["MLFLOW_TRACKING_URI"] = str(settings.mlflow_tracking_uri)
    env.update(security.component_secrets(settings, component))
    return env


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment of every Airflow component (and of ``airflow`` CLI calls against this stack)."""
    home = settings.airflow_home
    api = f"http://{settings.host}:{settings.ports.airflow}"
    env = _tasks_env(settings)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": _secret(settings, "airflow_fernet_key"),
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{settings.airflow_user}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(_airflow_passwords_file(settings)),
            # Writers wait up to 30 s for SQLite's lock instead of failing after the default 5 s.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}?timeout=30",
            "AIRFLOW__API__HOST": settings.host,
            "AIRFLOW__API__PORT": str(settings.ports.airflow),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(settings.ports.airflow_worker_logs),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(settings.ports.airflow_trigger_logs),
            "AIRFLOW__API__SECRET_KEY": _secret(settings, "airflow_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(settings, "airflow_jwt_secret"),
            # New DAG files show within ~10 s, changed ones within ~15 s.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "15",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        }
    )
    if settings.profile is Profile.PRODUCTION:
        from flywheel.core.profiles import airflow_production_env

        env.update(airflow_production_env(settings))
    return env


def _airflow_passwords_file(settings: Settings) -> Path:
    return settings.airflow_home / "simple_auth_manager_passwords.json"


# ---- service definitions -------------------------------------------------------


def _seaweed_dir(settings: Settings) -> Path:
    return settings.home / "seaweedfs"


def _free_admin_port(host: str) -> int:
    """A free port whose gRPC twin (+10000) is free too: weed's worker dials admin + 10000."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = int(probe.getsockname()[1])
        if port + GRPC_PORT_OFFSET < 65536 and _port_free(host, port + GRPC_PORT_OFFSET):
            return port
    raise StackError("found no free port pair for the SeaweedFS admin server")


def _weed_ports(settings: Settings) -> tuple[int, ...]:
    p = settings.ports
    if security.weed_isolated(settings):  # everything but the S3 bridge is inside its namespace
        return (p.s3,)
    http = (p.s3, p.weed_master, p.weed_volume, p.weed_filer)
    return http + (p.s3_grpc, p.weed_master_grpc, p.weed_volume_grpc, p.weed_filer_grpc)


def _weed_command(settings: Settings) -> list[str]:
    p, home = settings.ports, _seaweed_dir(settings)
    # `weed mini` always runs an admin server (-admin.ui=false only hides its UI) that
    # nothing here uses; Ports has no field for it, so it gets a free ephemeral port.
    isolated = security.weed_isolated(settings)
    ip = "127.0.0.1" if isolated else settings.host  # inside its namespace: its own loopback
    admin = _free_admin_port(settings.host)
    command = [
        _bin("weed"), "mini", f"-dir={home / 'data'}",
        f"-ip={ip}", f"-ip.bind={ip}",
        f"-master.port={p.weed_master}", f"-volume.port={p.weed_volume}",
        f"-filer.port={p.weed_filer}", f"-s3.port={p.s3}",
        f"-master.port.grpc={p.weed_master_grpc}", f"-volume.port.grpc={p.weed_volume_grpc}",
        f"-filer.port.grpc={p.weed_filer_grpc}", f"-s3.port.grpc={p.s3_grpc}",
        f"-admin.port={admin}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
        "-admin.ui=false", "-master.telemetry=false",
        f"-s3.config={home / 'identities.json'}",
    ]  # fmt: skip
    if not isolated:
        return command
    socket_path = security.s3_socket(settings)
    return [sys.executable, "-m", "flywheel.stack.isolation", "--listen", f"{settings.host}:{p.s3}",
            "--socket", str(socket_path), "--", *command, f"-s3.localSocket={socket_path}"]


def _weed_env(settings: Settings) -> dict[str, str]:
    env = {**_base_env(), **flywheel_env(settings), **security.component_secrets(settings, "seaweedfs")}
    env["WEED_ACCESS_UI"] = "false"  # the volume server's unauthenticated status page
    return env


def _prepare_seaweed(settings: Settings) -> None:
    home = _seaweed_dir(settings)
    (home / "data").mkdir(parents=True, exist_ok=True)
    identity = {
        "name": "flywheel",
        "credentials": [
            {"accessKey": _secret(settings, "s3_access_key"), "secretKey": _secret(settings, "s3_secret_key")}
        ],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    _write_private(home / "identities.json", json.dumps({"identities": [identity]}, indent=2))


def _s3_healthy(settings: Settings) -> bool:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=_secret(settings, "s3_access_key"),
        aws_secret_access_key=_secret(settings, "s3_secret_key"),
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3),
    )
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError):
        return False
    return True


def _ensure_buckets(settings: Settings) -> None:
    from flywheel.core.storage import ensure_buckets

    ensure_buckets(settings)


def mlflow_backend_store_uri(settings: Settings) -> str:
    """SQLite under the home (embedded) or the ``<prefix>_mlflow`` PostgreSQL database."""
    if settings.profile is Profile.PRODUCTION:
        from flywheel.core.profiles import mlflow_backend_store_uri as production_uri

        return production_uri(settings)
    return f"sqlite:///{settings.home / 'mlflow' / 'mlflow.db'}"


def _mlflow_command(settings: Settings) -> list[str]:
    # The backend store URI (a database password in production) is in MLFLOW_BACKEND_STORE_URI,
    # not on the command line, where `ps` would show it.
    return [
        _bin("mlflow"), "server", "--app-name", "basic-auth",
        "--artifacts-destination", f"s3://{settings.bucket('mlflow')}/",
        "--serve-artifacts",
        "--host", settings.host, "--port", str(settings.ports.mlflow),
        "--workers", "1",
    ]  # fmt: skip


def _mlflow_env(settings: Settings) -> dict[str, str]:
    env = _base_env()
    env.update(flywheel_env(settings))
    env.update(settings.aws_env())  # the server proxies artifacts; clients need no S3 keys
    env.update(security.component_secrets(settings, "mlflow"))
    env["MLFLOW_BACKEND_STORE_URI"] = mlflow_backend_store_uri(settings)
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(settings.home / "mlflow" / "basic_auth.ini")
    # The GenAI job runner (extra huey processes) is not used by Flywheel.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    # Registry webhooks (reload on push) go to the model server on loopback over plain HTTP, which
    # MLflow refuses unless told (https only, public addresses only); a short cache so a webhook
    # registered at start fires at once.
    env["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] = "true"
    env["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] = "http,https"
    env["MLFLOW_WEBHOOK_CACHE_TTL"] = "2"
    return env


def _prepare_mlflow(settings: Settings) -> None:
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    security.mlflow_auth_config(settings)
    if settings.profile is Profile.PRODUCTION:
        from flywheel.stack.provision import ensure_databases

        ensure_databases(settings)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


def _airflow_command(*args: str) -> Callable[[Settings], list[str]]:
    def build(settings: Settings) -> list[str]:
        if args[0] == "api-server":
            return [_bin("airflow"), *args, "--host", settings.host, "--port", str(settings.ports.airflow)]
        if args[0] in WARM_COMPONENTS:
            return _warm_airflow(*args)
        return [_bin("airflow"), *args]

    return build


# Components that fork task processes (the scheduler's LocalExecutor, Celery workers) start with
# the task modules imported, so each forked task starts warm (flywheel/airflow/warm.py).
WARM_COMPONENTS = ("scheduler", "celery")


def _warm_airflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "flywheel.airflow.warm", *args]


def _prepare_airflow(settings: Settings) -> None:
    """Write the admin password file and migrate the metadata database (idempotent)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    if settings.profile is Profile.PRODUCTION:
        _prepare_production_airflow(settings)
    password = _secret(settings, "airflow_password")
    _write_private(_airflow_passwords_file(settings), json.dumps({settings.airflow_user: password}))
    log_path = settings.log_dir / "airflow-db-migrate.log"
    with log_path.open("ab") as out:
        done = subprocess.run(
            [_bin("airflow"), "db", "migrate"],
            env=airflow_env(settings), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, timeout=600, check=False,
        )  # fmt: skip
    if done.returncode != 0:
        raise ServiceStartError(
            "airflow-api-server", f"`airflow db migrate` failed ({done.returncode})", log_path
        )


def _prepare_production_airflow(settings: Settings) -> None:
    """Databases, broker and online store checked; the cluster policy (GPU queue) installed."""
    from flywheel.stack.provision import provision

    provision(settings)
    config = settings.airflow_home / "config"
    config.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "infra" / "airflow" / "airflow_local_settings.py",
                    config / "airflow_local_settings.py")


def _production(settings: Settings) -> bool:
    return settings.profile is Profile.PRODUCTION


def _worker_command(index: int) -> Callable[[Settings], list[str]]:
    def build(settings: Settings) -> list[str]:
        from flywheel.core.profiles import worker_queues

        return [
            *_warm_airflow("celery", "worker"),
            "--celery-hostname", _worker_hostname(index),
            "--queues", ",".join(worker_queues(settings, index)),
            "--concurrency", str(settings.production.worker_concurrency),
            # Task logs are files under AIRFLOW_HOME/logs, read by the api-server directly;
            # one log server per worker would need one port each.
            "--skip-serve-logs",
        ]  # fmt: skip

    return build


def _worker_hostname(index: int) -> str:
    from flywheel.core.profiles import worker_name

    return f"{worker_name(index)}@{socket.gethostname()}"


def celery_ping(settings: Settings, hostname: str, timeout: float = 2.0) -> bool:
    """Whether the Celery worker ``hostname`` answers a control ping through the broker."""
    from celery import Celery

    from flywheel.core.profiles import broker_url

    app = Celery("flywheel-ping", broker=broker_url(settings), set_as_current=False)
    try:
        replies = app.control.ping(destination=[hostname], timeout=timeout)
    except Exception:  # an unreachable broker is "not healthy", not a crash of the check
        return False
    finally:
        app.close()
    return any(hostname in reply for reply in replies)


def _worker_service(index: int) -> Service:
    return Service(
        name=f"airflow-worker-{index + 1}",
        command=_worker_command(index),
        env=airflow_env,
        health=lambda s: celery_ping(s, _worker_hostname(index)),
        requires=("airflow-api-server",),
        enabled=lambda s: _production(s) and index < len(s.production.celery_workers),
    )


def airflow_health(settings: Settings) -> dict[str, Any] | None:
    """The api-server's ``/api/v2/monitor/health`` body, or None when it does not answer."""
    try:
        response = httpx.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=3.0)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    body: dict[str, Any] = response.json()
    return body


def _airflow_healthy(component: str) -> Callable[[Settings], bool]:
    def check(settings: Settings) -> bool:
        body = airflow_health(settings)
        return body is not None and (body.get(component) or {}).get("status") == "healthy"

    return check


def _bento_file(settings: Settings) -> Path:
    return settings.run_dir / "model-server.bento"


def bentoml_home(settings: Settings) -> Path:
    return settings.home / "bentoml"


def find_bento(settings: Settings) -> str | None:
    """Tag (``name:version``) of the most recently built bento under ``<home>/bentoml``, if any."""
    latest = sorted((bentoml_home(settings) / "bentos").glob("*/latest"), key=lambda p: p.stat().st_mtime)
    if not latest:
        return None
    return f"{latest[-1].parent.name}:{latest[-1].read_text().strip()}"


def _model_server_command(settings: Settings) -> list[str]:
    path = _bento_file(settings)
    if not path.is_file():
        raise StackError("no bento to serve: pass bento=<tag> or build one first")
    tag = path.read_text().strip()
    return [
        _bin("bentoml"),
        "serve",
        tag,
        "--host",
        settings.host,
        "--port",
        str(settings.ports.model_server),
    ]


def _model_server_env(settings: Settings) -> dict[str, str]:
    env = _tasks_env(settings, "model-server")
    env["BENTOML_HOME"] = str(bentoml_home(settings))
    if settings.serving_registry_webhook_secret is not None:
        env["FLYWHEEL_SERVING_REGISTRY_WEBHOOK_SECRET"] = settings.serving_registry_webhook_secret.get_secret_value()
    return env


def _register_webhook(settings: Settings) -> None:
    """Reload on push: register the model server's registry webhook, as MLflow's admin (webhooks
    are admin-only in its auth app); nothing without ``serving_registry_webhook_secret``."""
    if settings.serving_registry_webhook_secret is None:
        return
    import os

    from flywheel.serving import registry_events
    from flywheel.training import registry

    admin = security.mlflow_identity_env(settings, "admin")
    saved = {k: os.environ.get(k) for k in admin}
    try:
        os.environ.update(admin)
        from mlflow import MlflowClient

        registry_events.register(settings, client=MlflowClient(tracking_uri=str(settings.mlflow_tracking_uri)))
    finally:  # this process's own identity again (registry.client sets it per call too)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        registry.use_identity(settings)


def _exporter_command(settings: Settings) -> list[str]:
    # Host and port come from FLYWHEEL_HOST / FLYWHEEL_PORTS__EXPORTER (flywheel_env); explicit here
    # so that `ps` shows where it listens.
    return [_bin("flywheel"), "exporter", "--host", settings.host, "--port", str(settings.ports.exporter)]


def _exporter_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.ports.exporter}/metrics"


def _url(attr: str) -> Callable[[Settings], str | None]:
    return lambda settings: str(getattr(settings, attr))


SERVICES: tuple[Service, ...] = (
    Service(
        name="seaweedfs",
        command=_weed_command,
        env=_weed_env,
        health=_s3_healthy,
        ports=_weed_ports,
        url=_url("s3_endpoint_url"),
        prepare=_prepare_seaweed,
        on_healthy=_ensure_buckets,
        start_timeout_s=60.0,
    ),
    Service(
        name="mlflow",
        command=_mlflow_command,
        env=_mlflow_env,
        health=lambda s: _http_ok(f"{s.mlflow_tracking_uri}/health"),
        ports=lambda s: (s.ports.mlflow,),
        url=_url("mlflow_tracking_uri"),
        requires=("seaweedfs",),
        prepare=_prepare_mlflow,
        on_healthy=security.provision_mlflow_users,
        # A first start migrates two schemas (tracking, then basic-auth's): 2-3 min on a loaded
        # 2-core machine with PostgreSQL (CI saw 130 s), seconds once they exist.
        start_timeout_s=300.0,
    ),
    Service(
        name="airflow-api-server",
        command=_airflow_command("api-server"),
        env=airflow_env,
        health=_airflow_healthy("metadatabase"),
        ports=lambda s: (s.ports.airflow,),
        url=_url("airflow_url"),
        prepare=_prepare_airflow,
    ),
    Service(
        name="airflow-scheduler",
        command=_airflow_command("scheduler", "--skip-serve-logs"),
        env=airflow_env,
        health=_airflow_healthy("scheduler"),
        requires=("airflow-api-server",),
    ),
    Service(
        name="airflow-dag-processor",
        command=_airflow_command("dag-processor"),
        env=airflow_env,
        health=_airflow_healthy("dag_processor"),
        requires=("airflow-api-server",),
    ),
    Service(
        name="airflow-triggerer",
        command=_airflow_command("triggerer", "--skip-serve-logs"),
        env=airflow_env,
        health=_airflow_healthy("triggerer"),
        requires=("airflow-api-server",),
    ),
    Service(
        name="model-server",
        command=_model_server_command,
        env=_model_server_env,
        health=lambda s: _http_ok(f"{s.model_server_url}/readyz"),
        ports=lambda s: (s.ports.model_server,),
        url=_url("model_server_url"),
        requires=("mlflow",),
        optional=True,
        on_healthy=_register_webhook,
    ),
    # Prometheus /metrics of the monitoring summaries (`flywheel up --exporter`).
    Service(
        name="exporter",
        command=_exporter_command,
        env=lambda s: {**_base_env(), **flywheel_env(s), **security.component_secrets(s, "exporter")},
        health=lambda s: _http_ok(_exporter_url(s)),
        ports=lambda s: (s.ports.exporter,),
        url=_exporter_url,
        requires=("seaweedfs",),
        start_timeout_s=60.0,
        optional=True,
    ),
    # Production profile: one Celery worker per ``production.celery_workers`` entry.
    *(_worker_service(index) for index in range(MAX_CELERY_WORKERS)),
)
SERVICE_NAMES = tuple(service.name for service in SERVICES)
GROUPS = {"airflow": AIRFLOW_COMPONENTS}


def get_service(name: str) -> Service:
    for service in SERVICES:
        if service.name == name:
            return service
    raise UnknownServiceError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}, airflow")


def _expand(names: Iterable[str]) -> list[str]:
    expanded: list[str] = []
    for name in names:
        expanded.extend(GROUPS.get(name, (name,)))
    for name in expanded:
        get_service(name)
    return expanded


def _with_requirements(names: Iterable[str]) -> list[Service]:
    """The named services and everything they require, in dependency order."""
    wanted: set[str] = set()
    pending = list(_expand(names))
    while pending:
        name = pending.pop()
        if name not in wanted:
            wanted.add(name)
            pending.extend(get_service(name).requires)
    return [service for service in SERVICES if service.name in wanted]


def _waves(services: list[Service]) -> list[list[Service]]:
    """Group services so that each wave only needs services of earlier waves."""
    depth: dict[str, int] = {}
    for service in SERVICES:  # SERVICES is in dependency order
        depth[service.name] = 1 + max((depth[r] for r in service.requires), default=-1)
    waves: dict[int, list[Service]] = {}
    for service in services:
        waves.setdefault(depth[service.name], []).append(service)
    return [waves[d] for d in sorted(waves)]


# ---- processes -----------------------------------------------------------------

_children: dict[int, subprocess.Popen[bytes]] = {}  # processes this interpreter started, to reap


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def log_path(settings: Settings, name: str) -> Path:
    return settings.log_dir / f"{name}.log"


def _read_pid_file(path: Path) -> tuple[int, str] | None:
    """(pid, start token) of a pid file; the token is "" in one written before tokens existed."""
    try:
        pid, _, token = path.read_text().strip().partition("\n")
        return int(pid), token.strip()
    except (OSError, ValueError):
        return None


def _start_token(pid: int) -> str:
    """What tells this process from a later one with its pid: its start time in clock ticks since
    boot (Linux, /proc/<pid>/stat field 22), else psutil's creation time. The ticks do not move
    when the wall clock is stepped: psutil's creation time is boot time (from the wall clock) plus
    those ticks, and a CI machine's clock synced minutes after boot shifted it by seconds, so live
    services read as reused pids and `up` stopped them as orphans (CI, 2026-12-01)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return "ticks:" + stat.rpartition(")")[2].split()[19]  # fields after "(comm)" start at 3
    except (OSError, IndexError):
        try:
            return f"created:{psutil.Process(pid).create_time():.2f}"
        except psutil.Error:
            return ""


def _write_pid_file(settings: Settings, name: str, pid: int) -> None:
    _pid_file(settings, name).write_text(f"{pid}\n{_start_token(pid)}\n")


def _running_pid(settings: Settings, name: str) -> int | None:
    """Pid of the service's live process, or None (no pid file, dead, zombie or reused pid)."""
    path = _pid_file(settings, name)
    read = _read_pid_file(path)
    if read is None or not _alive(read[0]):
        return None
    pid, token = read
    if token:
        return pid if _start_token(pid) == token else None
    try:  # an older pid file: a reused pid was created after the file was written
        return pid if psutil.Process(pid).create_time() <= path.stat().st_mtime + 1.0 else None
    except (OSError, psutil.Error):
        return None


def _alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None and child.poll() is not None:
        _children.pop(pid, None)
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _check_ports(settings: Settings, service: Service) -> None:
    ports = service.ports(settings)
    if len(set(ports)) != len(ports) or not all(0 < port < 65536 for port in ports):
        raise StackError(
            f"{service.name}: invalid or overlapping ports {sorted(ports)}"
        )
    for port in ports:
        if not _port_free(settings.host, port):
            raise PortInUseError(service.name, port)


def _spawn(settings: Settings, service: Service) -> int:
    command = service.command(settings)
    env = service.env(settings)
    path = log_path(settings, service.name)
    with path.open("ab") as out:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        out.write(f"\n=== {stamp} flywheel starts: {' '.join(command)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=settings.home, start_new_session=True, close_fds=True,
        )  # fmt: skip
    _children[proc.pid] = proc
    _write_pid_file(settings, service.name, proc.pid)
    return proc.pid


def _wait_healthy(settings: Settings, service: Service, pid: int) -> None:
    """Poll the health check until it passes; raise ServiceStartError on exit or timeout."""
    deadline = time.monotonic() + service.start_timeout_s
    while True:
        if service.health(settings):
            return
        if not _alive(pid):
            _pid_file(settings, service.name).unlink(missing_ok=True)
            raise ServiceStartError(
                service.name, "exited before it became healthy", log_path(settings, service.name)
            )
        if time.monotonic() > deadline:
            raise ServiceStartError(
                service.name,
                f"not healthy after {service.start_timeout_s:.0f} s",
                log_path(settings, service.name),
            )
        time.sleep(0.5)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("r", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except OSError:
        return []


def _say(console: Console | None, message: str) -> None:
    log.info(message)
    if console is not None:
        console.print(message)


# ---- public operations -----------------------------------------------------------


def up(
    settings: Settings,
    *,
    services: Iterable[str] | None = None,
    console: Console | None = None,
    bento: str | None = None,
    also: Iterable[str] = (),
) -> Settings:
    """Start the stack (or the named services and what they require); return settings with secrets.

    Running healthy services are left alone; stale pid files (and children a dead
    service left behind) are cleaned up. Every port is checked before anything starts.
    Raises PortInUseError (a port is held by another process), ServiceStartError (a
    service exited or was not healthy in time) and UnknownServiceError. ``model-server``
    starts when named or when a bento exists (``bento`` or the newest under
    ``<home>/bentoml``). ``also`` adds optional services (``exporter``) to the default set
    or to ``services``. Services already started stay up when a later one fails.
    """
    settings = ensure_secrets(settings)
    for directory in (settings.run_dir, settings.log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    bento = bento or find_bento(settings)
    if bento:
        _bento_file(settings).write_text(bento + "\n")
    names = (list(services) if services is not None else _default_services(bento)) + list(also)
    plan = [service for service in _with_requirements(names) if service.enabled(settings)]
    running = {s.name: _running_pid(settings, s.name) for s in plan}
    stale = [name for name, pid in running.items() if pid is None]
    down(settings, services=stale, console=console)  # pid files and orphaned children
    for service in plan:
        if running[service.name] is None:
            _check_ports(settings, service)
    for wave in _waves(plan):
        _start_wave(settings, wave, running, console)
    return settings


def _default_services(bento: str | None) -> list[str]:
    return [s.name for s in SERVICES if not s.optional or (s.name == "model-server" and bento)]


def _start_wave(
    settings: Settings, wave: list[Service], running: dict[str, int | None], console: Console | None
) -> None:
    started: dict[str, tuple[int, float]] = {}
    for service in wave:
        pid = running[service.name]
        if pid is not None and service.health(settings):
            _say(console, f"{service.name}: already running (pid {pid})")
        else:
            t0 = time.monotonic()
            if pid is None:
                if service.prepare is not None:
                    service.prepare(settings)
                pid = _spawn(settings, service)
            started[service.name] = (pid, t0)
    for service in wave:
        if service.name in started:
            pid, t0 = started[service.name]
            _wait_healthy(settings, service, pid)
            _say(console, f"{service.name}: healthy in {time.monotonic() - t0:.1f} s (pid {pid})")
        if service.on_healthy is not None:
            service.on_healthy(settings)


def down(
    settings: Settings, *, services: Iterable[str] | None = None, console: Console | None = None
) -> list[str]:
    """Stop the stack (or the named services): SIGTERM each process group, SIGKILL after 15 s.

    Also stops children that outlived their service's main process. Removes the pid
    files; idempotent when nothing runs. Returns the names it stopped.
    """
    names = _expand(services) if services is not None else list(SERVICE_NAMES)
    targets = {name: pgid for name in names if (pgid := _service_group(settings, name)) is not None}
    for pgid in targets.values():
        _signal_group(pgid, signal.SIGTERM)
    _wait_stopped(list(targets.values()), STOP_TIMEOUT_S)
    for name in names:
        _pid_file(settings, name).unlink(missing_ok=True)
    for name in targets:
        _say(console, f"{name}: stopped")
    return list(targets)


def _service_group(settings: Settings, name: str) -> int | None:
    """Process group of the service: its live main process, or children left behind by it."""
    pid = _running_pid(settings, name)
    if pid is not None:
        return pid
    read = _read_pid_file(_pid_file(settings, name))
    if read is None:
        return None
    pgid, token = read
    if _alive(pgid):
        return None  # the pid is another process's now (its start token differs)
    members = _group_members(pgid)
    if token:
        # The kernel does not hand out a pid while a process group of that id lives, so members
        # of the dead leader's group are its children. (Reading FLYWHEEL_HOME from their
        # environment misses processes that set their title: Airflow's api-server clobbers its
        # environ, and one left this way held its port through the next suite on the machine.)
        return pgid if members else None
    # A pid file without a token: our processes carry FLYWHEEL_HOME; a reused pid's group does not.
    return pgid if any(_is_ours(settings, proc) for proc in members) else None


def _is_ours(settings: Settings, proc: psutil.Process) -> bool:
    try:
        return bool(proc.environ().get("FLYWHEEL_HOME") == str(settings.home))
    except psutil.Error:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the service's process group and every descendant that left it (BentoML starts its
    workers in sessions of their own: a signal to the group alone left them holding the port)."""
    escaped = _escaped_descendants(pid)
    try:
        os.killpg(pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass
    for proc in escaped:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            continue


def _escaped_descendants(pgid: int) -> list[psutil.Process]:
    try:
        descendants = psutil.Process(pgid).children(recursive=True)
    except psutil.Error:
        return []
    escaped = []
    for proc in descendants:
        try:
            if os.getpgid(proc.pid) != pgid:
                escaped.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return escaped


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _group_alive(pgid: int) -> bool:
    return _alive(pgid) or bool(_group_members(pgid))


def _wait_stopped(pgids: list[int], timeout: float) -> None:
    pending = _wait_groups(pgids, timeout)
    for pgid in pending:
        log.warning("process group %s did not stop in %.0f s: SIGKILL", pgid, timeout)
        _signal_group(pgid, signal.SIGKILL)
    if _wait_groups(pending, 5.0):
        raise StackError(f"process groups {pending} survived SIGKILL")


def _wait_groups(pgids: list[int], timeout: float) -> list[int]:
    """Wait until the process groups are gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    pending = [pgid for pgid in pgids if _group_alive(pgid)]
    while pending and time.monotonic() < deadline:
        time.sleep(0.2)
        pending = [pgid for pgid in pending if _group_alive(pgid)]
    return pending


def status(settings: Settings) -> list[ServiceStatus]:
    """Pid, port, URL, health and log of every service of the stack (of this profile)."""
    return [_status_of(settings, service) for service in SERVICES if service.enabled(settings)]


def _status_of(settings: Settings, service: Service) -> ServiceStatus:
    pid = _running_pid(settings, service.name)
    ports = service.ports(settings)
    return ServiceStatus(
        name=service.name,
        pid=pid,
        port=ports[0] if ports else None,
        url=service.url(settings),
        healthy=pid is not None and service.health(settings),
        log=log_path(settings, service.name),
    )


def start_service(
    settings: Settings, name: str, *, bento: str | None = None, console: Console | None = None
) -> ServiceStatus:
    """Start one service (and what it requires); ``bento`` picks what the model server serves."""
    if name == "model-server" and not (bento or find_bento(settings) or _bento_file(settings).is_file()):
        raise StackError("model-server needs a bento: pass bento=<tag> or build one first")
    settings = up(settings, services=[name], console=console, bento=bento)
    return _status_of(settings, get_service(name))


def revive_scheduler(settings: Settings, console: Console | None = None) -> bool:
    """Embedded profile: start the Airflow scheduler again if it has exited. With SQLite, a
    scheduler commit can conflict with the api-server's writes (unpausing, creating a backfill:
    ``StaleDataError``) and the scheduler exits; Airflow 3.3 supports SQLite only without
    concurrent access. Other profiles' schedulers are their operators' to run. True if revived."""
    from flywheel.core.config import Profile

    if settings.profile is not Profile.EMBEDDED:
        return False
    scheduler = next((s for s in status(settings) if s.name == "airflow-scheduler"), None)
    if scheduler is None or scheduler.pid is not None:
        return False
    log.warning("the Airflow scheduler had stopped (SQLite write conflict): starting it again")
    up(settings, services=["airflow-scheduler"], console=console)
    return True


def restart_service(
    settings: Settings, name: str, *, bento: str | None = None, console: Console | None = None
) -> ServiceStatus:
    """Stop then start one service (e.g. the model server after a new bento)."""
    get_service(name)
    down(settings, services=[name], console=console)
    return start_service(settings, name, bento=bento, console=console)


def describe_secrets(settings: Settings) -> dict[str, str]:
    """The stored secrets, masked, for display."""
    return {key: mask(value) for key, value in read_secrets(settings.home).items()}
