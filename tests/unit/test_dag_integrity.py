"""Every DAG imports cleanly, parses fast, and carries tags, retries and an owner."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
DAGS = Path(__file__).resolve().parents[2] / "dags"
HEAVY = ("torch", "xgboost", "great_expectations", "evidently", "bentoml", "mlflow", "feast", "sklearn")


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    import os

    os.environ.setdefault("AIRFLOW_HOME", str(tmp_path_factory.mktemp("airflow")))
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    for use_case in ("fraud", "flights"):  # every shipped spec gets its DAGs
        assert {f"{use_case}_{kind}" for kind in ("data", "training", "monitoring", "registry", "batch")} \
            <= set(dagbag.dag_ids)


def test_approval_is_a_configuration_switch(spec):
    from flywheel.airflow.factory import training_dag

    plain = training_dag(spec)
    assert set(plain.task_dict) == {"train", "package"}
    t = spec.training
    gated = training_dag(spec.model_copy(update={"training": t.model_copy(update={
        "approval": t.approval.model_copy(update={"required": True})})}))
    assert set(gated.task_dict) == {"train", "package", "gate_passed", "approve", "promote_approved"}
    assert gated.task_dict["approve"].upstream_task_ids == {"gate_passed"}
    assert gated.task_dict["promote_approved"].upstream_task_ids == {"approve", "train"}


def test_batch_dag_waits_for_the_days_features_then_scores_it(dagbag):
    batch = dagbag.dags["fraud_batch"]
    assert set(batch.task_dict) == {"features_ready", "batch_predict"}
    assert batch.task_dict["batch_predict"].upstream_task_ids == {"features_ready"}
    assert batch.task_dict["features_ready"].mode == "reschedule"  # frees the worker slot between pokes
    assert "ds" in batch.task_dict["batch_predict"].template_fields
    assert type(batch.timetable).__name__ == "CronDataIntervalTimetable"


def test_registry_dag_asks_for_action_version_and_reason(dagbag):
    params = dagbag.dags["fraud_registry"].params
    assert {"action", "version", "reason"} <= set(params.keys())
    assert type(dagbag.dags["fraud_registry"].timetable).__name__ == "NullTimetable"  # manual only


# Tasks (of every use case's DAG of that kind) that must not be retried blindly, and why.
NO_RETRY = {"registry.move_alias": "a retried rollback would roll back twice"}


def test_dags_have_tags_retries_and_owner(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for t in dag.tasks:
            kind = dag_id.rsplit("_", 1)[-1]
            assert t.retries >= 1 or f"{kind}.{t.task_id}" in NO_RETRY, f"{dag_id}.{t.task_id} has no retries"
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id} has no owner"


@pytest.mark.parametrize("dag_file", sorted(DAGS.glob("*.py")), ids=lambda p: p.name)
def test_dag_file_parses_without_heavy_imports(dag_file):
    """Parse in a fresh interpreter (as the dag-processor would): no heavy ML imports (pandas,
    torch, Feast, MLflow...), which is what keeps parsing fast. The parse time is printed, not
    asserted: a timing assert failed this test under pytest-xdist on a loaded 2-core machine."""
    code = (
        "import sys, time, runpy; t = time.perf_counter(); runpy.run_path(sys.argv[1]); "
        "print('PARSE', time.perf_counter() - t, "
        f"','.join(m for m in {HEAVY!r} if m in sys.modules) or '-')"
    )
    # airflow itself is imported by the processor before any DAG file: warm it first.
    warm = "import airflow.sdk; " + code
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", warm, str(dag_file)], capture_output=True, text=True,
                         timeout=120, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("PARSE "))
    _, elapsed, heavy = line.split()
    heavy = "" if heavy == "-" else heavy
    print(f"{dag_file.name}: parsed in {float(elapsed):.2f} s ({time.perf_counter() - t0:.1f} s with the interpreter)")
    assert heavy == "", f"{dag_file.name} imports heavy libraries at parse time: {heavy}"


def test_a_broken_spec_is_an_import_error_of_its_own_and_the_others_still_load(tmp_path, monkeypatch):
    """Each way one spec can break (a misspelt key, a name Airflow rejects as a DAG id, a value
    Airflow refuses when the DAG is built) is an import error of spec_errors.py naming the file
    (and the field, where the spec is invalid); every other spec's DAGs still load."""
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    models = DAGS.parent / "models"
    for name in ("fraud.yaml", "flights.yaml", "transaction_labels.yaml", "tabular_mlp.py"):
        (tmp_path / name).write_text((models / name).read_text())
    fraud = yaml.safe_load((models / "fraud.yaml").read_text())

    def variant(file: str, **changes) -> None:
        spec = {**fraud, "dataset": {**fraud["dataset"], "name": file.removesuffix(".yaml")}, **changes}
        (tmp_path / file).write_text(yaml.safe_dump(spec, sort_keys=False))

    variant("misspelt.yaml", name="misspelt", trainign=fraud["training"])  # and no "training"
    variant("spaces.yaml", name="fraud detection!")  # DAG ids "fraud detection!_data", ... rejected
    variant("overflow.yaml", name="overflow", training={**fraud["training"], "approval": {
        "required": True, "timeout_hours": 1e12}})  # valid YAML and spec; Airflow cannot build it
    broken = yaml.safe_load((tmp_path / "misspelt.yaml").read_text())
    del broken["training"]
    (tmp_path / "misspelt.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    monkeypatch.setenv("FLYWHEEL_SPECS_DIR", str(tmp_path))
    bag = DagBag(dag_folder=str(DAGS))
    assert set(bag.import_errors) == {str(DAGS / "spec_errors.py")}, bag.import_errors
    error = bag.import_errors[str(DAGS / "spec_errors.py")]
    assert "3 spec file(s)" in error
    assert (f"{tmp_path / 'misspelt.yaml'}: training: Field required; trainign: Extra inputs are not "
            "permitted") in error
    assert f"{tmp_path / 'spaces.yaml'}: name: String should match pattern" in error
    assert f"{tmp_path / 'overflow.yaml'}: its DAGs do not build" in error
    for use_case in ("fraud", "flights"):
        assert {f"{use_case}_{kind}" for kind in ("data", "training", "monitoring", "registry")} <= set(bag.dag_ids)
    assert "transaction_labels_data" in bag.dag_ids
    assert not any(d.startswith(("misspelt", "overflow", "fraud detection")) for d in bag.dag_ids)
