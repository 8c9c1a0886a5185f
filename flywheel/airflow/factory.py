"""Build the Airflow DAGs of one pipeline spec: data, training and monitoring.

Task bodies are one call into a ``flywheel`` stage; heavy libraries are imported
inside them so the dag-processor parses fast. Everything is keyed on the run's
data interval (never "now"), so reruns and backfills are idempotent.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import (
    DAG,
    Asset,
    CronDataIntervalTimetable,
    Param,
    PokeReturnValue,
    dag,
    get_current_context,
    task,
)

from flywheel.airflow.tasks import (  # the stages as operators: the authoring kit
    BatchPredictOperator,
    FeaturesOperator,
    IngestOperator,
    ValidateOperator,
)
from flywheel.airflow.tasks import contract_failures_do_not_retry as _contract_failures_do_not_retry  # noqa: F401
from flywheel.core.catalog import load_folder
from flywheel.core.spec import DataSpec, PipelineSpec, SpecError

START = datetime(2026, 1, 1)  # earliest data date unless the dataset says (dataset.start)


def assets(spec: DataSpec) -> dict[str, Asset]:
    """The hand-offs between the DAGs of a use case."""
    return {
        "curated": Asset(name=f"{spec.name}.curated", uri=f"s3://flywheel-curated/{spec.dataset.name}/"),
        "model": Asset(name=f"{spec.name}.model_version"),
        "retrain": Asset(name=f"{spec.name}.retrain_request"),
    }


def _dag_args(spec: DataSpec, kind: str, **overrides: Any) -> dict[str, Any]:
    """What every Flywheel DAG shares: id, owner, retries, tags, start, no catchup."""
    return {
        "dag_id": f"{spec.name}_{kind}",
        "start_date": datetime.combine(spec.dataset.start, time.min) if spec.dataset.start else START,
        "catchup": False,
        "default_args": {"owner": spec.owner, "retries": 2, "retry_delay": timedelta(seconds=20)},
        "tags": ["flywheel", spec.name, kind],
        # A DAG file exports the DAGs it means (dags/pipelines.py: its globals); spec_errors.py
        # builds them too, only to find the specs Airflow rejects, and must not register them.
        "auto_register": False,
        **overrides,
    }


def _interval_ds() -> str:
    """The data interval's date (``YYYY-MM-DD``) of the running task."""
    ctx = get_current_context()
    start = ctx.get("data_interval_start") or ctx.get("logical_date")
    if start is None:
        raise ValueError("this task needs a data interval: trigger it with a logical date")
    return str(start.date().isoformat())


def data_dag(spec: DataSpec) -> DAG:
    """Daily: ingest → validate (quarantine) → features (aggregate + materialize; use cases only)."""
    a = assets(spec)

    @dag(**_dag_args(
        spec, "data",
        description=f"Ingest, validate{' and featurize' if isinstance(spec, PipelineSpec) else ''} "
                    f"{spec.dataset.name} daily",
        schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
        max_active_runs=4,
        # Every task is keyed on its data interval, so catchup and backfills are safe;
        # the spec decides whether the scheduler catches up by itself.
        catchup=spec.dataset.catchup,
        doc_md=__doc__,
    ))
    def pipeline() -> None:
        # The interval's data may not have landed yet: wait for it (freeing the worker
        # slot between pokes) instead of failing; time out after a day with a clear error.
        @task.sensor(poke_interval=120, timeout=24 * 3600, mode="reschedule")
        def source_arrived() -> PokeReturnValue:
            from flywheel.core.config import get_settings
            from flywheel.data.ingest import source_files

            files = source_files(spec, _interval_ds(), get_settings())
            return PokeReturnValue(is_done=bool(files), xcom_value=[str(f) for f in files])

        # The stages are the authoring kit's operators (flywheel.airflow.tasks), as in a DAG of
        # your own; each is keyed on the run's data interval.
        validated = source_arrived() >> IngestOperator(task_id="ingest", spec=spec) \
            >> ValidateOperator(task_id="validate", spec=spec, outlets=[a["curated"]])
        if isinstance(spec, PipelineSpec):
            # Aggregates read the trailing window: wait for the previous day's run.
            validated >> FeaturesOperator(task_id="features", spec=spec, depends_on_past=True)

    return pipeline()


def _training_end(ctx: Any) -> date:
    """End of the training window: the ``end`` param, the retrain request, or the run date."""
    end = (ctx.get("params") or {}).get("end")
    if end:
        return date.fromisoformat(str(end))
    for events in (ctx.get("triggering_asset_events") or {}).values():
        for event in events:
            if event.extra.get("window_end"):
                return date.fromisoformat(str(event.extra["window_end"]))
    moment = ctx.get("logical_date") or ctx["dag_run"].run_after
    return (moment - timedelta(days=1)).date()


def backfill_without_retrain(ctx: Any) -> bool:
    """Whether this run is a backfill whose operator did not ask for retraining (the
    ``allow_retrain`` param, set by the backfill's run conf)."""
    run = ctx["dag_run"]
    run_type = getattr(run.run_type, "value", run.run_type)  # DagRunType.BACKFILL_JOB == "backfill"
    if str(run_type) != "backfill":
        return False
    asked = [(ctx.get("params") or {}).get("allow_retrain"), (getattr(run, "conf", None) or {}).get("allow_retrain")]
    return not any(str(value).lower() == "true" for value in asked)


def _retrain_request(ctx: Any) -> dict[str, Any]:
    """The ``extra`` of the newest retrain request that triggered this run ({} when manual)."""
    events = [e for es in (ctx.get("triggering_asset_events") or {}).values() for e in es]
    return dict(events[-1].extra or {}) if events else {}


def training_dag(spec: PipelineSpec) -> DAG:
    """On a retrain request (or by hand): train → gate [→ human approval → promote] → package."""
    a = assets(spec)

    @dag(**_dag_args(
        spec, "training",
        description=f"Train, register and gate {spec.model_name}; package the champion",
        schedule=[a["retrain"]],
        max_active_runs=1,
        params={"end": Param(None, type=["null", "string"], format="date",
                             description="Last day of training data (default: from the trigger)")},
    ))
    def pipeline() -> None:
        @task(outlets=[a["model"]])
        def train() -> dict[str, Any]:
            from flywheel.monitoring.policy import retrain_spec
            from flywheel.runs import training_run

            ctx = get_current_context()
            reason = "retrain_request" if ctx.get("triggering_asset_events") else "manual"
            request = _retrain_request(ctx)
            if request.get("lookback_days"):
                print(f"retrain request: training on the last {request['lookback_days']} days")
            return training_run(retrain_spec(spec, request), _training_end(ctx), reason=reason).to_dict()

        @task
        def package(result: dict[str, Any]) -> dict[str, Any]:
            from flywheel.training.packaging import build_bento

            return {"bento": build_bento(spec, version=result["version"]), **result}

        trained = train()
        package(trained)
        if spec.training.approval.required:
            _approval_path(spec, trained)

    return pipeline()


def _approval_path(spec: PipelineSpec, trained: Any) -> None:
    """gate passed? → ApprovalOperator (Required Actions in the UI) → promote, audited with the
    responder as actor. Reject, or a failed gate, skips the promotion."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    @task.short_circuit
    def gate_passed(result: dict[str, Any]) -> bool:
        return bool(result["awaiting_approval"])

    approve = ApprovalOperator(
        task_id="approve",
        subject=f"Promote {spec.model_name} v{{{{ ti.xcom_pull(task_ids='train')['version'] }}}} to champion?",
        body=("Gate: {{ ti.xcom_pull(task_ids='train')['reason'] }}\n\n"
              "Family: {{ ti.xcom_pull(task_ids='train')['family'] }}; MLflow run "
              "{{ ti.xcom_pull(task_ids='train')['run_id'] }} (evaluation report under its artifacts)."),
        response_timeout=timedelta(hours=spec.training.approval.timeout_hours),
    )

    @task
    def promote_approved(result: dict[str, Any]) -> dict[str, Any]:
        """Re-checks the gate when the champion moved since training (flywheel.training.approval)."""
        from flywheel.training import approval

        answer = get_current_context()["ti"].xcom_pull(task_ids="approve") or {}
        user = answer.get("responded_by_user") or {}
        actor = f"approved-by:{user.get('name') or user.get('id') or 'unknown'}"
        outcome = approval.approve(spec, result["version"], actor=actor)
        print(f"approval of v{outcome.version}: {'promoted' if outcome.promoted else 'NOT promoted'}: "
              f"{outcome.reason}")
        return outcome.to_dict()

    gate_passed(trained) >> approve >> promote_approved(trained)


def registry_dag(spec: PipelineSpec) -> DAG:
    """By hand from the UI: promote a version or roll back, with an audit record."""

    @dag(**_dag_args(
        spec, "registry",
        description=f"Promote a version of {spec.model_name} or roll back the champion (audited)",
        schedule=None,
        max_active_runs=1,
        default_args={"owner": spec.owner, "retries": 0},
        params={
            "action": Param("promote", enum=["promote", "rollback"], description="What to do"),
            "version": Param(None, type=["null", "string"], description="Version to promote"),
            "reason": Param("", type="string", minLength=3, description="Why (kept in the audit log)"),
        },
    ))
    def pipeline() -> None:
        @task
        def move_alias() -> dict[str, Any]:
            from flywheel.training import promotion

            ctx = get_current_context()
            params, run = ctx["params"], ctx["dag_run"]
            actor = f"airflow:{getattr(run, 'triggering_user_name', None) or 'ui'}"
            if params["action"] == "rollback":
                record = promotion.rollback(spec.model_name, reason=params["reason"], actor=actor)
            else:
                if not params.get("version"):
                    raise ValueError("action=promote needs the 'version' param")
                record = promotion.promote(spec.model_name, str(params["version"]),
                                           reason=params["reason"], actor=actor)
            return record.to_dict()

        move_alias()

    return pipeline()


def _champion_or_skip(spec: PipelineSpec) -> Any:
    """The champion a monitoring task watches; the task is skipped while nothing is served."""
    from airflow.sdk.exceptions import AirflowSkipException

    from flywheel.core import config
    from flywheel.monitoring import checks

    try:
        return checks.current_champion(spec, config.get_settings())
    except checks.NoChampion as exc:  # nothing serves yet: nothing to watch (not a failure)
        raise AirflowSkipException(str(exc)) from exc


def _logged(check: Any) -> dict[str, Any]:
    """A check's outcome, printed in the task log (status, reason, report link) and returned."""
    print(f"{check.name}: {check.status}: {check.reason}" + (f" ({check.metrics['report']})"
                                                             if check.metrics.get("report") else ""))
    return dict(check.to_dict())


def monitoring_dag(spec: PipelineSpec) -> DAG:
    """Daily: drift, performance on delayed labels, skew and serving quality of the champion's
    traffic → the retraining policy → a retrain request (Asset event) when it says so."""
    a = assets(spec)

    @dag(**_dag_args(
        spec, "monitoring",
        description=f"Drift, performance, skew and quality checks of {spec.model_name} traffic",
        schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
        max_active_runs=2,
        params={"allow_retrain": Param(False, type="boolean", description=(
            "A backfill run requests retraining only when this is true (set it in the backfill's "
            "run conf); scheduled and manual runs follow the retraining policy alone"))},
    ))
    def pipeline() -> None:
        @task
        def drift_check() -> dict[str, Any]:
            from flywheel.monitoring import drift as monitoring

            champion = _champion_or_skip(spec)
            ds = date.fromisoformat(_interval_ds())
            result = monitoring.run_drift_check(spec, ds=ds, reference_version=champion.version,
                                                window_days=spec.monitoring.drift_window_days)
            print(f"drift report: {result.html_uri}")
            return dict(result.to_dict())

        @task
        def performance_check() -> dict[str, Any]:
            """The champion's PR-AUC on the predictions whose delayed labels have arrived."""
            from flywheel.monitoring import checks

            return _logged(checks.performance_check(spec, date.fromisoformat(_interval_ds()),
                                                    champion=_champion_or_skip(spec)))

        @task
        def skew_check() -> dict[str, Any]:
            """Served features vs the offline features of the same transactions."""
            from flywheel.monitoring import checks

            _champion_or_skip(spec)
            return _logged(checks.skew_check(spec, date.fromisoformat(_interval_ds())))

        @task
        def serving_quality_check() -> dict[str, Any]:
            """Serving input quality, online feature freshness and model age."""
            from flywheel.monitoring import checks

            _champion_or_skip(spec)
            result = checks.serving_checks(spec, date.fromisoformat(_interval_ds()))
            for name, section in result.items():
                print(f"{name}: {section['status']}: {section['reason']}")
            return result

        # The retraining policy (cooldown, dedup, daily cap, minimum new labels) decides on all
        # checks; every decision is recorded (flywheel decisions), suppressed ones too, and the
        # day's summary is written for the Prometheus exporter.
        @task.short_circuit
        def retrain_policy(result: dict[str, Any], performance: dict[str, Any], skew: dict[str, Any],
                           serving: dict[str, Any]) -> bool:
            from flywheel.monitoring import checks

            ctx = get_current_context()
            observed = {"ds": result["ds"], "drift": result, "performance": performance, "skew": skew, **serving}
            decision = checks.conclude(spec, observed, run_id=str(ctx["run_id"]),
                                       backfill=backfill_without_retrain(ctx))
            ctx["ti"].xcom_push(key="decision", value=decision.to_dict())
            print(f"retrain policy: {decision.action}: {decision.reason}")
            return bool(decision.triggered)

        @task(outlets=[a["retrain"]])
        def request_retrain() -> dict[str, Any]:
            from flywheel.monitoring.policy import Decision, retrain_request

            ctx = get_current_context()
            decided = dict(ctx["ti"].xcom_pull(task_ids="retrain_policy", key="decision"))
            decided.pop("triggered", None)
            extra = retrain_request(Decision(**decided))
            ctx["outlet_events"][a["retrain"]].extra = extra
            return extra

        result = drift_check()
        decided = retrain_policy(result, performance_check(), skew_check(), serving_quality_check())
        decided >> request_retrain()
        if spec.rollout.mode != "champion_only":
            _rollout_step(spec)

    return pipeline()


def _rollout_step(spec: PipelineSpec) -> Any:
    """The monitoring DAG's rollout step (spec ``rollout``): the version under rollout one stage
    on, or out of traffic, on the day's live metrics (flywheel.monitoring.rollout)."""

    @task
    def rollout_step() -> dict[str, Any]:
        from flywheel.monitoring import rollout

        result = rollout.step(spec, ds=date.fromisoformat(_interval_ds()), actor="monitoring-dag")
        print(f"rollout: {result.verdict.action}: {result.verdict.reason}")
        return {"action": result.verdict.action, "reason": result.verdict.reason,
                "moved": result.record.to_dict() if result.record else None}

    return rollout_step()


def batch_dag(spec: PipelineSpec) -> DAG:
    """Daily: wait for the day's features → score the day's curated rows with the champion →
    ``predictions/batch/<use case>/ds=<ds>/`` with a manifest (flywheel.serving.batch)."""
    with DAG(**_dag_args(
        spec, "batch",
        description=f"Score each day of {spec.dataset.name} offline with the {spec.model_name} champion",
        schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
        max_active_runs=2,
    )) as built:
        @task.sensor(poke_interval=300, timeout=24 * 3600, mode="reschedule")
        def features_ready() -> bool:
            """The data DAG's features task of the day has committed every entity's aggregates."""
            from flywheel.core import storage
            from flywheel.features import repo

            ds = _interval_ds()
            try:
                for entity in spec.features.entities:
                    storage.read_manifest(zone="features", dataset=repo.feature_dataset(spec, entity), ds=ds)
            except storage.PartitionNotFound:
                return False
            return True

        features_ready() >> BatchPredictOperator(task_id="batch_predict", spec=spec)
    return built


def build_all(spec: DataSpec) -> dict[str, DAG]:
    """The DAGs of a spec: a dataset spec gets its data DAG, a use case all five."""
    if not isinstance(spec, PipelineSpec):
        data = data_dag(spec)
        return {data.dag_id: data}
    dags = [data_dag(spec), training_dag(spec), monitoring_dag(spec), registry_dag(spec), batch_dag(spec)]
    return {d.dag_id: d for d in dags}


def _build_folder(folder: Path) -> tuple[dict[str, DAG], dict[Path, str]]:
    """The DAGs of every spec of ``folder`` that loads and builds, and the error of each other."""
    found = load_folder(folder)
    dags: dict[str, DAG] = {}
    errors = dict(found.errors)
    for path, spec in found.specs.items():
        try:
            built = build_all(spec)
        # Whatever Airflow rejects in one spec's DAGs (an id, a param, a schedule) must not take
        # the other specs' DAGs down with it: the error is not swallowed, spec_errors.py raises it.
        except Exception as exc:  # noqa: BLE001
            errors[path] = f"invalid pipeline spec {path}: its DAGs do not build: {type(exc).__name__}: {exc}"
            continue
        dags.update(built)
    return dags, errors


def build_folder(folder: Path) -> dict[str, DAG]:
    """The DAGs of every spec of ``folder`` that loads and builds (broken ones: see
    :func:`raise_spec_errors`)."""
    return _build_folder(folder)[0]


class BrokenSpecs(SpecError):
    """One or more specs of the folder fail to load; one line per file, naming the field."""


def raise_spec_errors(folder: Path) -> None:
    """Raise :class:`BrokenSpecs` listing every spec file of ``folder`` that fails to load or
    whose DAGs Airflow rejects.

    Called from its own DAG file, so the Airflow UI shows an import error naming the spec
    file and the field while every other spec's DAGs keep parsing and running (Airflow's
    import errors are per DAG file, not per DAG).
    """
    errors = _build_folder(folder)[1]
    if errors:
        lines = "\n".join(f"- {message}" for message in errors.values())
        raise BrokenSpecs(f"{len(errors)} spec file(s) in {folder} fail to load; their DAGs are not built:\n{lines}")
