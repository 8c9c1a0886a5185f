"""Drift checks against a real S3 API (a SeaweedFS started by this module)."""

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
from flywheel.features.featurize import MODEL_FEATURES

from flywheel.core import storage
from flywheel.core.config import PROJECT_ROOT, Settings
from flywheel.core.spec import PipelineSpec, load_spec_file
from flywheel.monitoring.drift import (
    LOG_DTYPES,
    ReferenceNotFound,
    load_predictions,
    prediction_prefix,
    reference_key,
    report_prefix,
    run_drift_check,
    workspace_path,
)
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


def features(rows: int, rng: np.random.Generator, *, shift: float = 1.0) -> pd.DataFrame:
    amount = rng.lognormal(3.5, 1.0, rows)
    user_mean = rng.lognormal(3.5, 0.5, rows)
    frame = pd.DataFrame({name: rng.random(rows) for name in MODEL_FEATURES})
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


def prediction_logs(day: date, rows: int, seed: int, *, shift: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    feats = features(rows, rng, shift=shift)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    event = pd.to_datetime(start) + pd.to_timedelta(np.sort(rng.integers(0, 86_400, rows)), unit="s")
    logs = pd.DataFrame(
        {
            "request_id": [f"{day}-{i}" for i in range(rows)],
            "transaction_id": [f"t{day:%Y%m%d}-{i:06d}" for i in range(rows)],
            "event_timestamp": event,
            "logged_at": event + pd.Timedelta(milliseconds=20),
            "user_id": rng.integers(0, 2000, rows),
            "merchant_id": rng.integers(0, 300, rows),
            "model_version": VERSION,
            "probability": feats.pop("probability"),
            "decision": False,
            "feature_miss": False,
        }
    )
    logs["decision"] = logs["probability"] > 0.5
    return pd.concat([logs, feats[MODEL_FEATURES]], axis=1)


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
    reference = features(3000, rng)
    reference[spec.target] = (rng.random(3000) < 0.02).astype("int64")
    put_parquet(settings, "features", reference_key(spec, VERSION), reference)
    write_day(settings, spec, QUIET_DAY, prediction_logs(QUIET_DAY, DAY_ROWS, seed=12), parts=3)
    write_day(settings, spec, DRIFT_DAY, prediction_logs(DRIFT_DAY, DAY_ROWS, seed=13, shift=2.5), parts=2)
    write_day(settings, spec, THIN_DAY, prediction_logs(THIN_DAY, 50, seed=14), parts=1)


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
    assert set(LOG_DTYPES) <= set(frame.columns)
    assert frame["request_id"].is_unique
    empty = load_predictions(spec, start=date(2023, 1, 1), end=date(2023, 1, 3), settings=settings)
    assert empty.empty and list(empty.columns) == list(LOG_DTYPES)


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
