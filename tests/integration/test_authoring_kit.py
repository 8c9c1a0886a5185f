"""The authoring kit's example DAG (examples/kit/dag.py) run with a real Airflow 3 ``dag.test()`` on
the session stack: two datasets validated on their own, joined, then the joined use case through
its contract, features and training, all from flywheel.airflow.tasks operators."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, time, timedelta
from pathlib import Path

import pytest

from flywheel.core import storage
from flywheel.core.spec import load_any_spec_file
from flywheel.stack import launcher as stack

from .conftest import FIRST_DAY

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
KIT = ROOT / "examples" / "kit"
ROWS_PER_DAY = 2500  # one fraud day: enough rows for the temporal split's three parts
RUN = """
import json, sys
from datetime import datetime, UTC
from examples.kit.dag import build
run = build().test(logical_date=datetime.fromisoformat(sys.argv[1]).replace(tzinfo=UTC))
print("STATES " + json.dumps({ti.task_id: str(ti.state) for ti in run.get_task_instances()}))
"""


def test_the_example_dag_joins_two_datasets_then_trains_on_the_join(services, spec):
    from examples.fraud.generator import generate_day
    from examples.kit.join import split_landing
    from flywheel.training import registry

    left, right, joined = (load_any_spec_file(KIT / f"{n}.yaml") for n in ("payments", "payment_context",
                                                                             "fraud_joined"))
    last = FIRST_DAY  # one day, its own history: the DAG trains on the day it joined
    generator = {**spec.generator, "rows_per_day": ROWS_PER_DAY}
    split_landing(services.home / "landing", generate_day(last, generator), last.isoformat(), left, right)

    stack.get_service("airflow-api-server").prepare(services)  # airflow db migrate (idempotent)
    # A manual run of a daily interval covers the interval that ends at its logical date.
    when = datetime.combine(last + timedelta(days=1), time.min).isoformat()
    # dag.test() runs the DAG as its DAG bundle parses it: the example's folder is the DAGs folder.
    env = stack.airflow_env(services) | {"AIRFLOW__CORE__DAGS_FOLDER": str(KIT)}
    out = subprocess.run([sys.executable, "-c", RUN, when], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("STATES ")), None)
    assert line is not None, out.stdout[-3000:] + out.stderr[-3000:]
    states = json.loads(line.removeprefix("STATES "))
    assert set(states.values()) == {"success"}, (states, out.stderr[-3000:])
    assert set(states) == {"ingest_payments", "validate_payments", "ingest_payment_context",
                           "validate_payment_context", "join", "ingest_fraud_joined", "validate_fraud_joined",
                           "features", "train"}

    # The joined day went through its own contract: its curated rows are the pairs both kept.
    ds = last.isoformat()
    curated = {d.dataset.name: storage.read_partition(zone="curated", dataset=d.dataset.name, ds=ds,
                                                      settings=services) for d in (left, right, joined)}
    both = set(curated["payments"]["transaction_id"]) & set(curated["payment_context"]["transaction_id"])
    assert set(curated["payments_joined"]["transaction_id"]) <= both and len(curated["payments_joined"]) > 0
    assert {"merchant_category", "device", "amount", "is_fraud"} <= set(curated["payments_joined"].columns)
    # ...and training read it: a version of the joined model whose window ends on the DAG's day.
    versions = registry.client(services).search_model_versions(f"name='{joined.model_name}'")
    assert any(registry.window_end(mv) == last for mv in versions), [dict(mv.tags) for mv in versions]
