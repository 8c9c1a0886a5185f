"""Two writers of one day's partition, as real processes on a real SeaweedFS (this module's own).

- Two writer processes of the same day started together (a scheduled and a manual run): both
  finish, one after the other (each stage holds the partition's lease); the day holds every input
  row once, curated or quarantined, byte-identical to a single run's commit, and nothing else.
- ``flywheel replay`` (the CLI) beside the data DAG's tasks (ingest, then validate, each its own
  process, as Airflow runs them): the same.
- Meanwhile a reader polling the day never sees curated and quarantine of different commits, nor
  a manifest whose files are missing.
- A writer that keeps the partition makes another fail after its wait with one line naming the
  partition and the holder; a killed writer's lease expires and the next writer commits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.core import layout, lease, storage
from flywheel.core.spec import load_any_spec_file
from tests.integration.seaweed import private_seaweedfs

pytestmark = pytest.mark.integration
DS = "2026-02-01"
ROWS = 20_000
BAD = {"channel": 300, "total": 200, "dup": 50}  # rows quarantined by each rule (dup: 25 ids twice)
SPEC = """
kind: dataset
name: writers
owner: test
dataset:
  name: writers
  source: '{home}/landing/writers/ds={ds}'
  format: parquet
  timestamp: placed_at
  key: order_id
  contract:
    columns:
      order_id: {type: string, nullable: false, unique: true}
      placed_at: {type: datetime, nullable: false}
      total: {type: float, nullable: false, min: 0.0, max: 1000.0}
      channel: {type: string, nullable: false, allowed: [app, web]}
    timestamp_in_interval: true
    max_quarantine_share: 0.5
"""
# One stage of a data day in its own process, started on a line on stdin (so that two start together).
WRITER = """
import sys
from pathlib import Path
from flywheel.core.spec import load_any_spec_file
spec, ds, stage, run_id = load_any_spec_file(Path(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
sys.stdin.readline()
if stage == "day":
    from flywheel.runs import data_day
    data_day(spec, ds, run_id=run_id, features=False)
elif stage == "ingest":
    from flywheel.data.ingest import ingest
    ingest(spec, ds, run_id=run_id)
else:
    from flywheel.data.validation import validate_partition
    validate_partition(spec, ds, run_id=run_id)
"""


def day_rows() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({
        "order_id": [f"o-{i}" for i in range(ROWS)],
        "placed_at": pd.Timestamp(DS, tz="UTC") + pd.to_timedelta(np.sort(rng.integers(0, 86_399, ROWS)), unit="s"),
        "total": rng.uniform(1, 900, ROWS).round(2),
        "channel": rng.choice(["app", "web"], ROWS),
    })
    frame.loc[:BAD["channel"] - 1, "channel"] = "fax"
    frame.loc[1000:1000 + BAD["total"] - 1, "total"] = 5000.0
    frame.loc[2000:2000 + BAD["dup"] // 2 - 1, "order_id"] = [f"o-{i}" for i in range(3000, 3000 + BAD["dup"] // 2)]
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("writers")
    specs = root / "specs"
    specs.mkdir()
    (specs / "writers.yaml").write_text(SPEC)
    (root / "s3").mkdir()
    with private_seaweedfs(root / "s3", bucket_prefix="writers") as conf:
        # A killed writer's lease expires after 3 s here (60 s by default).
        settings = conf.model_copy(update={"specs_dir": specs, "partition_lease_ttl_s": 3.0,
                                           "partition_lease_wait_s": 120.0})
        spec = load_any_spec_file(specs / "writers.yaml")
        landing = Path(spec.source_for(DS, settings))
        landing.mkdir(parents=True)
        day_rows().to_parquet(landing / "part-0.parquet", index=False)
        yield settings, spec, specs / "writers.yaml"


def env(settings, **extra: str) -> dict[str, str]:
    return os.environ | settings.component_env() | {
        "FLYWHEEL_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "FLYWHEEL_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "FLYWHEEL_SPECS_DIR": str(settings.specs_dir), **extra}


def writer(settings, spec_file: Path, stage: str, run_id: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(spec_file), DS, stage, run_id],
                            env=env(settings, **extra), stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def go(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()


def finished(proc: subprocess.Popen[str], timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


class Reader(threading.Thread):
    """Polls the day as readers do, until stopped: every view must be one whole commit."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings, self.stop, self.views, self.mixes, self.holders = settings, threading.Event(), 0, [], set()
        self.client = storage.s3_client(settings)
        self.errors: list[Exception] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.look()
            except Exception as exc:  # noqa: BLE001 - a reader that fails is what the test reports
                self.errors.append(exc)

    def look(self) -> None:
        key = layout.partition_lease_key("writers", DS)
        read = {"settings": self.settings, "client": self.client, "dataset": "writers", "ds": DS}
        first = storage.read_manifest(zone="curated", **read)
        quarantine = storage.read_manifest(zone="quarantine", **read)
        curated = storage.read_partition(zone="curated", **read)  # every file it names is there
        again = storage.read_manifest(zone="curated", **read)
        if first == again:  # no commit in between: both zones must be of this one commit
            if quarantine.run_id != first.run_id or len(curated) != first.rows \
                    or first.rows + quarantine.rows != ROWS:
                self.mixes.append((first.run_id, quarantine.run_id, len(curated), quarantine.rows))
            self.views += 1
        try:
            self.holders.add(json.loads(self.client.get_object(
                Bucket=self.settings.bucket("reports"), Key=key)["Body"].read())["holder"].split(" ")[0])
        except self.client.exceptions.NoSuchKey:
            pass


def assert_day_is_whole(settings, solo: dict[str, storage.Manifest]) -> None:
    """Every input row once, curated or quarantined; the objects of one commit and nothing else."""
    read = {"settings": settings, "dataset": "writers", "ds": DS}
    curated = storage.read_partition(zone="curated", **read)
    quarantined = storage.read_partition(zone="quarantine", **read)
    assert len(curated) + len(quarantined) == ROWS
    assert len(quarantined) == sum(BAD.values())
    ids = pd.concat([curated["order_id"], quarantined["order_id"]]).value_counts()
    assert ids.eq(1).sum() == ROWS - BAD["dup"] and ids.eq(2).sum() == BAD["dup"] // 2  # as in the input
    manifests = {z: storage.read_manifest(zone=z, **read) for z in ("raw", "curated", "quarantine")}
    assert manifests["curated"].run_id == manifests["quarantine"].run_id
    for zone, manifest in manifests.items():
        assert manifest.content_hash == solo[zone].content_hash, f"{zone} differs from a single run's"
        prefix = layout.partition_prefix("writers", DS)
        assert sorted(storage.list_keys(zone, prefix, settings=settings)) == sorted(
            [manifest.files[0]["key"], prefix + layout.MANIFEST]), f"{zone} holds objects of no commit"
        client = storage.s3_client(settings)
        assert not client.list_multipart_uploads(Bucket=settings.bucket(zone), Prefix=prefix).get("Uploads")


@pytest.fixture(scope="module")
def solo(store) -> dict[str, storage.Manifest]:
    """The day written once, alone: what every race must end with."""
    from flywheel.runs import data_day

    settings, spec, _ = store
    data_day(spec, DS, run_id="solo", settings=settings, features=False)
    return {z: storage.read_manifest(zone=z, dataset="writers", ds=DS, settings=settings)
            for z in ("raw", "curated", "quarantine")}


def test_two_writers_of_one_day_at_once_leave_it_whole(store, solo):
    settings, _, spec_file = store
    reader = Reader(settings)
    scheduled = writer(settings, spec_file, "day", f"scheduled__{DS}")
    manual = writer(settings, spec_file, "day", f"manual__{DS}")
    reader.start()
    go(scheduled, manual)
    outcomes = [finished(scheduled), finished(manual)]
    reader.stop.set()
    reader.join(timeout=60)
    assert [rc for rc, _ in outcomes] == [0, 0], outcomes
    assert {f"scheduled__{DS}", f"manual__{DS}"} <= reader.holders, "each writer held the partition in turn"
    assert reader.views > 0 and not reader.mixes and not reader.errors, (reader.mixes, reader.errors[:3])
    assert_day_is_whole(settings, solo)
    assert storage.read_manifest(zone="curated", dataset="writers", ds=DS, settings=settings).run_id in {
        f"scheduled__{DS}", f"manual__{DS}"}


def test_replay_beside_a_dag_run_of_the_same_day_leaves_it_whole(store, solo):
    settings, _, spec_file = store
    reader = Reader(settings)
    ingest = writer(settings, spec_file, "ingest", f"scheduled__{DS}")
    flywheel = str(Path(sys.executable).parent / "flywheel")
    replay = subprocess.Popen([flywheel, "replay", "writers", "--ds", DS, "--no-features"], env=env(settings),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    validate = writer(settings, spec_file, "validate", f"scheduled__{DS}")  # its task starts after ingest
    reader.start()
    go(ingest)
    assert finished(ingest)[0] == 0
    go(validate)
    _, replay_err = replay.communicate(timeout=300)
    outcomes = [finished(validate), (replay.returncode, replay_err)]
    reader.stop.set()
    reader.join(timeout=60)
    assert [rc for rc, _ in outcomes] == [0, 0], outcomes
    assert {f"scheduled__{DS}", f"replay__{DS}"} <= reader.holders
    assert reader.views > 0 and not reader.mixes and not reader.errors, (reader.mixes, reader.errors[:3])
    assert_day_is_whole(settings, solo)


def test_a_held_partition_fails_the_next_writer_with_one_line_naming_the_holder(store, solo):
    settings, _, _ = store
    flywheel = str(Path(sys.executable).parent / "flywheel")
    with lease.partition("writers", DS, run_id=f"scheduled__{DS}", settings=settings):
        out = subprocess.run([flywheel, "replay", "writers", "--ds", DS, "--no-features"], capture_output=True,
                             text=True, env=env(settings, FLYWHEEL_PARTITION_LEASE_WAIT_S="1"), timeout=120)
    assert out.returncode == 1, out
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    message = errors[0]
    assert f"partition writers/ds={DS} is being written by scheduled__{DS} (pid {os.getpid()} on" in message
    assert "waited 1 s" in message
    assert_day_is_whole(settings, solo)  # untouched


def test_a_killed_writers_lease_expires_and_the_next_writer_commits(store, solo):
    from flywheel.runs import data_day

    settings, spec, spec_file = store
    killed = writer(settings, spec_file, "day", "killed")
    go(killed)
    client, key = storage.s3_client(settings), layout.partition_lease_key("writers", DS)
    deadline = time.monotonic() + 120
    while True:  # kill it while it holds the partition
        try:
            body = json.loads(client.get_object(Bucket=settings.bucket("reports"), Key=key)["Body"].read())
            if body["holder"].startswith("killed "):
                break
        except client.exceptions.NoSuchKey:
            pass
        assert killed.poll() is None and time.monotonic() < deadline, "the writer never took the partition"
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    data_day(spec, DS, run_id="after-kill", settings=settings, features=False)  # waits out the stale lease
    assert storage.read_manifest(zone="curated", dataset="writers", ds=DS, settings=settings).run_id == "after-kill"
    assert_day_is_whole(settings, solo)
