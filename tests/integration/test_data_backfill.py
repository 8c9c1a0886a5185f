"""A 7-day backfill of the data DAG through the real Airflow scheduler (`airflow backfill create`),
with the scheduler SIGKILLed midway and restarted.

Afterwards every interval has its raw, curated, quarantine and feature partitions,
written by the backfill's runs, each day's rows once, and the online store serves the last day's
features.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from examples.fraud.generator import write_landing
from flywheel.airflow.client import AirflowClient
from flywheel.core import storage
from flywheel.core.config import Settings
from flywheel.features import store as features
from flywheel.stack import launcher as stack
from tests.ports import ports

pytestmark = pytest.mark.integration
FIRST, DAYS = date(2026, 2, 1), 7
AIRFLOW = str(Path(sys.executable).parent / "airflow")
# The scheduler starts after the backfill is created: on the embedded profile's SQLite a CLI
# transaction rolled back under the scheduler's lock can take the scheduler down with it.
BEFORE = ["seaweedfs", "airflow-api-server", "airflow-dag-processor"]
SERVICES = [*BEFORE, "airflow-scheduler", "airflow-triggerer"]


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, spec):
    home = tmp_path_factory.mktemp("backfill-home")
    settings = stack.up(Settings(home=home, ports=ports(20000)), services=BEFORE)
    write_landing(home / "landing", FIRST, DAYS, spec.generator)
    try:
        yield settings
    finally:
        stack.down(settings)


def cli_backfill(settings: Settings, client: AirflowClient, dag_id: str, first: date, last: date) -> int:
    """``airflow backfill create``, the CLI an operator would use (the UI's dialog calls the
    same REST endpoint). On the embedded profile's SQLite the CLI can meet another
    component's write lock ("database is locked", the whole transaction rolled back): try again."""
    cmd = [AIRFLOW, "backfill", "create", "--dag-id", dag_id, "--from-date", first.isoformat(),
           "--to-date", last.isoformat(), "--max-active-runs", "4", "--reprocess-behavior", "completed"]
    for _ in range(8):
        out = subprocess.run(cmd, env=stack.airflow_env(settings), capture_output=True, text=True,
                             timeout=300, check=False)
        active = client.active_backfills(dag_id)
        if out.returncode == 0 or active:
            assert len(active) == 1, active
            return active[0]
        assert "database is locked" in out.stderr + out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
        time.sleep(3)
    raise AssertionError(f"airflow backfill create kept failing: {out.stderr[-2000:]}")


def _kill_scheduler_mid_backfill(settings: Settings, client: AirflowClient, dag_id: str, backfill: int) -> int:
    """SIGKILL the scheduler's process group once a run has succeeded and one is still running;
    returns how many had succeeded."""
    import os
    import signal

    deadline = time.monotonic() + 900
    while True:
        states = [r.state for r in client.backfill_runs(backfill)]
        done = states.count("success")
        if done >= 1 and "running" in states:
            break
        assert done < DAYS, "the backfill finished before the scheduler could be killed"
        assert time.monotonic() < deadline, f"no run finished: {states}"
        time.sleep(0.5)
    (scheduler,) = [s for s in stack.status(settings) if s.name == "airflow-scheduler"]
    assert scheduler.pid
    os.killpg(os.getpgid(scheduler.pid), signal.SIGKILL)
    return done


def test_seven_day_backfill_fills_every_partition_and_the_online_store(airflow_stack, spec):
    settings = airflow_stack
    dag_id = f"{spec.name}_data"
    last = FIRST + timedelta(days=DAYS - 1)
    with AirflowClient(settings) as client:
        client.wait_for_dag(dag_id, timeout=300)
        client.unpause(dag_id)
        backfill = cli_backfill(settings, client, dag_id, FIRST, last)
        stack.up(settings, services=SERVICES)  # the scheduler runs the backfill
        # Fault: the scheduler (and the LocalExecutor's task processes, its process group) is
        # SIGKILLed once some days are done and others running, then restarted past Airflow's
        # scheduler_health_check_threshold (30 s): the new scheduler resets the dead one's task
        # instances and the backfill completes, each day written once (issue 14 §6).
        killed_after = _kill_scheduler_mid_backfill(settings, client, dag_id, backfill)
        time.sleep(35)
        stack.up(settings, services=SERVICES)
        states = client.wait_for_runs(dag_id, backfill, timeout=900, per_run=True)
    assert len(states) == DAYS and set(states.values()) == {"success"}
    assert 1 <= killed_after < DAYS, killed_after
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)]
    for zone, dataset in (("raw", "transactions"), ("curated", "transactions"), ("quarantine", "transactions"),
                          ("features", "fraud/user"), ("features", "fraud/merchant")):
        assert storage.list_partitions(zone=zone, dataset=dataset, settings=settings) == days, (zone, dataset)
    for ds in days:
        raw = storage.read_manifest(zone="raw", dataset="transactions", ds=ds, settings=settings)
        curated = storage.read_manifest(zone="curated", dataset="transactions", ds=ds, settings=settings)
        quarantined = storage.read_manifest(zone="quarantine", dataset="transactions", ds=ds, settings=settings)
        assert raw.run_id.startswith("backfill__") and raw.inputs[0]["uri"].endswith(".parquet")
        assert curated.rows + quarantined.rows == raw.rows
        landed = pd.read_parquet(settings.home / "landing" / "transactions" / f"ds={ds}")
        assert raw.rows == len(landed), "0 lost, 0 duplicated through the scheduler's death"
        rows = storage.read_partition(zone="curated", dataset="transactions", ds=ds, settings=settings)
        assert rows["transaction_id"].is_unique and set(rows["transaction_id"]) <= set(landed["transaction_id"])
        freshness = json.loads(storage.get_bytes("reports", f"feature-freshness/{spec.name}/ds={ds}.json", settings=settings))
        assert freshness["views"]["fraud_user"]["rows"] > 0
    agg = storage.read_partition(zone="features", dataset="fraud/user", ds=last.isoformat(), settings=settings)
    top = agg.sort_values("user_txn_count_7d", ascending=False).head(5)
    online = features.online_features(features.feature_store(settings), spec,
                                       [{"user_id": int(u), "merchant_id": 1} for u in top.user_id])
    assert online["user_txn_count_7d"].tolist() == top["user_txn_count_7d"].tolist()
    assert online["user_seconds_since_last_txn"].tolist() == top["user_seconds_since_last_txn"].tolist()


def test_flywheel_backfill_runs_a_range_with_progress(airflow_stack, spec):
    """`flywheel backfill` (REST, progress bar) over two days of a dataset spec's data DAG."""
    import os

    settings = airflow_stack
    first = FIRST + timedelta(days=3)
    write_landing(settings.home / "landing", first, 2, spec.generator, labels_dataset="transaction_labels")
    stack.up(settings, services=SERVICES)  # idempotent: the scheduler runs what the CLI creates
    env = os.environ | settings.component_env()
    env.pop("FLYWHEEL_USE_CASE")
    flywheel = str(Path(sys.executable).parent / "flywheel")
    out = subprocess.run([flywheel, "backfill", "--use-case", "transaction_labels", "--from", first.isoformat(),
                          "--to", (first + timedelta(days=1)).isoformat()], env=env, capture_output=True,
                         text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "2 runs succeeded" in out.stdout and "transaction_labels_data" in out.stderr  # the progress bar
    days = {(first + timedelta(days=i)).isoformat() for i in range(2)}
    assert days <= set(storage.list_partitions(zone="curated", dataset="transaction_labels", settings=settings))
