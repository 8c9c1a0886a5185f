"""Drift monitoring: the model's prediction logs against its training reference.

One check per logical date ``ds``: the prediction logs of the trailing window
``[ds - window_days + 1, ds]`` are compared with the reference the model was
trained on, column by column, with Evidently 0.7 (``DataDriftPreset``). The
monitored features (``spec.monitoring.features``) give the drift share; the
model's outputs are compared too, as prediction drift, but are not counted in the
share: the task's score column (``logschema.prediction_column``: a probability or
a regressed value) and, for multiclass, the predicted class as a categorical column.
The log's columns and dtypes come from the spec (``flywheel.serving.logschema``).

Outputs, replaced on every rerun of the same ``ds``:

* ``s3://<reports>/drift/<model_name>/ds=<ds>/report.html``: Evidently's report;
* ``.../report.json``: our compact summary, with Evidently's own result under
  ``"evidently"``;
* one run per ``ds`` in the local Evidently workspace ``<home>/evidently``
  (project named after the model), so ``evidently ui`` shows the history.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import html
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.core import layout, storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.serving import logschema

if TYPE_CHECKING:
    from evidently.core.report import Snapshot
    from evidently.ui.workspace import Project, Workspace

log = logging.getLogger(__name__)

WORKSPACE_DIR = "evidently"
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_READ_THREADS = 8


class MonitoringError(RuntimeError):
    """Base class of drift-monitoring failures."""


class ReferenceNotFound(MonitoringError):
    """The training reference of a model version does not exist in the features bucket."""

    def __init__(self, model_name: str, version: str, uri: str) -> None:
        self.model_name, self.version, self.uri = model_name, version, uri
        super().__init__(f"no training reference for model {model_name!r} version {version}: {uri}")


class DriftInputError(MonitoringError):
    """A dataset cannot be compared: the message names the dataset, column and rule."""

    def __init__(self, dataset: str, column: str, rule: str) -> None:
        self.dataset, self.column, self.rule = dataset, column, rule
        super().__init__(f"{dataset}: column {column!r}: {rule}")


class DriftReportError(MonitoringError):
    """Evidently's result lacks a metric we read, or contradicts itself."""


@dataclass(frozen=True)
class DriftColumns:
    """What a use case's drift check compares: features (the share) and the model's outputs."""

    features: list[str]
    # The task's score column (numerical): probability, or the regressed value.
    prediction: str
    # Categorical outputs compared too (multiclass: the predicted class).
    categorical: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[str]:
        return [self.prediction, *self.categorical]

    @property
    def all(self) -> list[str]:
        return [*self.features, *self.outputs]


def drift_columns(spec: PipelineSpec) -> DriftColumns:
    """The monitored features and the task's output columns, from the spec and its log schema."""
    prediction = logschema.prediction_column(spec)
    outputs = logschema.OUTPUTS[spec.task]
    categorical = [name for name, dtype in outputs.items() if dtype == "object"]
    features = [name for name in spec.monitoring.features if name not in outputs]
    return DriftColumns(features=features, prediction=prediction, categorical=categorical)


@dataclass(frozen=True)
class ColumnDrift:
    """Drift of one column as Evidently judged it."""

    score: float | None
    method: str
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftSummary:
    """What a drift report says, read from ``snapshot.dict()``."""

    drift_share: float
    drift_share_threshold: float
    drifted_columns: list[str]
    column_scores: dict[str, ColumnDrift]
    prediction: ColumnDrift
    # Every output compared (the prediction column first).
    outputs: dict[str, ColumnDrift] = field(default_factory=dict)

    @property
    def drift_detected(self) -> bool:
        return self.drift_share >= self.drift_share_threshold


@dataclass(frozen=True)
class DriftResult:
    """Outcome of one drift check; ``to_dict()`` is small and JSON-serializable (XCom)."""

    status: Literal["ok", "insufficient_data"]
    model_name: str
    ds: date
    window_days: int
    reference_version: str
    rows: int
    reference_rows: int
    min_rows: int
    threshold: float
    drift_detected: bool
    html_uri: str
    json_uri: str
    # None when status is "insufficient_data": no comparison was made.
    drift_share: float | None = None
    prediction_drift_score: float | None = None
    prediction_drifted: bool | None = None
    drifted_columns: list[str] = field(default_factory=list)
    column_scores: dict[str, ColumnDrift] = field(default_factory=dict)
    # The task's score column whose drift ``prediction_drift_score`` is, and every output's drift
    # (multiclass: the predicted class too).
    prediction_column: str = ""
    output_scores: dict[str, ColumnDrift] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ds"] = self.ds.isoformat()
        return out


# ---- inputs -----------------------------------------------------------------


def prediction_prefix(spec: PipelineSpec, day: date) -> str:
    """Key prefix of one day of a use case's prediction logs in the predictions bucket (keyed by
    the use case, as the model server writes them)."""
    return layout.prediction_prefix(spec.name, day)


def reference_key(spec: PipelineSpec, version: str) -> str:
    """Key of a model version's training reference in the features bucket."""
    return layout.reference_key(spec.model_name, version)


def report_prefix(spec: PipelineSpec, ds: date) -> str:
    """Key prefix of one day's drift report in the reports bucket."""
    return layout.report_prefix("drift", spec.model_name, ds)


def empty_predictions(spec: PipelineSpec) -> pd.DataFrame:
    """A prediction-log frame with no rows and the use case's log columns and dtypes."""
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in logschema.log_dtypes(spec).items()})


def load_predictions(
    spec: PipelineSpec, *, start: date, end: date, settings: Settings | None = None
) -> pd.DataFrame:
    """All prediction logs with ``dt`` in ``[start, end]`` (an empty frame if there are none).

    Raises ``ValueError`` if ``end < start``, :class:`storage.StorageError` without
    S3 credentials, and botocore/pyarrow errors for unreadable objects.
    """
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    settings = settings or get_settings()
    client = storage.s3_client(settings)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    keys = [
        key
        for day in days
        for key in storage.list_keys(
            "predictions", prediction_prefix(spec, day), settings=settings, client=client
        )
        if _is_log_part(key)
    ]
    if not keys:
        return empty_predictions(spec)

    def read(key: str) -> pa.Table:
        body = storage.get_bytes("predictions", key, settings=settings, client=client)
        return pq.read_table(io.BytesIO(body))

    with ThreadPoolExecutor(max_workers=min(_READ_THREADS, len(keys))) as pool:
        tables = list(pool.map(read, keys))
    # "permissive": a part whose feature column is all null (type null) still concatenates.
    frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    return frame.reset_index(drop=True)


def _is_log_part(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith("part-") and name.endswith(".parquet")


def load_reference(spec: PipelineSpec, *, version: str, settings: Settings | None = None) -> pd.DataFrame:
    """The training reference of a model version (``v3`` and ``3`` name the same one).

    Raises :class:`ReferenceNotFound` (naming the S3 URI) if it does not exist.
    """
    from botocore.exceptions import ClientError

    settings = settings or get_settings()
    key = reference_key(spec, version)
    try:
        body = storage.get_bytes("features", key, settings=settings)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
            uri = f"s3://{settings.bucket('features')}/{key}"
            raise ReferenceNotFound(spec.model_name, version, uri) from exc
        raise
    return pq.read_table(io.BytesIO(body)).to_pandas()


def comparable_frame(
    df: pd.DataFrame, columns: Sequence[str], *, dataset: str, categorical: Sequence[str] = ()
) -> pd.DataFrame:
    """The ``columns`` of ``df`` ready for Evidently: float64, or text for the ``categorical`` ones.

    Raises :class:`DriftInputError` if a column is missing, not numeric (unless categorical),
    or has no non-null value (Evidently cannot compare an empty column).
    """
    out = {}
    for column in columns:
        if column not in df.columns:
            raise DriftInputError(dataset, column, "missing column")
        try:
            values = (df[column].astype("string").astype("object") if column in categorical
                      else df[column].astype("float64"))
        except (TypeError, ValueError) as exc:
            raise DriftInputError(dataset, column, f"not numeric ({df[column].dtype})") from exc
        if not values.notna().any():
            raise DriftInputError(dataset, column, "no non-null values")
        out[column] = values
    return pd.DataFrame(out, index=df.index)


# ---- Evidently ------------------------------------------------------------------


def build_drift_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    features: Sequence[str],
    prediction: str,
    categorical: Sequence[str] = (),
    drift_share_threshold: float,
    timestamp: datetime | None = None,
    metadata: Mapping[str, str] | None = None,
    tags: Sequence[str] = (),
) -> Snapshot:
    """Run Evidently's drift report: numerical ``features`` and ``prediction``, and the
    ``categorical`` outputs (e.g. a predicted class), each output with its own ``ValueDrift``.

    ``reference`` and ``current`` must already be comparable (see :func:`comparable_frame`).
    Per-column tests are included: they carry Evidently's own drifted/not-drifted verdict.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    outputs = [prediction, *categorical]
    columns = [*features, *outputs]
    definition = DataDefinition(numerical_columns=[*features, prediction], categorical_columns=list(categorical))
    report = Report(
        [
            DataDriftPreset(columns=list(features), drift_share=drift_share_threshold),
            *(ValueDrift(column=name) for name in outputs),
        ],
        include_tests=True,
    )
    with _quiet_evidently():
        return report.run(
            Dataset.from_pandas(current[columns], data_definition=definition),
            Dataset.from_pandas(reference[columns], data_definition=definition),
            timestamp=timestamp,
            metadata=dict(metadata or {}),
            tags=list(tags),
        )


@contextlib.contextmanager
def _quiet_evidently() -> Iterator[None]:
    # scipy/pandas warn about degenerate columns (e.g. constant ones) on every run.
    logging.getLogger("evidently").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, RuntimeWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        yield


def summarize_drift(
    report: Mapping[str, Any],
    *,
    features: Sequence[str],
    prediction: str,
    categorical: Sequence[str] = (),
    drift_share_threshold: float,
) -> DriftSummary:
    """Read a drift report (``snapshot.dict()`` of :func:`build_drift_snapshot`).

    Share: ``DriftedColumnsCount.value.share``. Per column: the ``ValueDrift`` score
    (``value``), ``config.method`` and ``config.threshold``; the drifted flag is the
    status of that metric's test (FAIL = drifted), because the comparison's direction
    depends on the method (distances drift at ``score >= threshold``, p-value tests
    at ``score < threshold``, and Evidently picks p-value tests for references of
    ≤ 1000 rows). Raises :class:`DriftReportError` if a metric or test is missing or
    the per-column verdicts disagree with Evidently's drifted-column count.
    """
    metrics = report.get("metrics", [])
    verdicts = _drift_verdicts(report.get("tests", []))
    drifts = {m["config"]["column"]: m for m in metrics if _metric_type(m) == "ValueDrift"}
    counts = [m for m in metrics if _metric_type(m) == "DriftedColumnsCount"]
    if len(counts) != 1:
        raise DriftReportError(f"expected one DriftedColumnsCount metric, found {len(counts)}")
    columns = {name: _column_drift(name, drifts, verdicts) for name in features}
    drifted = [name for name in features if columns[name].drifted]
    count = counts[0]["value"]
    if len(drifted) != round(float(count["count"])):
        raise DriftReportError(
            f"Evidently counts {count['count']} drifted columns, its per-column tests "
            f"flag {len(drifted)}: {drifted}"
        )
    outputs = {name: _column_drift(name, drifts, verdicts) for name in (prediction, *categorical)}
    return DriftSummary(
        drift_share=float(count["share"]),
        drift_share_threshold=drift_share_threshold,
        drifted_columns=drifted,
        column_scores=columns,
        prediction=outputs[prediction],
        outputs=outputs,
    )


def _metric_type(metric: Mapping[str, Any]) -> str:
    return str(metric.get("config", {}).get("type", "")).rsplit(":", 1)[-1]


def _drift_verdicts(tests: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Metric id → drifted, from the ValueDrift tests (status FAIL means drift)."""
    verdicts = {}
    for test in tests:
        config = test.get("metric_config", {})
        if str(config.get("params", {}).get("type", "")).endswith(":ValueDrift"):
            if test["status"] not in ("FAIL", "SUCCESS"):
                raise DriftReportError(f"drift test {test.get('name')!r} ended {test['status']}")
            verdicts[config["metric_id"]] = test["status"] == "FAIL"
    return verdicts


def _column_drift(
    column: str, drifts: Mapping[str, Mapping[str, Any]], verdicts: Mapping[str, bool]
) -> ColumnDrift:
    metric = drifts.get(column)
    if metric is None:
        raise DriftReportError(f"no ValueDrift metric for column {column!r}")
    if metric["id"] not in verdicts:
        raise DriftReportError(f"no drift test for column {column!r}")
    return ColumnDrift(
        score=_finite(metric["value"]),
        method=str(metric["config"]["method"]),
        threshold=float(metric["config"]["threshold"]),
        drifted=verdicts[metric["id"]],
    )


def _finite(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


# ---- the check ------------------------------------------------------------------


def run_drift_check(
    spec: PipelineSpec,
    *,
    ds: date,
    reference_version: str,
    window_days: int = 1,
    settings: Settings | None = None,
) -> DriftResult:
    """Compare the prediction logs of ``[ds - window_days + 1, ds]`` with the reference.

    With fewer than ``spec.monitoring.min_rows`` logged rows the status is
    ``"insufficient_data"`` (no comparison, ``drift_detected`` False), and that outcome
    is recorded all the same. Reports are written to the reports bucket and the run to
    the local Evidently workspace, both replacing those of an earlier run of ``ds``.

    Raises ``ValueError`` if ``window_days < 1``, :class:`ReferenceNotFound`,
    :class:`DriftInputError` (a monitored column missing or empty), and
    :class:`DriftReportError` (Evidently's result unreadable).
    """
    if window_days < 1:
        raise ValueError(f"window_days must be >= 1, got {window_days}")
    settings = settings or get_settings()
    monitoring = spec.monitoring
    start = ds - timedelta(days=window_days - 1)

    current = load_predictions(spec, start=start, end=ds, settings=settings)
    raw_reference = load_reference(spec, version=reference_version, settings=settings)
    cols = _with_reference_outputs(drift_columns(spec), raw_reference, spec=spec)
    reference = comparable_frame(
        raw_reference,
        cols.all,
        dataset=f"reference of {spec.model_name} v{reference_version.removeprefix('v')}",
        categorical=cols.categorical,
    )
    bucket, prefix = settings.bucket("reports"), report_prefix(spec, ds)
    base = DriftResult(
        status="insufficient_data",
        model_name=spec.model_name,
        ds=ds,
        window_days=window_days,
        reference_version=reference_version,
        rows=len(current),
        reference_rows=len(reference),
        min_rows=monitoring.min_rows,
        threshold=monitoring.drift_share_threshold,
        drift_detected=False,
        html_uri=f"s3://{bucket}/{prefix}report.html",
        json_uri=f"s3://{bucket}/{prefix}report.json",
        prediction_column=cols.prediction,
    )
    snapshot = None
    result = base
    if len(current) >= monitoring.min_rows:
        dataset = f"predictions of {spec.model_name} dt={start}..{ds}"
        snapshot = build_drift_snapshot(
            reference,
            comparable_frame(current, cols.all, dataset=dataset, categorical=cols.categorical),
            features=cols.features,
            prediction=cols.prediction,
            categorical=cols.categorical,
            drift_share_threshold=monitoring.drift_share_threshold,
            timestamp=datetime.combine(ds, time.min),
            metadata=_snapshot_metadata(base),
            tags=["drift", spec.model_name],
        )
        result = _with_summary(
            base,
            summarize_drift(
                snapshot.dict(),
                features=cols.features,
                prediction=cols.prediction,
                categorical=cols.categorical,
                drift_share_threshold=monitoring.drift_share_threshold,
            ),
        )
    _write_reports(result, snapshot, spec=spec, settings=settings)
    sync_workspace(snapshot, project_name=spec.model_name, ds=ds, settings=settings,
                   dashboard=functools.partial(drift_dashboard, cols.prediction))
    log.info(
        "drift %s ds=%s: status=%s rows=%d share=%s drift=%s",
        spec.model_name,
        ds,
        result.status,
        result.rows,
        result.drift_share,
        result.drift_detected,
    )
    return result


def _with_reference_outputs(cols: DriftColumns, reference: pd.DataFrame, *, spec: PipelineSpec) -> DriftColumns:
    """``cols`` less the categorical outputs a (older) reference lacks: they cannot be compared."""
    missing = [name for name in cols.categorical if name not in reference.columns]
    if not missing:
        return cols
    log.warning("drift %s: the training reference has no %s: not compared", spec.model_name, ", ".join(missing))
    return replace(cols, categorical=[name for name in cols.categorical if name not in missing])


def _with_summary(base: DriftResult, summary: DriftSummary) -> DriftResult:
    return replace(
        base,
        status="ok",
        drift_share=summary.drift_share,
        drift_detected=summary.drift_detected,
        drifted_columns=summary.drifted_columns,
        column_scores=summary.column_scores,
        prediction_drift_score=summary.prediction.score,
        prediction_drifted=summary.prediction.drifted,
        output_scores=summary.outputs,
    )


def _snapshot_metadata(result: DriftResult) -> dict[str, str]:
    return {
        "model_name": result.model_name,
        "ds": result.ds.isoformat(),
        "window_days": str(result.window_days),
        "reference_version": result.reference_version,
    }


def _write_reports(
    result: DriftResult, snapshot: Snapshot | None, *, spec: PipelineSpec, settings: Settings
) -> None:
    """Put the HTML report, then the JSON summary (same keys on every run of ``ds``)."""
    client = storage.s3_client(settings)
    prefix = report_prefix(spec, result.ds)
    page = snapshot.get_html_str(as_iframe=False) if snapshot is not None else _placeholder_html(result)
    storage.put_bytes(
        "reports",
        prefix + "report.html",
        page.encode(),
        content_type="text/html; charset=utf-8",
        settings=settings,
        client=client,
    )
    summary = {
        **result.to_dict(),
        "window": {
            "start": (result.ds - timedelta(days=result.window_days - 1)).isoformat(),
            "end": result.ds.isoformat(),
            "days": result.window_days,
        },
        "evidently": json.loads(snapshot.json()) if snapshot is not None else None,
    }
    body = json.dumps(_json_safe(summary), indent=2, sort_keys=True, allow_nan=False)
    storage.put_bytes(
        "reports",
        prefix + "report.json",
        body.encode(),
        content_type="application/json",
        settings=settings,
        client=client,
    )


def _placeholder_html(result: DriftResult) -> str:
    text = html.escape(
        f"{result.model_name} ds={result.ds}: {result.rows} logged predictions in "
        f"{result.window_days} day(s), fewer than the {result.min_rows} a drift check needs."
    )
    return f"<!doctype html><html><head><title>Drift: insufficient data</title></head><body><p>{text}</p></body></html>"


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) with None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


# ---- Evidently workspace -------------------------------------------------------------


def workspace_path(settings: Settings) -> Path:
    return settings.home / WORKSPACE_DIR


def sync_workspace(
    snapshot: Snapshot | None, *, project_name: str, ds: date, settings: Settings,
    dashboard: Callable[[], Any],
) -> str | None:
    """Make ``snapshot`` the only run of ``ds`` in the project's workspace; returns its id.

    The project is found by name (created on first use; given ``dashboard()`` if it has
    none, e.g. ``functools.partial(drift_dashboard, prediction)``). Runs are
    tracked per ``ds`` in ``<workspace>/.flywheel/<project id>.json`` so a rerun
    replaces its earlier run; with ``snapshot=None`` the earlier run is only removed.
    A file lock serialises concurrent checks on the same machine.
    """
    from evidently.ui.workspace import Workspace

    root = workspace_path(settings)
    state = root / ".flywheel"
    state.mkdir(parents=True, exist_ok=True)
    with _locked(state / "lock"), _quiet_evidently():
        workspace = Workspace(str(root))
        project = _project(workspace, project_name, dashboard)
        index_file = state / f"{project.id}.json"
        index = _run_index(workspace, project, index_file)
        existing = {str(run) for run in workspace.list_runs(project.id)}
        previous = index.pop(ds.isoformat(), None)
        if previous in existing:
            workspace.delete_run(project.id, previous)
        run_id = None
        if snapshot is not None:
            run_id = str(workspace.add_run(project.id, snapshot).id)
            index[ds.isoformat()] = run_id
        _write_json_atomic(index_file, index)
    return run_id


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _project(workspace: Workspace, name: str, dashboard: Callable[[], Any]) -> Project:
    """The project named ``name`` (created on first use), with ``dashboard()`` if it has none."""
    # search_project matches substrings ("m" finds "m performance"): keep exact names only.
    found = sorted((p for p in workspace.search_project(name) if p.name == name), key=lambda p: str(p.id))
    project = found[0] if found else workspace.create_project(name, description=f"Monitoring of {name}")
    if not workspace.get_dashboard(project.id).panels:
        workspace.save_dashboard(project.id, dashboard())
    return project


def drift_dashboard(prediction: str) -> Any:
    """Drift share and the drift of the ``prediction`` column over time (one model:
    ``add_panel(tab=...)`` in Evidently 0.7.23 lists a panel twice in an existing tab)."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel

    panels = [
        line_plot_panel(
            title="Share of drifted features",
            values=[
                PanelMetric(
                    legend="share", metric="DriftedColumnsCount", metric_labels={"value_type": "share"}
                )
            ],
        ),
        line_plot_panel(
            title="Prediction drift score",
            values=[
                PanelMetric(legend=prediction, metric="ValueDrift", metric_labels={"column": prediction})
            ],
        ),
    ]
    tab = DashboardTabModel(title="Drift", panels=[panel.id for panel in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def _run_index(workspace: Workspace, project: Project, index_file: Path) -> dict[str, str]:
    """ds → run id; rebuilt from the runs' metadata if the index file is missing."""
    if index_file.is_file():
        data: dict[str, str] = json.loads(index_file.read_text())
        return data
    index: dict[str, str] = {}
    for run in workspace.list_runs(project.id):
        model = workspace.get_run(project.id, run)
        day = (model.metadata if model is not None else {}).get("ds")
        if not isinstance(day, str):
            continue
        if day in index:  # a duplicate left by an interrupted run: keep one
            workspace.delete_run(project.id, run)
            continue
        index[day] = str(run)
    return index


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
