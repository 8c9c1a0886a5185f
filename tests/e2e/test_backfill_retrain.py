"""A backfill of the monitoring DAG over 7 drifted days requests no retraining, unless asked.

Through a real Airflow (api-server, dag-processor, scheduler; `POST /backfills`, what the UI's
backfill dialog and `airflow backfill create` call), real SeaweedFS and MLflow. The served traffic
of the 7 days is written as the model server logs it, shifted so that every day drifts; the
champion is a registered version with its drift reference. The training DAG is unpaused, so a
retrain request would queue it. The first backfill (no conf) must record 7 drifted days, emit no
retrain request and start no training run; the second, over the first 2 days with run conf
``{"allow_retrain": true}``, emits one request per drifted day (the use case's policy here has no
cooldown or daily cap, so each day's decision is the backfill guard's alone).
"""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import pytest
import yaml

from flywheel.airflow.client import AirflowClient
from flywheel.core.config import Settings
from flywheel.core.spec import load_spec_file
from flywheel.features.featurizer import featurizer_for
from flywheel.monitoring import policy
from flywheel.monitoring.drift import reference_key
from flywheel.stack import launcher as stack
from flywheel.training import promotion, registry
from tests.conftest import ROOT
from tests.integration.test_monitoring_s3 import DAY_ROWS, features, prediction_logs, put_parquet, write_day
from tests.ports import ports

pytestmark = pytest.mark.e2e
FIRST, DAYS = date(2026, 3, 2), 7
ASKED = 2  # days backfilled again with allow_retrain: each must emit its request
BEFORE = ["seaweedfs", "mlflow", "airflow-api-server", "airflow-dag-processor"]
SCHEDULER = ["airflow-scheduler", "airflow-triggerer"]
RETRAIN = "fraud.retrain_request"


def use_case(folder) -> None:
    """The fraud spec with a policy that would trigger on every drifted day (no cooldown, cap or
    label minimum): only the backfill guard can hold a request back."""
    raw = yaml.safe_load((ROOT / "models" / "fraud.yaml").read_text())
    raw["features"]["request"]["is_night"]["function"] = f"{ROOT / 'examples' / 'fraud' / 'features.py'}:is_night"
    raw["monitoring"]["retrain"] |= {"cooldown_days": 0, "max_per_day": 100, "min_new_labelled_rows": 0,
                                     "max_model_age_days": None}
    (folder / "fraud.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def champion_with_drifted_traffic(settings: Settings, spec) -> str:
    """A registered champion, its drift reference, and 7 days of logged traffic that drifts."""
    client = registry.client(settings)
    run = client.create_run(client.create_experiment("backfill-champion")).info
    client.create_registered_model(spec.model_name)
    mv = client.create_model_version(spec.model_name, source=f"{run.artifact_uri}/model", run_id=run.run_id)
    for key, value in {"threshold": "0.5", "task": "binary", "features": json.dumps(featurizer_for(spec).names),
                       "data.window": f"{FIRST - timedelta(days=30)}..{FIRST - timedelta(days=1)}"}.items():
        client.set_model_version_tag(spec.model_name, mv.version, key, value)
    promotion.promote(spec.model_name, str(mv.version), reason="test champion", actor="tester", expected=None,
                      settings=settings)
    rng = np.random.default_rng(11)
    reference = features(spec, 3000, rng)
    reference[spec.target] = (rng.random(3000) < 0.02).astype("int64")
    put_parquet(settings, "features", reference_key(spec, str(mv.version)), reference)
    for i in range(DAYS):
        day = FIRST + timedelta(days=i)
        logs = prediction_logs(spec, day, DAY_ROWS, seed=100 + i, shift=2.5).assign(model_version=str(mv.version))
        write_day(settings, spec, day, logs, parts=1)
    return str(mv.version)


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("backfill-retrain-home")
    specs = tmp_path_factory.mktemp("backfill-retrain-specs")
    use_case(specs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLYWHEEL_SPECS_DIR", str(specs))  # the Airflow components inherit it
        settings = stack.up(Settings(home=home, ports=ports(19500), specs_dir=specs), services=BEFORE)
        try:
            yield settings, load_spec_file(specs / "fraud.yaml")
        finally:
            stack.down(settings)


def backfill(client: AirflowClient, days: int, conf: dict | None = None) -> int:
    """``POST /backfills`` of the first ``days`` days (the UI's dialog and `airflow backfill create`
    call the same endpoint)."""
    return client.backfill("fraud_monitoring", FIRST, FIRST + timedelta(days=days - 1), max_active_runs=4,
                           reprocess_behavior="completed", conf=conf)


@pytest.mark.timeout(4000)  # ~5 min on an idle 2-core box; generous for a shared one
def test_a_backfill_over_drifted_days_requests_no_retraining_unless_asked(airflow_stack):
    settings, spec = airflow_stack
    champion_with_drifted_traffic(settings, spec)
    days = [(FIRST + timedelta(days=i)).isoformat() for i in range(DAYS)]
    with AirflowClient(settings) as client:
        for dag_id in ("fraud_monitoring", "fraud_training"):
            client.wait_for_dag(dag_id, timeout=300)
        client.unpause("fraud_training")  # a retrain request would queue it
        client.unpause("fraud_monitoring")
        first = backfill(client, DAYS)
        stack.up(settings, services=SCHEDULER)  # started after the backfill exists (SQLite, STACK-NOTES)
        states = client.wait_for_runs("fraud_monitoring", first, timeout=2400)
        assert len(states) == DAYS and set(states.values()) == {"success"}, states

        decisions = {d.ds: d for d in policy.history(spec.model_name, settings=settings) if d.ds in days}
        assert sorted(decisions) == days
        assert {d.action for d in decisions.values()} == {"backfill"}, {d.ds: d.action for d in decisions.values()}
        assert all("data_drift" in d.signals["fired"] for d in decisions.values())  # every day did drift
        assert client.asset_events(RETRAIN) == []
        assert client.list_runs("fraud_training") == []  # 0 training runs

        # The operator asks for it: the first days again, with allow_retrain in the run conf.
        client.set_paused("fraud_training", paused=True)  # the requests are the point, not trainings
        again = backfill(client, ASKED, conf={"allow_retrain": True})
        states = client.wait_for_runs("fraud_monitoring", again, timeout=1200)
        assert len(states) == ASKED and set(states.values()) == {"success"}, states
        events = client.asset_events(RETRAIN)
        assert sorted(e.extra["window_end"] for e in events) == days[:ASKED]
        assert all("data_drift" in e.extra["signals"] and e.source_run_id.startswith("backfill__") for e in events)
        assert client.list_runs("fraud_training") == []  # paused: queued, not run
