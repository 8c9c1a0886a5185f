"""Drift and delayed-label performance checks against a real S3 API (a SeaweedFS started by
this module). The logs are written in the schema the spec generates (serving.logschema)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flywheel.core import storage
from flywheel.core.config import PROJECT_ROOT, Settings
from flywheel.core.spec import PerformanceSpec, PipelineSpec, load_spec_file
from flywheel.features.featurizer import featurizer_for
from flywheel.monitoring.checks import Champion, performance_check, quality_check
from flywheel.monitoring.drift import (
    ReferenceNotFound,
    load_predictions,
    prediction_prefix,
    reference_key,
    report_prefix,
    run_drift_check,
    workspace_path,
)
from flywheel.serving.logschema import log_dtypes
from tests.integration.seaweed import private_seaweedfs

pytestmark = pytest.mark.integration

SHIFTED = ["amount", "log_amount", "amount_to_user_mean", "user_amount_mean_7d"]
VERSION = "3"
QUIET_DAY, DRIFT_DAY, THIN_DAY, EMPTY_DAY = (date(2024, 3, d) for d in (1, 2, 3, 4))
DAY_ROWS = 600


# ---- a private SeaweedFS ---------------------------------------------------------


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with private_seaweedfs(tmp_path_factory.mktemp("monitoring-s3"), bucket_prefix="mon") as conf:
        yield conf


# ---- data in the contract's formats --------------------------------------------------


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return load_spec_file(PROJECT_ROOT / "models" / "fraud.yaml")


def model_inputs(spec: PipelineSpec) -> list[str]:
    return featurizer_for(spec).names


def features(spec: PipelineSpec, rows: int, rng: np.random.Generator, *, shift: float = 1.0) -> pd.DataFrame:
    amount = rng.lognormal(3.5, 1.0, rows)
    user_mean = rng.lognormal(3.5, 0.5, rows)
    frame = pd.DataFrame({name: rng.random(rows) for name in model_inputs(spec)})
    frame["amount"], frame["log_amount"] = amount, np.log1p(amount)
    frame["hour"] = rng.integers(0, 24, rows).astype(float)
    frame["is_foreign"] = (rng.random(rows) < 0.05).astype(float)
    frame["user_txn_count_7d"] = rng.poisson(5, rows).astype(float)
    frame["user_amount_mean_7d"] = user_mean
    frame["merchant_txn_count_7d"] = rng.poisson(80, rows).astype(float)
    frame["merchant_amount_mean_7d"] = rng.lognormal(3.5, 0.3, rows)
    frame["amount_to_user_mean"] = amount / user_mean
    frame["probability"] = rng.beta(1, 40, rows)
    frame[SHIFTED] = frame[SHIFTED] * shift
    return frame


def prediction_logs(spec: PipelineSpec, day: date, rows: int, seed: int, *, shift: float = 1.0) -> pd.DataFrame:
    """A day of logs in the spec's log schema: every column, typed as log_dtypes says."""
    rng = np.random.default_rng(seed)
    feats = features(spec, rows, rng, shift=shift)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    event = pd.to_datetime(start) + pd.to_timedelta(np.sort(rng.integers(0, 86_400, rows)), unit="s")
    columns: dict[str, object] = {}
    for name, dtype in log_dtypes(spec).items():
        if name in feats.columns:
            columns[name] = feats[name].to_numpy()
        elif dtype.startswith("datetime"):
            columns[name] = event
        elif dtype == "int64":
            columns[name] = rng.integers(0, 300, rows)
        elif dtype == "float64":
            columns[name] = rng.random(rows)
        elif dtype == "bool":
            columns[name] = np.zeros(rows, dtype=bool)
        else:  # text: the caller's ids, the request id
            columns[name] = [f"{name}-{day:%Y%m%d}-{i:06d}" for i in range(rows)]
    logs = pd.DataFrame(columns)
    logs["model_version"] = VERSION
    if "decision" in logs.columns:
        logs["decision"] = logs["probability"] > 0.5
    return logs.astype(log_dtypes(spec))


def put_parquet(settings: Settings, zone: str, key: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    storage.put_bytes(zone, key, buf.getvalue(), settings=settings)


def write_day(settings: Settings, spec: PipelineSpec, day: date, logs: pd.DataFrame, parts: int) -> None:
    prefix = prediction_prefix(spec, day)
    for n, chunk in enumerate(np.array_split(np.arange(len(logs)), parts)):
        put_parquet(settings, "predictions", f"{prefix}part-{n:05d}.parquet", logs.iloc[chunk])
    # Not a log part: must be ignored by the reader.
    storage.put_bytes("predictions", prefix + "_SUCCESS", b"", settings=settings)


@pytest.fixture(scope="module")
def data(settings: Settings, spec: PipelineSpec) -> None:
    rng = np.random.default_rng(11)
    reference = features(spec, 3000, rng)
    reference[spec.target] = (rng.random(3000) < 0.02).astype("int64")
    put_parquet(settings, "features", reference_key(spec, VERSION), reference)
    write_day(settings, spec, QUIET_DAY, prediction_logs(spec, QUIET_DAY, DAY_ROWS, seed=12), parts=3)
    write_day(settings, spec, DRIFT_DAY, prediction_logs(spec, DRIFT_DAY, DAY_ROWS, seed=13, shift=2.5), parts=2)
    write_day(settings, spec, THIN_DAY, prediction_logs(spec, THIN_DAY, 50, seed=14), parts=1)


# ---- helpers ---------------------------------------------------------------------------


def report(settings: Settings, spec: PipelineSpec, day: date) -> tuple[str, dict]:
    prefix = report_prefix(spec, day)
    page = storage.get_bytes("reports", prefix + "report.html", settings=settings).decode()
    summary = json.loads(storage.get_bytes("reports", prefix + "report.json", settings=settings))
    return page, summary


def workspace_days(settings: Settings, spec: PipelineSpec) -> list[str]:
    from evidently.ui.workspace import Workspace

    workspace = Workspace(str(workspace_path(settings)))
    projects = workspace.search_project(spec.model_name)
    assert len(projects) == 1
    runs = workspace.list_runs(projects[0].id)
    return sorted(workspace.get_run(projects[0].id, run).metadata["ds"] for run in runs)


# ---- tests -----------------------------------------------------------------------------


def test_logs_of_a_window_are_read_with_the_contract_columns(
    settings: Settings, spec: PipelineSpec, data: None
) -> None:
    frame = load_predictions(spec, start=QUIET_DAY, end=DRIFT_DAY, settings=settings)
    assert len(frame) == 2 * DAY_ROWS
    assert list(frame.columns) == list(log_dtypes(spec))
    assert frame["request_id"].is_unique
    empty = load_predictions(spec, start=date(2023, 1, 1), end=date(2023, 1, 3), settings=settings)
    assert empty.empty and list(empty.columns) == list(log_dtypes(spec))


def test_quiet_day_has_no_drift(settings: Settings, spec: PipelineSpec, data: None) -> None:
    result = run_drift_check(spec, ds=QUIET_DAY, reference_version=VERSION, settings=settings)
    assert result.status == "ok"
    assert (result.rows, result.reference_rows) == (DAY_ROWS, 3000)
    assert not result.drift_detected and result.drifted_columns == []
    assert result.drift_share is not None and result.drift_share < result.threshold
    page, summary = report(settings, spec, QUIET_DAY)
    assert "<html" in page.lower() and len(page) > 10_000
    assert summary["drift_detected"] is False and summary["status"] == "ok"
    assert summary["evidently"]["metrics"]
    assert result.html_uri == f"s3://mon-reports/drift/{spec.model_name}/ds=2024-03-01/report.html"


def test_drifted_day_flags_the_shifted_columns(settings: Settings, spec: PipelineSpec, data: None) -> None:
    result = run_drift_check(spec, ds=DRIFT_DAY, reference_version=VERSION, settings=settings)
    assert result.status == "ok" and result.drift_detected
    assert set(SHIFTED) <= set(result.drifted_columns)
    assert result.drift_share is not None and result.drift_share >= spec.monitoring.drift_share_threshold
    _, summary = report(settings, spec, DRIFT_DAY)
    assert summary["drift_detected"] is True
    assert summary["drifted_columns"] == result.drifted_columns
    assert summary["column_scores"]["amount"]["drifted"] is True
    assert summary["prediction_drift_score"] == result.prediction_drift_score
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_rerun_replaces_the_report_and_the_workspace_run(
    settings: Settings, spec: PipelineSpec, data: None
) -> None:
    first = run_drift_check(spec, ds=DRIFT_DAY, reference_version=VERSION, settings=settings)
    second = run_drift_check(spec, ds=DRIFT_DAY, reference_version=VERSION, settings=settings)
    assert first.to_dict() == second.to_dict()
    prefix = report_prefix(spec, DRIFT_DAY)
    keys = storage.list_keys("reports", prefix, settings=settings)
    assert sorted(keys) == [prefix + "report.html", prefix + "report.json"]
    assert workspace_days(settings, spec) == ["2024-03-01", "2024-03-02"]
    # Lost index: rebuilt from the runs' metadata, still one run per day.
    for index in (workspace_path(settings) / ".flywheel").glob("*.json"):
        index.unlink()
    run_drift_check(spec, ds=DRIFT_DAY, reference_version=VERSION, settings=settings)
    assert workspace_days(settings, spec) == ["2024-03-01", "2024-03-02"]


def test_too_few_rows_is_recorded_as_insufficient_data(
    settings: Settings, spec: PipelineSpec, data: None
) -> None:
    for day, rows in ((THIN_DAY, 50), (EMPTY_DAY, 0)):
        result = run_drift_check(spec, ds=day, reference_version=VERSION, settings=settings)
        assert result.status == "insufficient_data" and result.rows == rows
        assert not result.drift_detected and result.drift_share is None
        page, summary = report(settings, spec, day)
        assert "insufficient" in page.lower()
        assert summary["status"] == "insufficient_data" and summary["evidently"] is None
    assert "2024-03-03" not in workspace_days(settings, spec)


def test_a_window_spans_several_days(settings: Settings, spec: PipelineSpec, data: None) -> None:
    result = run_drift_check(spec, ds=DRIFT_DAY, reference_version=VERSION, window_days=2, settings=settings)
    assert result.rows == 2 * DAY_ROWS and result.window_days == 2
    _, summary = report(settings, spec, DRIFT_DAY)
    assert summary["window"] == {"start": "2024-03-01", "end": "2024-03-02", "days": 2}


def test_missing_reference_names_its_key(settings: Settings, spec: PipelineSpec, data: None) -> None:
    with pytest.raises(ReferenceNotFound, match=r"reference/fraud-detector/v99\.parquet"):
        run_drift_check(spec, ds=QUIET_DAY, reference_version="99", settings=settings)


# ---- performance on delayed labels, per task -------------------------------------------------

PERF_DAY = date(2024, 3, 10)


def champion(**holdout: float) -> Champion:
    return Champion(version=VERSION, threshold=0.5, holdout=holdout, window_end=None, registered_at=None)


@pytest.fixture(scope="module")
def fraud_feed(settings: Settings, spec: PipelineSpec) -> tuple[PipelineSpec, pd.DataFrame]:
    """Fraud with its label feed: 600 logged predictions, labels for 500 of them arrived."""
    performance = PerformanceSpec(window_days=2, min_labelled_rows=200, min_positives=10, max_pr_auc_drop=0.1)
    fraud = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"performance": performance})})
    feed = fraud.monitoring.labels
    assert feed is not None
    rng = np.random.default_rng(21)
    logs = prediction_logs(fraud, PERF_DAY, 600, seed=22)
    y = (rng.random(600) < 0.1).astype("int64")
    logs["probability"] = np.clip(y * 0.4 + rng.random(600) * 0.6, 0, 1)
    logs["decision"] = logs["probability"] > 0.5
    write_day(settings, fraud, PERF_DAY, logs, parts=2)
    labels = pd.DataFrame({feed.key: logs[feed.key].iloc[:500].to_numpy(), feed.label: y[:500]})
    storage.write_partition(labels, zone="curated", dataset=feed.dataset, ds=PERF_DAY.isoformat(), settings=settings)
    return fraud, logs.assign(label=y).iloc[:500]


def test_binary_performance_joins_the_label_feed_on_its_key(
    settings: Settings, fraud_feed: tuple[PipelineSpec, pd.DataFrame], data: None
) -> None:
    from sklearn.metrics import average_precision_score

    fraud, labelled = fraud_feed
    expected = average_precision_score(labelled["label"], labelled["probability"])
    ok = performance_check(fraud, PERF_DAY, champion=champion(pr_auc=expected + 0.05), settings=settings)
    assert ok.status == "ok", ok.reason
    facts = ok.metrics
    assert (facts["champion_rows"], facts["labelled_rows"], facts["unlabelled_rows"]) == (600, 500, 0)
    assert facts["metric"] == "pr_auc" and facts["pr_auc"] == pytest.approx(expected)
    assert facts["metric_drop"] == pytest.approx(0.05) and facts["label_source"] == "transaction_labels"
    assert facts["report"].endswith(f"performance/{fraud.model_name}/ds=2024-03-10/report.html")
    assert facts["target_drifted"] in (True, False)
    worse = performance_check(fraud, PERF_DAY, champion=champion(pr_auc=expected + 0.2), settings=settings)
    assert worse.status == "alert" and "worse than the champion's holdout" in worse.reason


def test_regression_performance_reads_labels_from_its_own_dataset(
    settings: Settings, spec: PipelineSpec, data: None
) -> None:
    """No label feed: the label arrives with the data and joins on the dataset's key columns."""
    regression = spec.model_copy(update={
        "name": "fraud_amounts", "model_name": "fraud-amounts", "task": "regression",
        "monitoring": spec.monitoring.model_copy(update={
            "labels": None, "performance": PerformanceSpec(window_days=1, min_labelled_rows=100,
                                                           max_metric_drop=0.05)})})
    rng = np.random.default_rng(31)
    logs = prediction_logs(regression, PERF_DAY, 300, seed=32)
    truth = rng.normal(5, 1, 300)
    logs["value"] = truth + rng.normal(0, 0.1, 300)
    write_day(settings, regression, PERF_DAY, logs, parts=1)
    key = regression.dataset.key_columns
    curated = logs[key].assign(**{regression.target: truth})
    curated.loc[:9, regression.target] = np.nan  # ten labels not known yet
    storage.write_partition(curated, zone="curated", dataset=regression.dataset.name, ds=PERF_DAY.isoformat(),
                            settings=settings)
    reference = features(regression, 1000, rng).assign(value=rng.normal(5, 1, 1000),
                                                       **{regression.target: rng.normal(5, 1, 1000)})
    put_parquet(settings, "features", reference_key(regression, VERSION), reference)
    check = performance_check(regression, PERF_DAY, champion=champion(rmse=0.1), settings=settings)
    assert check.status == "ok", check.reason
    facts = check.metrics
    assert (facts["labelled_rows"], facts["unlabelled_rows"]) == (290, 10)
    assert facts["metric"] == "rmse" and facts["lower_is_better"] is True
    assert facts["rmse"] == pytest.approx(0.1, abs=0.02) and facts["r2"] > 0.9
    assert facts["label_source"] == regression.dataset.name
    assert check.metrics["report"].endswith("performance/fraud-amounts/ds=2024-03-10/report.html")
    worse = performance_check(regression, PERF_DAY, champion=champion(rmse=0.01), settings=settings)
    assert worse.status == "alert" and "RMSE" in worse.reason


def test_quality_reads_the_model_inputs_of_the_featurizer(
    settings: Settings, spec: PipelineSpec, data: None
) -> None:
    check = quality_check(spec, QUIET_DAY, reference_version=VERSION, settings=settings)
    assert check.metrics["rows"] == DAY_ROWS
    assert set(check.metrics["missing_rate"]) == set(model_inputs(spec))
    assert check.metrics["unknown_value_rate"] == 0.0 and check.metrics["feature_miss_rate"] == 0.0
