"""The authoring kit: Flywheel's stages as Airflow operators, for data engineers who write their
own DAGs (docs/authoring.md).

Each operator is one call into the same engine function the built-in DAGs call
(:mod:`flywheel.airflow.factory`, :mod:`flywheel.runs`): nothing here re-implements a stage. Every
one takes keyword-only arguments and returns a small JSON record (URIs, counts, versions), never
a DataFrame, so the next task reads its input from the object store, not from XCom.

``spec`` is a loaded spec object or the path of a spec file (``models/<name>.yaml``); a path and
every argument listed in an operator's ``template_fields`` are Jinja-templated, so
``ds="{{ data_interval_start | ds }}"`` (the default: the day the run's data interval covers, as
the built-in DAGs key their tasks), ``version="{{ ti.xcom_pull(task_ids='train')['version'] }}"`` or
``spec="{{ var.value.spec_dir }}/fraud.yaml"`` render per run::

    from flywheel.airflow.tasks import IngestOperator, ValidateOperator, FeaturesOperator

    with DAG("my_fraud_day", schedule="@daily", start_date=datetime(2026, 1, 1)):
        ingest = IngestOperator(task_id="ingest", spec="models/fraud.yaml")
        validate = ValidateOperator(task_id="validate", spec="models/fraud.yaml")
        features = FeaturesOperator(task_id="features", spec="models/fraud.yaml")
        ingest >> validate >> features

Heavy libraries are imported inside ``execute`` only, so a DAG file using the kit parses fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any, ClassVar

from airflow.sdk import BaseOperator

from flywheel.core.spec import DataSpec, PipelineSpec, SpecError

DS = "{{ data_interval_start | ds }}"  # the day a run covers (a manual run: the interval ending at its date)


class KitError(SpecError):
    """An operator was given a spec it cannot run (a dataset spec where a use case is needed)."""


@contextmanager
def contract_failures_do_not_retry() -> Iterator[None]:
    """A broken contract fails the task at once (a retry reads the same batch); the typed error,
    naming dataset, partition and rule, is the cause shown in the task log."""
    from airflow.sdk.exceptions import AirflowFailException

    from flywheel.data.validation import ContractViolation, QuarantineShareExceeded

    try:
        yield
    except QuarantineShareExceeded as exc:  # the split is committed; too many rows failed
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    except ContractViolation as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc} (batch quarantined)") from exc


class FlywheelOperator(BaseOperator):
    """What every kit operator shares: the spec (object or templated path) and the day ``ds``.

    ``ds`` (``YYYY-MM-DD``, default ``{{ data_interval_start | ds }}``: the first day of the run's
    data interval, the day a daily run covers) is the partition the stage reads or writes; reruns of
    the same ``ds`` replace their output, never append.
    """

    template_fields: Sequence[str] = ("spec_file", "ds")
    needs_use_case: ClassVar[bool] = True

    def __init__(self, *, spec: DataSpec | str | Path, ds: str = DS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_object = spec if isinstance(spec, DataSpec) else None
        self.spec_file = "" if isinstance(spec, DataSpec) else str(spec)
        self.ds = ds

    def load_spec(self) -> DataSpec:
        """The spec, loaded from ``spec_file`` (rendered) when not given as an object.

        Raises :class:`KitError` when the operator needs a use case and got a dataset spec."""
        from flywheel.core.spec import load_any_spec_file

        spec = self.spec_object or load_any_spec_file(Path(self.spec_file))
        if self.needs_use_case and not isinstance(spec, PipelineSpec):
            raise KitError(f"{self.task_id}: spec {spec.name!r} is a dataset spec: "
                           f"{type(self).__name__} needs a use case (a spec with features and training)")
        return spec

    def day(self) -> date:
        """``ds`` as a date; raises :class:`KitError` when the run has none (a run without a logical date)."""
        try:
            return date.fromisoformat(str(self.ds)[:10])
        except ValueError as exc:
            raise KitError(f"{self.task_id}: ds={self.ds!r} is not a date (YYYY-MM-DD): trigger the run "
                           "with a logical date or pass ds=") from exc


class IngestOperator(FlywheelOperator):
    """Copy the day's source files into the raw zone (one partition with a manifest).

    Returns :class:`flywheel.data.ingest.IngestResult` as a dict. A batch that breaks the contract
    fails the task without retries (the batch is quarantined)."""

    needs_use_case = False

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.data.ingest import ingest

        with contract_failures_do_not_retry():
            return ingest(self.load_spec(), self.day().isoformat(), run_id=str(context["run_id"])).to_dict()


class ValidateOperator(FlywheelOperator):
    """Validate the raw partition with Great Expectations: curated and quarantine, one commit.

    Returns the validation summary (rows passed/quarantined, the Data Docs link)."""

    needs_use_case = False

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.data.validation import validate_partition

        with contract_failures_do_not_retry():
            summary = validate_partition(self.load_spec(), self.day().isoformat(), run_id=str(context["run_id"]))
        print(f"GX Data Docs: {summary.get('data_docs', {}).get('url')}")
        return summary


class FeaturesOperator(FlywheelOperator):
    """Apply the use case's Feast objects, compute the day's entity aggregates (offline store)
    and materialize them online (:func:`flywheel.runs.feature_day`). Aggregates read a trailing
    window: run the days in order (``depends_on_past=True`` does it for a scheduled DAG)."""

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.runs import feature_day

        return feature_day(self.load_spec(), self.day())  # type: ignore[arg-type]


class TrainOperator(FlywheelOperator):
    """Train the baseline and every candidate on the window ending at ``ds``, register the best
    in MLflow and gate it (promotion to ``champion`` when it beats the champion and the spec needs
    no approval). ``reason`` is recorded on the version. Returns
    :class:`flywheel.training.trainer.TrainResult` as a dict (``version``, ``promoted``...)."""

    template_fields: Sequence[str] = ("spec_file", "ds", "reason")

    def __init__(self, *, reason: str = "kit", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.runs import training_run

        return training_run(self.load_spec(), self.day(), reason=self.reason).to_dict()  # type: ignore[arg-type]


class PromoteOperator(FlywheelOperator):
    """Make ``version`` (templated) the champion, audited with ``reason`` and the run as actor
    (:func:`flywheel.training.promotion.promote`). Not retried by default: a move is not blind."""

    template_fields: Sequence[str] = ("spec_file", "version", "reason")

    def __init__(self, *, version: str, reason: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)
        self.version, self.reason = version, reason

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.training import promotion

        spec = self.load_spec()
        assert isinstance(spec, PipelineSpec)
        record = promotion.promote(spec.model_name, str(self.version), reason=self.reason,
                                   actor=f"airflow:{context['run_id']}")
        return dict(record.to_dict())


class PackageOperator(FlywheelOperator):
    """Build the BentoML bento of ``version`` (templated, e.g. the train task's XCom); returns its tag."""

    template_fields: Sequence[str] = ("spec_file", "version")

    def __init__(self, *, version: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.version = version

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.training.packaging import build_bento

        return {"bento": build_bento(self.load_spec(), version=str(self.version)),  # type: ignore[arg-type]
                "version": str(self.version)}


class MonitorOperator(FlywheelOperator):
    """The champion's drift (Evidently, against its training reference) and/or performance on
    delayed labels for ``ds``: ``checks`` is a subset of ``("drift", "performance")``. Skipped
    while nothing is served (no champion). Returns ``{check: outcome}``; deciding on them is the
    retraining policy's job (the built-in ``<use_case>_monitoring`` DAG)."""

    template_fields: Sequence[str] = ("spec_file", "ds")
    CHECKS: ClassVar[tuple[str, ...]] = ("drift", "performance")

    def __init__(self, *, checks: Sequence[str] = CHECKS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(checks) - set(self.CHECKS))
        if unknown:
            raise KitError(f"{self.task_id}: unknown checks {unknown}; choose from {list(self.CHECKS)}")
        self.checks = tuple(checks)

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        from flywheel.core.config import get_settings
        from flywheel.monitoring import checks
        from flywheel.monitoring import drift as monitoring

        spec = self.load_spec()
        assert isinstance(spec, PipelineSpec)
        try:
            champion = checks.current_champion(spec, get_settings())
        except checks.NoChampion as exc:
            raise AirflowSkipException(str(exc)) from exc
        out: dict[str, Any] = {}
        if "drift" in self.checks:
            out["drift"] = monitoring.run_drift_check(spec, ds=self.day(), reference_version=champion.version,
                                                      window_days=spec.monitoring.drift_window_days).to_dict()
        if "performance" in self.checks:
            out["performance"] = checks.performance_check(spec, self.day(), champion=champion).to_dict()
        return out


class BatchPredictOperator(FlywheelOperator):
    """Score the curated partition ``ds`` offline with the champion; commit
    ``predictions/batch/<use case>/ds=<ds>/`` with a manifest (:func:`flywheel.serving.batch.batch_predict`;
    idempotent on ``ds``). ``chunk_rows`` bounds memory. Returns the :class:`BatchRun` as a dict."""

    def __init__(self, *, chunk_rows: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk_rows = chunk_rows

    def execute(self, context: Any) -> dict[str, Any]:
        from flywheel.serving import batch

        spec = self.load_spec()
        assert isinstance(spec, PipelineSpec)
        done = batch.batch_predict(spec, self.day(), run_id=str(context["run_id"]),
                                   chunk_rows=self.chunk_rows or batch.CHUNK_ROWS)
        print(f"batch predictions: {done.rows} rows by {done.model_name} v{done.version} -> {done.uri}")
        return done.to_dict()
