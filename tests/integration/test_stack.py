"""The embedded stack launcher against real processes (SeaweedFS, MLflow, Airflow).

Runs under a temporary home on ports away from the defaults, so a demo stack
started with ``flywheel up`` on the same machine is not disturbed.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from pydantic import SecretStr

from flywheel.airflow.client import AirflowAuthError, AirflowClient
from flywheel.core.config import MLFLOW_USERS, Ports, Settings
from flywheel.core.storage import ZONES, s3_client
from flywheel.stack import launcher as stack
from flywheel.stack import security
from tests.ports import OFFSET, ports

pytestmark = pytest.mark.integration

TEST_PORTS = ports(21000, weed_master=22333, weed_volume=21081, weed_filer=21888, model_server=21300,
                   airflow_worker_logs=21791, airflow_trigger_logs=21792)
CORE = ("seaweedfs", "mlflow")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    base = Settings(home=tmp_path_factory.mktemp("flywheel-home"), ports=TEST_PORTS)
    yield base
    stack.down(base)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _listening_ips(pid: int) -> set[str]:
    """Addresses the process and its children listen on."""
    parent = psutil.Process(pid)
    ips: set[str] = set()
    for proc in [parent, *parent.children(recursive=True)]:
        for conn in proc.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                ips.add(conn.laddr.ip)
    return ips


def _listening_ports(pid: int) -> set[int]:
    parent = psutil.Process(pid)
    return {conn.laddr.port for proc in [parent, *parent.children(recursive=True)]
            for conn in proc.net_connections(kind="tcp") if conn.status == psutil.CONN_LISTEN}


def _by_name(settings: Settings) -> dict[str, stack.ServiceStatus]:
    return {s.name: s for s in stack.status(settings)}


def test_up_starts_object_store_and_tracking_server(settings: Settings) -> None:
    ready = stack.up(settings, services=["mlflow"])

    statuses = _by_name(ready)
    for name in CORE:
        assert statuses[name].healthy, name
        assert _listening_ips(statuses[name].pid or 0) == {"127.0.0.1"}, name
    assert not statuses["airflow-api-server"].running
    assert not statuses["model-server"].running
    assert not statuses["exporter"].running  # optional: only with --exporter
    # SeaweedFS runs in its own network namespace: the host reaches only its S3 API (through the
    # bridge); its master, volume and filer HTTP ports and every gRPC port are not there to reach
    assert security.weed_isolated(ready)
    assert _listening_ports(statuses["seaweedfs"].pid or 0) == {TEST_PORTS.s3}
    for port in (TEST_PORTS.weed_master, TEST_PORTS.weed_volume, TEST_PORTS.weed_filer, TEST_PORTS.s3_grpc,
                 TEST_PORTS.weed_master_grpc, TEST_PORTS.weed_volume_grpc, TEST_PORTS.weed_filer_grpc):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/col/delete?collection={ready.bucket('raw')}", timeout=3)

    secrets_file = ready.home / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    assert set(stack.SETTINGS_SECRETS) <= set(json.loads(secrets_file.read_text()))

    buckets = {b["Name"] for b in s3_client(ready).list_buckets()["Buckets"]}
    assert {ready.bucket(zone) for zone in ZONES} <= buckets


def test_tracking_server_proxies_artifacts_to_the_object_store(settings: Settings) -> None:
    ready = stack.ensure_secrets(settings)
    training = (ready.mlflow_username or "", ready.mlflow_password.get_secret_value() if ready.mlflow_password else "")
    made = httpx.post(f"{ready.mlflow_tracking_uri}/api/2.0/mlflow/experiments/create", json={"name": "smoke"},
                      auth=training, timeout=30)
    assert made.status_code == 200, made.text
    key = f"{made.json()['experiment_id']}/smoke/hello.txt"  # artifacts live under their experiment
    url = f"{ready.mlflow_tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{key}"

    assert httpx.put(url, content=b"anonymous", timeout=30).status_code == 401
    response = httpx.put(url, content=b"hello", auth=training, timeout=30)  # no S3 credentials on the client

    assert response.status_code == 200, response.text
    body = s3_client(ready).get_object(Bucket=ready.bucket("mlflow"), Key=key)["Body"].read()
    assert body == b"hello"


def test_mlflow_admits_its_three_identities_only(settings: Settings) -> None:
    """Anonymous requests get 401; the read-only identity reads but cannot move an alias (403);
    the training identity, which created the model, moves it."""
    ready = stack.ensure_secrets(settings)
    stored = json.loads((ready.home / "secrets.json").read_text())
    api = f"{ready.mlflow_tracking_uri}/api/2.0/mlflow"
    training = (MLFLOW_USERS["training"], stored["mlflow_training_password"])
    reader = (MLFLOW_USERS["reader"], stored["mlflow_reader_password"])
    model = {"name": "closed-by-default"}
    alias = {**model, "alias": "champion", "version": "1"}

    assert httpx.post(f"{api}/registered-models/create", json=model, timeout=30).status_code == 401
    assert httpx.post(f"{api}/registered-models/create", json=model, auth=training, timeout=30).status_code == 200
    version = httpx.post(f"{api}/model-versions/create", json={**model, "source": "s3://nowhere/model"},
                         auth=training, timeout=30)
    assert version.status_code == 200, version.text
    assert httpx.get(f"{api}/registered-models/get", params=model, auth=reader, timeout=30).status_code == 200
    assert httpx.post(f"{api}/registered-models/alias", json=alias, timeout=30).status_code == 401
    assert httpx.post(f"{api}/registered-models/alias", json=alias, auth=reader, timeout=30).status_code == 403
    assert httpx.post(f"{api}/registered-models/alias", json=alias, auth=("flywheel-reader", "guess"),
                      timeout=30).status_code == 401
    assert httpx.post(f"{api}/registered-models/alias", json=alias, auth=training, timeout=30).status_code == 200


def test_each_component_gets_only_its_own_secrets(settings: Settings) -> None:
    """No secret on any command line; each process's environment holds its own secrets only."""
    ready = stack.ensure_secrets(settings)
    stored = json.loads((ready.home / "secrets.json").read_text())
    own = {  # component -> the secrets it may hold
        "seaweedfs": set(security.WEED_SECRETS),
        "mlflow": {"s3_access_key", "s3_secret_key", "mlflow_admin_password", "mlflow_flask_secret"},
    }
    for name, allowed in own.items():
        pid = _by_name(ready)[name].pid
        assert pid, name
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            try:
                cmdline, environ = " ".join(proc.cmdline()), proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            values = "\n".join(environ.values())
            for key, secret in stored.items():
                assert secret not in cmdline, f"{key} on the command line of {name} ({proc.pid})"
                if key not in allowed:
                    assert secret not in values, f"{name} ({proc.pid}) holds {key}, which it does not need"
    logs = "\n".join(p.read_text(errors="replace") for p in ready.log_dir.glob("*.log"))
    leaked = [key for key, secret in stored.items() if secret in logs]
    assert not leaked, f"secrets in the logs: {leaked}"


def test_second_up_leaves_running_services_alone(settings: Settings) -> None:
    before = {name: s.pid for name, s in _by_name(settings).items() if name in CORE}

    stack.up(settings, services=["mlflow"])

    after = {name: s.pid for name, s in _by_name(settings).items() if name in CORE}
    assert after == before
    assert all(after.values())


def test_exporter_is_an_optional_loopback_service(settings: Settings) -> None:
    before = {name: s.pid for name, s in _by_name(settings).items() if name in CORE}

    ready = stack.up(settings, services=["mlflow"], also=["exporter"])

    try:
        statuses = _by_name(ready)
        exporter = statuses["exporter"]
        assert exporter.healthy and _listening_ips(exporter.pid or 0) == {"127.0.0.1"}
        assert exporter.url == f"http://127.0.0.1:{TEST_PORTS.exporter}/metrics"
        assert {name: statuses[name].pid for name in CORE} == before
        assert "flywheel_monitoring_up 1.0" in httpx.get(exporter.url, timeout=10).text
    finally:
        assert stack.down(ready, services=["exporter"]) == ["exporter"]
    assert _port_free(TEST_PORTS.exporter)


def test_port_held_by_a_foreign_socket_is_reported(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with socket.socket() as foreign:
        # a fixed range below the kernel's ephemeral ports, like every test block's
        port = next(p for p in range(23400 + OFFSET, 23500 + OFFSET) if _port_free(p))
        foreign.bind(("127.0.0.1", port))
        foreign.listen()
        other = Settings(
            home=tmp_path_factory.mktemp("other-home"),
            ports=Ports(s3=port, weed_master=23333 + OFFSET, weed_volume=23081 + OFFSET, weed_filer=23888 + OFFSET,
                        s3_grpc=23633 + OFFSET, weed_master_grpc=23634 + OFFSET, weed_volume_grpc=23635 + OFFSET,
                        weed_filer_grpc=23636 + OFFSET),
        )
        stale = other.run_dir / "seaweedfs.pid"
        stale.parent.mkdir(parents=True)
        stale.write_text("999999999\n")  # no such process
        try:
            with pytest.raises(stack.PortInUseError) as caught:
                stack.up(other, services=["seaweedfs"])
            assert not _by_name(other)["seaweedfs"].running
        finally:
            stack.down(other)

    assert caught.value.port == port
    assert caught.value.service == "seaweedfs"
    assert str(port) in str(caught.value)
    assert not stale.exists()


def test_down_stops_everything_and_frees_ports(settings: Settings) -> None:
    stopped = stack.down(settings)

    assert set(stopped) == set(CORE)
    assert not any(s.running for s in stack.status(settings))
    assert not list(settings.run_dir.glob("*.pid"))
    weed_ports = (TEST_PORTS.s3, TEST_PORTS.weed_master, TEST_PORTS.weed_volume, TEST_PORTS.weed_filer,
                  TEST_PORTS.s3_grpc, TEST_PORTS.weed_master_grpc, TEST_PORTS.weed_volume_grpc,
                  TEST_PORTS.weed_filer_grpc)
    for port in (*weed_ports, TEST_PORTS.mlflow):
        assert _freed_within(port, seconds=20), f"port {port} still held: {_holders(port)}"
    assert stack.down(settings) == []


def _freed_within(port: int, *, seconds: float) -> bool:
    """Closed connections can keep a port bound for a moment after the server exits."""
    deadline = time.monotonic() + seconds
    while not _port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def _holders(port: int) -> list[str]:
    return [f"{c.status} pid={c.pid} {c.laddr} -> {c.raddr}" for c in psutil.net_connections("tcp")
            if c.laddr and c.laddr.port == port]


def test_airflow_components_serve_an_authenticated_api(settings: Settings) -> None:
    ready = stack.up(settings, services=["airflow"])

    statuses = _by_name(ready)
    assert all(statuses[name].healthy for name in stack.AIRFLOW_COMPONENTS)
    assert _listening_ips(statuses["airflow-api-server"].pid or 0) == {"127.0.0.1"}
    with AirflowClient(ready) as client:
        assert client.token()
        health = client.health()
        for component in ("metadatabase", "scheduler", "dag_processor", "triggerer"):
            assert health[component]["status"] == "healthy", component
        assert "dags" in client.request("GET", "/dags")
    assert httpx.get(f"{ready.airflow_url}/api/v2/dags", timeout=10).status_code == 401
    wrong = ready.model_copy(update={"airflow_password": SecretStr("not-the-password")})
    with AirflowClient(wrong) as client, pytest.raises(AirflowAuthError):
        client.token()

    assert set(stack.down(ready, services=["airflow"])) == set(stack.AIRFLOW_COMPONENTS)
    assert _port_free(TEST_PORTS.airflow)


def test_unknown_service_is_rejected(settings: Settings) -> None:
    with pytest.raises(stack.UnknownServiceError):
        stack.up(settings, services=["postgres"])
    assert not Path(settings.run_dir / "postgres.pid").exists()
