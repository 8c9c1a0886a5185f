"""A real local Dask cluster for tests: ``dask scheduler`` and two ``dask worker`` processes.

Separate processes, as on a cluster, bound to 127.0.0.1 only (the scheduler's and every worker's
listening port; dashboards off) and closed: mutual TLS with certificates made for the run
(``flywheel.compute.tls``), so only holders of the key can submit work. Workers run without a nanny (one process each) and one thread
each, so two ranks of a data-parallel job land on two processes. Logs go to ``<root>/*.log``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flywheel.core.config import ComputeSettings
from tests.ports import OFFSET

ROOT = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).parent / "dask"
# Block 17000 (see tests/ports.py): below the kernel's ephemeral range (32768-60999), where an
# outgoing connection can hold the port (CI 2026-12-02: "Address already in use" on 40086, 8 errors).
# The cluster is a session fixture, so under pytest-xdist each
# worker that needs it starts its own (test_compute_dask and the production loop run in different
# groups): one scheduler port per xdist worker, or the second cluster's client meets the first's
# scheduler and its certificates ("TLS certificate does not match").
_XDIST_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
SCHEDULER_PORT = 17086 + OFFSET + 10 * _XDIST_WORKER
WORKERS = 2


def _wait_for_workers(compute: ComputeSettings, count: int, timeout_s: float) -> None:
    from distributed import Client

    from flywheel.compute.cluster import security

    with Client(compute.scheduler_address, security=security(compute), timeout=timeout_s,
                set_as_default=False) as client:
        client.wait_for_workers(count, timeout=timeout_s)


@contextmanager
def local_cluster(root: Path, *, port: int = SCHEDULER_PORT, workers: int = WORKERS) -> Iterator[ComputeSettings]:
    """The cluster's compute settings while it runs; every process is stopped afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    from flywheel.compute.tls import write_certificates

    tls = write_certificates(root / "tls")
    compute = ComputeSettings(engine="dask", scheduler_address=f"tls://127.0.0.1:{port}",
                              tls_ca_file=tls["ca"], tls_cert=tls["cert"], tls_key=tls["key"])
    tls_flags = ["--tls-ca-file", str(tls["ca"]), "--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, args: list[str]) -> None:
        log = (root / f"{name}.log").open("wb")
        # The checkout on the path: tests ship functions of their own modules to the workers.
        env = os.environ | {"PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([str(DASK), *args], stdout=log, stderr=subprocess.STDOUT,
                                      cwd=root, env=env, start_new_session=True))

    try:
        start("scheduler", ["scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", str(port),
                            "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--no-show", *tls_flags])
        for i in range(workers):
            start(f"worker-{i}", ["worker", str(compute.scheduler_address), *tls_flags, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                                  "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--name", f"worker-{i}", "--memory-limit", "0",
                                  "--local-directory", str(root / f"worker-{i}")])
        _wait_for_workers(compute, workers, timeout_s=60)
        yield compute
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
