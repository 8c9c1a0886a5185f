"""Faults on real processes (issue 14 §6), each ending with the rows reconciled: 0 lost, 0 duplicated.

- the object store (SeaweedFS) SIGKILLed while ingest uploads a raw partition, and while validate
  uploads the curated one: boto3's retries, then a clean failure, no partial partition; the store
  restarted, the same call commits the day once;
- the disk full during a partition write (a 6 MiB tmpfs as the scratch directory, in a mount
  namespace of its own): ENOSPC, nothing committed, the lease released; then the write succeeds.

This module runs its own SeaweedFS (port block 31000): killing the session stack's would fail
every other test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flywheel.core import storage
from flywheel.core.config import Settings
from flywheel.core.spec import load_any_spec_file
from flywheel.stack import launcher as stack
from flywheel.stack import security
from tests.ports import ports

pytestmark = pytest.mark.integration
ROWS = 1_500_000  # 24 MB of incompressible floats: a multipart upload of two 16 MiB parts
SPEC = {
    "kind": "dataset",
    "name": "meters",
    "owner": "fault-test",
    "dataset": {
        "name": "meters",
        "source": "{home}/landing/meters/ds={ds}",
        "timestamp": "read_at",
        "contract": {"columns": {
            "read_at": {"type": "datetime", "nullable": False},
            "a": {"type": "float", "nullable": False, "min": 0, "max": 1},
            "b": {"type": "float", "nullable": False},
        }},
        "chunk_rows": 1_000_000,
    },
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("faults-home")
    settings = Settings(home=home, ports=ports(31000), partition_lease_ttl_s=3.0, partition_lease_wait_s=30.0)
    settings = stack.up(settings, services=["seaweedfs"])
    try:
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="module")
def meters(store, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-specs")
    (folder / "meters.yaml").write_text(yaml.safe_dump(SPEC))
    return load_any_spec_file(folder / "meters.yaml")


def _land(home: Path, ds: str, rows: int = ROWS) -> int:
    rng = np.random.default_rng(abs(hash(ds)) % 2**32)
    start = pd.Timestamp(ds, tz="UTC")
    frame = pd.DataFrame({"read_at": start + pd.to_timedelta(np.sort(rng.integers(0, 86_400, rows)), unit="s"),
                          "a": rng.random(rows), "b": rng.standard_normal(rows)})
    folder = home / "landing" / "meters" / f"ds={ds}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(folder / "part-0.parquet", index=False)
    return rows


def _kill_store(settings: Settings) -> None:
    (seaweed,) = [s for s in stack.status(settings) if s.name == "seaweedfs"]
    assert seaweed.pid
    os.killpg(os.getpgid(seaweed.pid), signal.SIGKILL)


def _uploading(settings: Settings, zone: str, ds: str) -> bool:
    client = storage.s3_client(settings, max_attempts=1)
    uploads = client.list_multipart_uploads(Bucket=settings.bucket(zone), Prefix=f"meters/ds={ds}/")
    return bool(uploads.get("Uploads"))


def _no_partition(settings: Settings, zone: str, ds: str) -> None:
    assert ds not in storage.list_partitions(zone=zone, dataset="meters", settings=settings)
    with pytest.raises(storage.StorageError):
        storage.read_manifest(zone=zone, dataset="meters", ds=ds, settings=settings)


def _fail_mid_upload(settings: Settings, zone: str, ds: str, call) -> BaseException:
    """Run ``call`` in a thread, SIGKILL the store once its upload to ``zone`` is in flight, and
    return what ``call`` raised (it must raise, within its retries, not hang)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    deadline = time.monotonic() + 300
    while not _uploading(settings, zone, ds):
        assert worker.is_alive(), f"the {zone} write finished before the store could be killed: {failure}"
        assert time.monotonic() < deadline, f"the {zone} upload never started"
        time.sleep(0.05)
    _kill_store(settings)
    killed = time.monotonic()
    worker.join(timeout=240)
    assert not worker.is_alive(), "the write hung on a dead store"
    assert failure, "the write succeeded with its store killed"
    print(f"{zone}: failed {time.monotonic() - killed:.1f} s after the kill: {failure[0]!r}")
    return failure[0]


@pytest.mark.parametrize("zone", ["raw", "curated"])
def test_object_store_killed_mid_write_fails_cleanly_and_the_rerun_commits_once(store, meters, zone):
    from flywheel.data.ingest import ingest
    from flywheel.data.validation import validate_partition

    ds = "2026-06-01" if zone == "raw" else "2026-06-02"
    rows = _land(store.home, ds)
    if zone == "curated":
        ingest(meters, ds, run_id="first", settings=store)
    stage = (lambda: ingest(meters, ds, run_id="killed", settings=store)) if zone == "raw" else \
        (lambda: validate_partition(meters, ds, run_id="killed", settings=store))
    error = _fail_mid_upload(store, zone, ds, stage)
    assert isinstance(error, storage.StorageError), repr(error)
    assert f"partition meters/ds={ds}" in str(error) and "nothing of this write was committed" in str(error)

    restarted = stack.up(store, services=["seaweedfs"])
    _no_partition(restarted, zone, ds)
    if zone == "raw":
        ingest(meters, ds, run_id="rerun", settings=restarted)
    validated = validate_partition(meters, ds, run_id="rerun", settings=restarted)
    assert validated["curated"] == rows and validated["quarantined"] == 0
    curated = storage.read_partition(zone="curated", dataset="meters", ds=ds, settings=restarted)
    assert len(curated) == rows and not curated.duplicated().any(), "0 lost, 0 duplicated"
    assert storage.read_manifest(zone="raw", dataset="meters", ds=ds, settings=restarted).rows == rows


VALIDATE_ON_A_FULL_DISK = """
import json, sys, tempfile
from pathlib import Path
from flywheel.core.config import Settings
from flywheel.core.spec import load_any_spec_file
from flywheel.data.validation import validate_partition
tempfile.tempdir = sys.argv[3]
spec = load_any_spec_file(Path(sys.argv[1]))
try:
    validate_partition(spec, sys.argv[2], run_id="disk-full", settings=Settings())
except OSError as exc:
    print(json.dumps({"errno": exc.errno, "error": str(exc)}))
    sys.exit(3)
"""


def test_a_full_disk_during_a_partition_write_commits_nothing(store, meters, tmp_path):
    from flywheel.data.ingest import ingest
    from flywheel.data.validation import validate_partition

    ds = "2026-06-03"
    rows = _land(store.home, ds, rows=300_000)  # 4.8 MB raw: its download fits, the curated copy does not
    ingest(meters, ds, run_id="first", settings=store)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = os.environ | stack.flywheel_env(store) | security.s3_env(store)
    # A mount namespace of its own (unprivileged, through a user namespace): the tmpfs is this
    # process's scratch directory only, and goes away with it.
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
               'mount -t tmpfs -o size=6m tmpfs "$1" && exec "$2" -c "$3" "$4" "$5" "$1"', "sh",
               str(scratch), sys.executable, VALIDATE_ON_A_FULL_DISK, str(meters._path), ds]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert '"errno": 28' in proc.stdout, proc.stdout  # ENOSPC
    _no_partition(store, "curated", ds)
    _no_partition(store, "quarantine", ds)
    started = time.monotonic()
    validated = validate_partition(meters, ds, run_id="after", settings=store)
    assert time.monotonic() - started < 25, "the failed writer released its lease"
    assert validated["curated"] == rows and validated["quarantined"] == 0
