"""The authoring kit's operators: templated, keyword-only, typed errors for a wrong spec or day."""

from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_every_operator_templates_its_spec_and_day():
    from flywheel.airflow import tasks

    kinds = [tasks.IngestOperator, tasks.ValidateOperator, tasks.FeaturesOperator, tasks.TrainOperator,
             tasks.MonitorOperator, tasks.BatchPredictOperator]
    for kind in kinds:
        assert {"spec_file", "ds"} <= set(kind.template_fields), kind
    assert {"spec_file", "version", "reason"} <= set(tasks.PromoteOperator.template_fields)
    assert "version" in tasks.PackageOperator.template_fields
    with pytest.raises(TypeError):  # keyword-only
        tasks.IngestOperator("ingest", "models/fraud.yaml")  # type: ignore[misc]


def test_the_day_renders_from_the_data_interval(spec):
    from airflow.sdk import DAG

    from flywheel.airflow.tasks import BatchPredictOperator

    with DAG("kit_unit", schedule=None, start_date=datetime(2026, 1, 1)):
        op = BatchPredictOperator(task_id="batch", spec=spec)
    rendered = op.render_template(op.ds, {"data_interval_start": datetime(2026, 1, 9, 0, 0)})
    assert rendered == "2026-01-09"
    assert op.load_spec() is spec


def test_a_dataset_spec_where_a_use_case_is_needed_is_a_typed_error():
    from flywheel.airflow.tasks import FeaturesOperator, IngestOperator, KitError, MonitorOperator

    labels = ROOT / "models" / "transaction_labels.yaml"
    assert IngestOperator(task_id="ingest", spec=str(labels)).load_spec().name == "transaction_labels"
    with pytest.raises(KitError, match="features: spec 'transaction_labels' is a dataset spec"):
        FeaturesOperator(task_id="features", spec=str(labels)).load_spec()
    with pytest.raises(KitError, match=r"unknown checks \['skew'\]"):
        MonitorOperator(task_id="watch", spec=str(labels), checks=["drift", "skew"])
    with pytest.raises(KitError, match="is not a date"):
        IngestOperator(task_id="ingest", spec=str(labels), ds="").day()
