"""The prediction log's spool without services: records survive as written (a spooled request
builds the same log rows as the live one), concurrent appends share syncs, a torn tail left by a
crash is cut off, a live writer's folder is never taken, a killed one's is, and the bound holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from flywheel.serving.prediction_log import decode, encode, log_frame, log_schema
from flywheel.serving.spool import HEADER, Spool, SpoolFull, read_records
from tests.unit.test_serving_unit import GOOD, _model, _scores

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def fraud():
    from flywheel.core.spec import load_spec_file
    from tests.conftest import ROOT

    return load_spec_file(ROOT / "models" / "fraud.yaml")


def _live(fraud, n: int, *, start: int = 0):
    from flywheel.features.featurizer import featurizer_for
    from flywheel.serving.schemas import route_schemas

    schemas = route_schemas(fraud, featurizer_for(fraud).request_columns)
    rows = [schemas.request.model_validate(GOOD | {"transaction_id": f"t{start + i}", "user_id": start + i,
                                                   "device": "fridge" if i == 1 else "pos"})
            for i in range(n)]
    scores, _ = _scores("binary", np.linspace(0.1, 0.9, n), _model("binary"), fraud, rows)
    scores.matrix[0, 0] = np.nan  # a missing feature
    return scores


def test_a_spooled_request_logs_the_same_rows_as_the_live_one(fraud):
    schema = log_schema(fraud)
    live = [_live(fraud, 3), _live(fraud, 1, start=3)]
    at = datetime(2026, 1, 9, 10, 0, 1, 123456, tzinfo=UTC)
    spooled = [decode(encode(s, logged_at=at)) for s in live]
    expected, got = log_frame(live, schema), log_frame(spooled, schema)
    pd.testing.assert_frame_equal(got.drop(columns="logged_at"), expected.drop(columns="logged_at"))
    assert got["logged_at"].eq(pd.Timestamp(at)).all()
    assert got["request_id"].tolist() == [r for s in live for r in s.request_ids]
    assert np.isnan(spooled[0].matrix[0, 0]), "a missing feature (NaN) survives the record"


def test_concurrent_appends_share_syncs_and_every_record_is_read_back(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=1 << 30)
    start, per_thread, threads = threading.Barrier(8), 50, []

    def append(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            spool.append(f"{n}-{i}".encode())

    for n in range(8):
        threads.append(threading.Thread(target=append, args=(n,)))
        threads[-1].start()
    for t in threads:
        t.join()
    closed = spool.rotate()
    assert closed is not None
    records, valid = read_records(closed.path)
    assert sorted(records) == sorted(f"{n}-{i}".encode() for n in range(8) for i in range(per_thread))
    assert valid == closed.size == closed.path.stat().st_size
    assert spool.syncs < 8 * per_thread, "some appends shared another's fdatasync"
    assert spool.rotate() is None, "an empty segment is not closed"
    spool.close()


def test_a_torn_tail_is_cut_and_the_intact_records_are_claimed(tmp_path):
    root = tmp_path / "spool"
    dead = Spool(root, max_bytes=1 << 20)
    for i in range(5):
        dead.append(f"row-{i}".encode())
    os.write(dead._fd, HEADER.pack(100, 0) + b"half a rec")  # a write the crash interrupted
    dead.close()  # its lock goes, as with SIGKILL; the folder stays (it holds a segment)

    heir = Spool(root, max_bytes=1 << 20)
    (claimed,) = heir.claim_orphans()
    assert claimed.writer == dead.writer and claimed.seq == 1
    records, valid = read_records(claimed.path)
    assert records == [f"row-{i}".encode() for i in range(5)]
    assert claimed.path.stat().st_size == valid == claimed.size
    heir.release(claimed)
    assert not (root / dead.writer).exists(), "a recovered folder goes once its segments are uploaded"
    heir.close()


WRITER = """
import sys
from pathlib import Path
from flywheel.serving.spool import Spool
spool = Spool(Path(sys.argv[1]), max_bytes=1 << 20)
for i in range(20):
    spool.append(b"acked-%d" % i)
print(spool.writer, flush=True)
sys.stdin.read()
"""


def test_a_live_writer_is_never_claimed_and_a_killed_one_is(tmp_path):
    root = tmp_path / "spool"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)
    try:
        writer = proc.stdout.readline().strip()
        heir = Spool(root, max_bytes=1 << 20)
        assert heir.claim_orphans() == [], "the writer is alive: its lock is held"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        (claimed,) = heir.claim_orphans()
        assert claimed.writer == writer
        assert read_records(claimed.path)[0] == [b"acked-%d" % i for i in range(20)]
        heir.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_spool_refuses_records_beyond_its_bound_until_segments_are_released(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=1000, sync=False)
    for _ in range(9):
        spool.append(b"x" * 100)
    with pytest.raises(SpoolFull, match="not uploaded yet"):
        spool.append(b"x" * 100)
    closed = spool.rotate()
    assert closed is not None
    with pytest.raises(SpoolFull):  # closed but not uploaded: still on disk, still counted
        spool.append(b"x" * 100)
    spool.release(closed)
    spool.append(b"x" * 100)
    spool.close()
