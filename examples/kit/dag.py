"""An Airflow DAG written with the authoring kit (docs/authoring.md): two datasets joined before
training, composed from :mod:`flywheel.airflow.tasks` and one task of the example's own.

    payments:        ingest → validate ┐
                                       ├→ join → fraud_joined: ingest → validate → features → train
    payment_context: ingest → validate ┘

Each dataset keeps its own contract and quarantine; the join writes the day's joined rows where the
use case ``fraud_joined`` reads its source, and from there the stages are the built-in ones. Copy
this file into your DAGs folder (``build()`` makes the DAG; the module-level ``joined_fraud`` is
what Airflow finds), or build it from a test with another folder of specs.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, CronDataIntervalTimetable, task

from flywheel.airflow.tasks import (
    DS,
    FeaturesOperator,
    IngestOperator,
    TrainOperator,
    ValidateOperator,
)

HERE = Path(__file__).resolve().parent
DATASETS = ("payments", "payment_context")  # the two datasets, joined in this order
USE_CASE = "fraud_joined"


def build(folder: Path = HERE, *, dag_id: str = "kit_fraud_joined", train: bool = True) -> DAG:
    """The DAG over the spec files of ``folder`` (``payments.yaml``, ``payment_context.yaml``,
    ``fraud_joined.yaml``). ``train=False`` leaves training out (a day that only feeds features)."""
    specs = {name: str(folder / f"{name}.yaml") for name in (*DATASETS, USE_CASE)}
    with DAG(
        dag_id=dag_id,
        description="Join payments with their context, then train fraud_joined on the joined rows",
        schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # the features of a day read the previous days: one day at a time
        default_args={"owner": "data-engineering", "retries": 1, "retry_delay": timedelta(seconds=20)},
        tags=["flywheel", "kit", USE_CASE],
    ) as dag:
        validated = []
        for name in DATASETS:
            ingest = IngestOperator(task_id=f"ingest_{name}", spec=specs[name])
            validate = ValidateOperator(task_id=f"validate_{name}", spec=specs[name])
            ingest >> validate
            validated.append(validate)

        @task
        def join(day: str) -> dict[str, Any]:
            """The day's curated payments with their context, as fraud_joined's landed batch
            (``day``: templated like the kit's ``ds``; a TaskFlow argument named ``ds`` would get
            the logical date instead)."""
            from examples.kit.join import join_day
            from flywheel.core.spec import load_any_spec_file

            left, right, into = (load_any_spec_file(Path(specs[n])) for n in (*DATASETS, USE_CASE))
            return join_day(left, right, into, day)

        joined = join(day=DS)
        ingest_joined = IngestOperator(task_id=f"ingest_{USE_CASE}", spec=specs[USE_CASE])
        validate_joined = ValidateOperator(task_id=f"validate_{USE_CASE}", spec=specs[USE_CASE])
        features = FeaturesOperator(task_id="features", spec=specs[USE_CASE])
        validated >> joined >> ingest_joined >> validate_joined >> features
        if train:
            features >> TrainOperator(task_id="train", spec=specs[USE_CASE], reason="kit example")
    return dag


joined_fraud = build()
