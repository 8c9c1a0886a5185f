"""The whole loop through Airflow (`airflow dags test`), on real SeaweedFS, MLflow, Feast and BentoML.

Days 1–6 are normal, days 7–8 carry an injected amount shift. Data DAG runs for every day,
the training DAG makes the first champion, the model server answers HTTP, the monitoring DAG
sees the drift in the logged traffic and emits the retrain Asset event the training DAG is
scheduled on; the retraining run registers a new version.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from examples.demo import valid_rows, wait_for_prediction_logs
from examples.fraud.generator import DriftKind, write_landing
from flywheel.core import storage
from flywheel.core.config import Settings
from flywheel.runs import data_day
from flywheel.stack import launcher as stack
from flywheel.training import registry
from tests.ports import ports

pytestmark = pytest.mark.e2e
FIRST = date(2026, 1, 1)
NORMAL_DAYS, DRIFT_DAYS = 6, 2
PORTS = ports(25000)
AIRFLOW = str(Path(sys.executable).parent / "airflow")
ROOT = Path(__file__).resolve().parents[2]


def day(offset: int) -> date:
    return FIRST + timedelta(days=offset)


@pytest.fixture(scope="module")
def env(tmp_path_factory, spec):
    home = tmp_path_factory.mktemp("e2e-home")
    settings = stack.up(Settings(home=home, ports=PORTS, prediction_flush_s=1.0),
                        services=["seaweedfs", "mlflow"])
    stack.get_service("airflow-api-server").prepare(settings)  # airflow db migrate
    write_landing(home / "landing", FIRST, NORMAL_DAYS + DRIFT_DAYS, spec.generator,
                  drift_from=day(NORMAL_DAYS), drift=DriftKind.AMOUNT_SHIFT)
    try:
        yield settings, stack.airflow_env(settings)
    finally:
        stack.down(settings)


def dags_test(airflow_env: dict[str, str], dag_id: str, when: date | None = None, conf: dict | None = None):
    """Run a DAG in-process; ``when`` is the day whose data interval the run covers.

    A manual run of a daily interval timetable covers the interval that *ends* at its
    logical date, so the run for day D is dated D + 1.
    """
    cmd = [AIRFLOW, "dags", "test", dag_id]
    if when is not None:
        cmd.append((when + timedelta(days=1)).isoformat())
    if conf is not None:
        cmd += ["--conf", json.dumps(conf)]
    out = subprocess.run(cmd, env=airflow_env, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def task_states(airflow_env: dict[str, str], dag_id: str) -> dict[str, str]:
    """States of the latest run's tasks, read from the Airflow metadata DB."""
    db = Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        run_id = conn.execute("select run_id from dag_run where dag_id=? order by id desc limit 1",
                              (dag_id,)).fetchone()[0]
        rows = conn.execute("select task_id, state from task_instance where dag_id=? and run_id=?",
                            (dag_id, run_id)).fetchall()
    return dict(rows)


def run_data_day(airflow_env: dict[str, str], offset: int) -> None:
    dags_test(airflow_env, "fraud_data", day(offset))
    assert set(task_states(airflow_env, "fraud_data").values()) == {"success"}


def replay(settings: Settings, spec, when: date) -> int:
    path = settings.home / "landing" / "transactions" / f"ds={when}" / "part-0.parquet"
    rows = valid_rows(pd.read_parquet(path), spec).drop(columns=[spec.target])
    rows = rows.assign(event_timestamp=rows.event_timestamp.map(lambda t: t.isoformat()),
                       user_id=rows.user_id.astype("int64"), merchant_id=rows.merchant_id.astype("int64"))
    records = rows.to_dict("records")
    headers = {"X-API-Key": settings.api_key.get_secret_value()}
    with httpx.Client(base_url=str(settings.model_server_url), headers=headers, timeout=60) as http:
        for i in range(0, len(records), 250):
            resp = http.post(f"/{spec.name}/predict_batch", json=records[i : i + 250])
            assert resp.status_code == 200, resp.text
            assert all(0 <= p["probability"] <= 1 for p in resp.json())
    return len(records)


@pytest.mark.timeout(2700)  # 20 min in CI beside the suite; past 30 min with a demo running too
def test_the_loop_closes(env, spec):
    settings, airflow_env = env

    # 1. the history: its first day through the data DAG, the others through the same stage
    #    functions in-process (flywheel.runs.data_day, what the DAG's tasks call), as
    #    test_flights does; the data DAG runs again for the drifted days (step 5), and
    #    test_data_backfill runs it over 7 days through the scheduler. Partitions written, bad
    #    rows quarantined with reasons.
    run_data_day(airflow_env, 0)
    for offset in range(1, NORMAL_DAYS - 1):
        data_day(spec, day(offset).isoformat(), run_id=f"history__{day(offset)}", settings=settings)
    curated = storage.list_partitions(zone="curated", dataset="transactions", settings=settings)
    assert curated == [day(i).isoformat() for i in range(NORMAL_DAYS - 1)]
    quarantined = storage.read_partition(zone="quarantine", dataset="transactions", ds=day(0).isoformat(),
                                         settings=settings)
    assert len(quarantined) > 0 and quarantined["_failed_rules"].str.len().gt(0).all()

    # 2. training DAG: registered model with alias champion, packaged as a bento
    train_end, last_normal = day(NORMAL_DAYS - 2), day(NORMAL_DAYS - 1)
    dags_test(airflow_env, "fraud_training", conf={"end": train_end.isoformat()})
    assert task_states(airflow_env, "fraud_training") == {"train": "success", "package": "success"}
    champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    assert champion is not None and str(champion.version) == "1"
    # DAGs start paused, and a paused DAG is not queued by Asset events: unpause as an operator would.
    subprocess.run([AIRFLOW, "dags", "unpause", "fraud_training"], env=airflow_env, check=True,
                   capture_output=True, timeout=120)

    # 3. serve the bento; the next day's traffic (features of the closed days, as in production)
    served = stack.up(settings, services=["model-server"])
    with httpx.Client(base_url=str(served.model_server_url), timeout=30) as http:
        resp = http.post(f"/{spec.name}/predict", headers={"X-API-Key": served.api_key.get_secret_value()},
                         json={"user_id": 3, "merchant_id": 5, "amount": 120.0, "merchant_category": "travel",
                               "device": "mobile", "event_timestamp": f"{last_normal}T10:00:00Z", "country": "US"})
        assert resp.status_code == 200, resp.text
        assert 0 <= resp.json()["probability"] <= 1 and isinstance(resp.json()["decision"], bool)
    assert replay(served, spec, last_normal) > 2000
    wait_for_prediction_logs(served, spec, last_normal)

    # 4. monitoring on a normal day: report written, no retrain requested
    dags_test(airflow_env, "fraud_monitoring", last_normal)
    states = task_states(airflow_env, "fraud_monitoring")
    normal = json.loads(storage.get_bytes(
        "reports", f"drift/{spec.model_name}/ds={last_normal}/report.json", settings=settings))
    assert states["drift_check"] == "success"
    assert all(states[t] == "success" for t in ("performance_check", "skew_check", "serving_quality_check",
                                                "retrain_policy")), states
    assert states["request_retrain"] == "skipped", (normal["drift_share"], normal["drifted_columns"])
    from flywheel.monitoring import checks

    summary = {s["ds"]: s for s in checks.read_summaries(spec, settings=settings)}[last_normal.isoformat()]
    # No label feed landed in this test and the day's batch is not ingested yet: both say so.
    assert summary["performance"]["status"] == "insufficient_data"
    assert summary["skew"]["status"] == "waiting_for_data"
    assert summary["decision"]["action"] == "no_signal" and summary["freshness"]["status"] == "ok"

    # 5. drifted days arrive and are served; the drift check emits the retrain Asset event
    for offset in range(NORMAL_DAYS - 1, NORMAL_DAYS + DRIFT_DAYS - 1):
        run_data_day(airflow_env, offset)
    drift_day = day(NORMAL_DAYS + DRIFT_DAYS - 1)
    assert replay(served, spec, drift_day) > 2000
    wait_for_prediction_logs(served, spec, drift_day)
    dags_test(airflow_env, "fraud_monitoring", drift_day)
    assert task_states(airflow_env, "fraud_monitoring")["request_retrain"] == "success"
    report = json.loads(storage.get_bytes(
        "reports", f"drift/{spec.model_name}/ds={drift_day}/report.json", settings=settings))
    assert report["drift_detected"] is True and "amount" in report["drifted_columns"]
    with sqlite3.connect(Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db") as conn:
        extra = conn.execute(
            "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = ?",
            ("fraud.retrain_request",)).fetchall()
        queued = conn.execute("select target_dag_id from asset_dag_run_queue").fetchall()
    assert extra and json.loads(extra[-1][0])["window_end"] == drift_day.isoformat()
    assert ("fraud_training",) in queued  # the scheduler would start the training DAG now
    from flywheel.monitoring import policy

    decisions = {d.ds: d for d in policy.history(spec.model_name, settings=settings)}
    assert decisions[last_normal.isoformat()].action == "no_signal"
    assert decisions[drift_day.isoformat()].triggered
    assert decisions[drift_day.isoformat()].signals["new_labelled_rows"] > 1000

    # 6. the retraining run registers a new version (promoted only through the gate)
    dags_test(airflow_env, "fraud_training", conf={"end": drift_day.isoformat()})
    versions = registry.client(settings).search_model_versions(f"name='{spec.model_name}'")
    assert max(int(v.version) for v in versions) == 2

    # 7. with approval required, a gate-passing model waits for a person (Required Actions);
    #    an approval over the REST API promotes it, audited with the responder as actor
    approval_promotes_after_a_human_says_yes(settings, airflow_env, spec, drift_day)

    # 8. an operator rolls back from the UI: the registry DAG with params, audited
    approved = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings).version
    dags_test(airflow_env, "fraud_registry", conf={"action": "rollback", "reason": "e2e: rollback from the UI"})
    assert task_states(airflow_env, "fraud_registry") == {"move_alias": "success"}
    restored = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings).version
    assert restored != approved
    from flywheel.training import promotion

    last = promotion.history(spec.model_name, settings=settings)[-1]
    assert (last.action, last.from_version, last.to_version) == ("rollback", str(approved), str(restored))
    assert last.actor.startswith("airflow:") and last.reason == "e2e: rollback from the UI"

    # 9. after the whole loop: no generated secret on any command line (`ps`) or in any log
    assert_no_secret_leaked(settings)


def assert_no_secret_leaked(settings: Settings) -> None:
    stored = json.loads((settings.home / "secrets.json").read_text())
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    logs = [p for folder in (settings.log_dir, settings.airflow_home / "logs") for p in folder.rglob("*")
            if p.is_file()]
    texts = {str(p): p.read_text(errors="replace") for p in logs}
    # the stack's service logs (`airflow dags test` runs tasks in its own process: their output is
    # what dags_test captured, checked by the runs' assertions)
    assert len(texts) >= 5 and len(stored) >= 15
    for key, secret in stored.items():
        assert secret not in ps, f"secret {key} is on a command line"
        found = [name for name, text in texts.items() if secret in text]
        assert not found, f"secret {key} is in {found[:3]}"


def approval_promotes_after_a_human_says_yes(settings: Settings, airflow_env: dict[str, str], spec,
                                             end: date) -> None:
    import time

    import yaml

    from flywheel.airflow.client import AirflowClient
    from flywheel.training import promotion

    specs = settings.home / "specs-approval"
    specs.mkdir()
    raw = yaml.safe_load((ROOT / "models" / "fraud.yaml").read_text())
    raw["training"].update({"approval": {"required": True}, "search": {"trials": 0},
                            "min_improvement": -1.0, "slice_tolerance": 1.0,  # let the gate pass
                            "candidates": {"xgboost": raw["training"]["candidates"]["xgboost"]}})
    # the custom feature function is found relative to the spec's folder: point the copy at it
    for feature in raw["features"]["request"].values():
        if feature.get("fn") == "python":
            file, _, name = feature["function"].rpartition(":")
            feature["function"] = f"{(ROOT / 'models' / file).resolve()}:{name}"
    (specs / "fraud.yaml").write_text(yaml.safe_dump(raw))
    env = airflow_env | {"FLYWHEEL_SPECS_DIR": str(specs)}
    before = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings).version
    api = stack.up(settings, services=["airflow-api-server"])
    cmd = [AIRFLOW, "dags", "test", "fraud_training", "--conf", json.dumps({"end": end.isoformat()})]
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with AirflowClient(api) as client:
            deadline, pending = time.monotonic() + 420, []
            while not pending and run.poll() is None and time.monotonic() < deadline:
                time.sleep(2)
                pending = client.pending_approvals("fraud_training")
            assert pending, f"no approval was requested: {run.stdout.read() if run.poll() is not None else ''}"
            # still the old champion while nobody has answered
            assert registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings).version == before
            assert "Promote fraud-detector v" in pending[0]["subject"]
            client.respond(pending[0], "Approve")
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
        stack.down(api, services=["airflow-api-server"])
    states = task_states(airflow_env, "fraud_training")
    assert states["approve"] == "success" and states["promote_approved"] == "success", states
    champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    assert champion.version != before and champion.tags["gate.awaiting_approval"] == "true"
    last = promotion.history(spec.model_name, settings=settings)[-1]
    assert last.to_version == str(champion.version) and last.actor.startswith("approved-by:")
    assert "human approval" in last.reason

