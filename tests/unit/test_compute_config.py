"""``compute:`` settings: local by default, a Dask scheduler only where it is closed (loopback or TLS)."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from flywheel.compute import cluster
from flywheel.core.config import ComputeSettings, Settings

pytestmark = pytest.mark.unit


def test_local_is_the_default_and_exports_nothing(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.compute.engine == "local" and not settings.compute.distributed
    assert not any(k.startswith("FLYWHEEL_COMPUTE__") for k in settings.component_env())


def test_dask_from_the_environment_reaches_the_components(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FLYWHEEL_COMPUTE__ENGINE", "dask")
    monkeypatch.setenv("FLYWHEEL_COMPUTE__SCHEDULER_ADDRESS", "tcp://127.0.0.1:8786")
    monkeypatch.setenv("FLYWHEEL_COMPUTE__FEATURE_SHARDS", "8")
    settings = Settings(home=tmp_path)
    assert settings.compute.distributed and settings.compute.feature_shards == 8
    env = settings.component_env()
    assert env["FLYWHEEL_COMPUTE__ENGINE"] == "dask"
    assert env["FLYWHEEL_COMPUTE__SCHEDULER_ADDRESS"] == "tcp://127.0.0.1:8786"
    monkeypatch.delenv("FLYWHEEL_COMPUTE__FEATURE_SHARDS")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings().compute == settings.compute.model_copy(update={"feature_shards": 8})


@pytest.mark.parametrize(("fields", "says"), [
    ({"engine": "dask"}, "needs compute.scheduler_address"),
    ({"engine": "dask", "scheduler_address": "127.0.0.1:8786"}, "is not a tcp://host:port"),
    ({"engine": "dask", "scheduler_address": "tcp://10.0.0.5:8786"}, "off the loopback interface without TLS"),
    ({"engine": "dask", "scheduler_address": "tls://scheduler:8786", "tls_ca_file": "/ca.pem"},
     "tls_cert and tls_key are not all set"),
])
def test_open_or_incomplete_clusters_are_refused(fields, says) -> None:
    with pytest.raises(ValidationError, match=says):
        ComputeSettings(**fields)


def test_tls_off_the_loopback_is_accepted(tmp_path) -> None:
    compute = ComputeSettings(engine="dask", scheduler_address="tls://dask-scheduler:8786",
                              tls_ca_file=tmp_path / "ca.pem", tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem")
    assert compute.distributed


def test_an_unreachable_scheduler_is_a_compute_error_naming_it(tmp_path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(home=tmp_path, compute=ComputeSettings(
        engine="dask", scheduler_address=f"tcp://127.0.0.1:{port}", connect_timeout_s=1))
    with pytest.raises(cluster.ComputeError, match=f"127.0.0.1:{port} did not answer"):
        cluster.client(settings)


def test_local_settings_have_no_cluster(tmp_path) -> None:
    with pytest.raises(cluster.ComputeError, match="compute.engine is local"):
        cluster.client(Settings(home=tmp_path))


def test_a_cli_user_sees_one_line_naming_the_setting(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from flywheel.cli import app

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    monkeypatch.setenv("FLYWHEEL_COMPUTE__ENGINE", "dask")
    monkeypatch.setenv("FLYWHEEL_COMPUTE__SCHEDULER_ADDRESS", "tcp://10.0.0.5:8786")
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "compute.scheduler_address 'tcp://10.0.0.5:8786' is off the loopback" in result.output
