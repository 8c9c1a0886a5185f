"""A partition write killed midway never shows readers a half-written partition, and its lease
expires: the next writer of the day commits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from flywheel.core import storage

pytestmark = pytest.mark.integration
DS = "2026-03-01"

# Writes ~48 MiB of incompressible rows (a multipart upload of three parts) over the partition.
WRITER = """
import numpy as np, pandas as pd, sys
from flywheel.core import storage
DS = sys.argv[1]
rng = np.random.default_rng(1)
frame = pd.DataFrame({"v": rng.random(6_000_000), "w": rng.random(6_000_000)})
storage.write_partition(frame, zone="curated", dataset="atomic", ds=DS, run_id="killed")
"""


def _in_flight(client, bucket: str) -> bool:
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=f"atomic/ds={DS}/").get("Uploads", [])
    return bool(uploads)


def test_killed_write_leaves_the_previous_partition(services):
    before = pd.DataFrame({"v": np.arange(1000, dtype="float64"), "w": np.zeros(1000)})
    committed = storage.write_partition(before, zone="curated", dataset="atomic", ds=DS, run_id="v1",
                                        settings=services)
    client = storage.s3_client(services)
    bucket = services.bucket("curated")
    # The killed writer holds the partition's lease: it expires 3 s after the kill here (60 s by default).
    env = os.environ | services.component_env() | {"FLYWHEEL_PARTITION_LEASE_TTL_S": "3"}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, DS], env=env)
    try:
        deadline = time.monotonic() + 120
        while not _in_flight(client, bucket):
            assert proc.poll() is None, "the writer finished before it could be interrupted"
            assert time.monotonic() < deadline, "the writer never started its upload"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # midway through the data upload
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    after = storage.read_manifest(zone="curated", dataset="atomic", ds=DS, settings=services)
    assert after == committed
    pd.testing.assert_frame_equal(
        storage.read_partition(zone="curated", dataset="atomic", ds=DS, settings=services), before)
    # A rerun of the interval waits out the killed writer's lease, commits cleanly and leaves only
    # its own objects.
    again = storage.write_partition(before, zone="curated", dataset="atomic", ds=DS, run_id="v2",
                                    settings=services)
    assert again.content_hash == committed.content_hash
    assert not client.list_multipart_uploads(Bucket=bucket, Prefix=f"atomic/ds={DS}/").get("Uploads")
    assert sorted(storage.list_keys("curated", f"atomic/ds={DS}/", settings=services)) == sorted(
        [committed.files[0]["key"], f"atomic/ds={DS}/{storage.MANIFEST}"])
