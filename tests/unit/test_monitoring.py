"""Drift reading: real Evidently on small synthetic reference/current pairs; the columns
compared come from the spec (its monitored features, the task's outputs in the log schema)."""

from __future__ import annotations

import copy
import json
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flywheel.core.config import PROJECT_ROOT
from flywheel.core.spec import PipelineSpec, load_spec_file
from flywheel.monitoring.drift import (
    ColumnDrift,
    DriftInputError,
    DriftReportError,
    DriftResult,
    build_drift_snapshot,
    comparable_frame,
    drift_columns,
    empty_predictions,
    summarize_drift,
)
from flywheel.serving.logschema import log_dtypes

pytestmark = pytest.mark.unit

SHIFTED = ["amount", "log_amount", "amount_to_user_mean", "user_amount_mean_7d"]
PREDICTION = "probability"  # the binary task's score column in the log


@pytest.fixture(scope="module")
def spec() -> PipelineSpec:
    return load_spec_file(PROJECT_ROOT / "models" / "fraud.yaml")


def synthetic(rows: int, seed: int, *, shift: float = 1.0) -> pd.DataFrame:
    """Features shaped like the fraud model's; ``shift`` multiplies the SHIFTED columns."""
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, rows)
    user_mean = rng.lognormal(3.5, 0.5, rows)
    frame = pd.DataFrame(
        {
            "amount": amount,
            "log_amount": np.log1p(amount),
            "hour": rng.integers(0, 24, rows).astype(float),
            "is_foreign": (rng.random(rows) < 0.05).astype(float),
            "user_txn_count_7d": rng.poisson(5, rows).astype(float),
            "user_amount_mean_7d": user_mean,
            "merchant_txn_count_7d": rng.poisson(80, rows).astype(float),
            "merchant_amount_mean_7d": rng.lognormal(3.5, 0.3, rows),
            "amount_to_user_mean": amount / user_mean,
            PREDICTION: rng.beta(1, 40, rows),
        }
    )
    frame[SHIFTED] = frame[SHIFTED] * shift
    return frame


def drift_report(spec: PipelineSpec, reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, Any]:
    snapshot = build_drift_snapshot(
        reference,
        current,
        features=spec.monitoring.features,
        prediction=PREDICTION,
        drift_share_threshold=spec.monitoring.drift_share_threshold,
    )
    return snapshot.dict()


@pytest.fixture(scope="module")
def same(spec: PipelineSpec) -> dict[str, Any]:
    return drift_report(spec, synthetic(2000, seed=1), synthetic(2000, seed=2))


@pytest.fixture(scope="module")
def shifted(spec: PipelineSpec) -> dict[str, Any]:
    return drift_report(spec, synthetic(2000, seed=1), synthetic(2000, seed=3, shift=2.5))


def test_identical_distributions_show_no_drift(spec: PipelineSpec, same: dict[str, Any]) -> None:
    summary = summarize_drift(
        same, features=spec.monitoring.features, prediction=PREDICTION,
        drift_share_threshold=spec.monitoring.drift_share_threshold,
    )
    assert summary.drift_share == 0.0
    assert summary.drifted_columns == []
    assert not summary.drift_detected
    assert set(summary.column_scores) == set(spec.monitoring.features)
    assert not summary.prediction.drifted
    for drift in summary.column_scores.values():
        assert drift.score is not None and drift.score < drift.threshold  # distance methods
        assert drift.method in {"Wasserstein distance (normed)", "Jensen-Shannon distance"}


def test_shifted_amount_columns_are_flagged(spec: PipelineSpec, shifted: dict[str, Any]) -> None:
    summary = summarize_drift(
        shifted,
        features=spec.monitoring.features,
        prediction=PREDICTION,
        drift_share_threshold=spec.monitoring.drift_share_threshold,
    )
    assert sorted(summary.drifted_columns) == sorted(SHIFTED)
    assert summary.drift_share == pytest.approx(len(SHIFTED) / len(spec.monitoring.features))
    assert summary.drift_share >= spec.monitoring.drift_share_threshold
    assert summary.drift_detected
    for name in SHIFTED:
        drift = summary.column_scores[name]
        assert drift.drifted and drift.score is not None and drift.score >= drift.threshold
    assert not summary.column_scores["hour"].drifted
    # The prediction column is reported apart and never counted in the share.
    assert PREDICTION not in summary.column_scores
    assert summary.prediction.score is not None


def test_small_reference_uses_p_values_and_still_flags_the_shift(spec: PipelineSpec) -> None:
    """≤ 1000 reference rows: Evidently switches to p-value tests (drift when score is LOW)."""
    report = drift_report(spec, synthetic(800, seed=4), synthetic(600, seed=5, shift=2.5))
    summary = summarize_drift(
        report, features=spec.monitoring.features, prediction=PREDICTION,
        drift_share_threshold=spec.monitoring.drift_share_threshold,
    )
    assert set(SHIFTED) <= set(summary.drifted_columns)
    amount = summary.column_scores["amount"]
    assert amount.method == "K-S p_value"
    assert amount.score is not None and amount.score < amount.threshold
    assert summary.drift_detected


def test_a_report_contradicting_its_count_is_refused(spec: PipelineSpec, shifted: dict[str, Any]) -> None:
    tampered = copy.deepcopy(shifted)
    count = next(m for m in tampered["metrics"] if m["config"]["type"].endswith(":DriftedColumnsCount"))
    count["value"]["count"] = 0.0
    with pytest.raises(DriftReportError, match="drifted columns"):
        summarize_drift(tampered, features=spec.monitoring.features, prediction=PREDICTION,
                        drift_share_threshold=0.3)


def test_a_report_without_tests_is_refused(spec: PipelineSpec, same: dict[str, Any]) -> None:
    with pytest.raises(DriftReportError, match="no drift test"):
        summarize_drift({**same, "tests": []}, features=spec.monitoring.features, prediction=PREDICTION,
                        drift_share_threshold=0.3)


def test_missing_or_empty_columns_name_the_dataset_and_column() -> None:
    frame = synthetic(10, seed=6)
    with pytest.raises(DriftInputError, match=r"current: column 'nope': missing column"):
        comparable_frame(frame, ["amount", "nope"], dataset="current")
    frame["hour"] = np.nan
    with pytest.raises(DriftInputError, match=r"column 'hour': no non-null values"):
        comparable_frame(frame, ["amount", "hour"], dataset="current")


def test_result_to_dict_is_json_serializable() -> None:
    result = DriftResult(
        status="ok",
        model_name="m",
        ds=date(2024, 3, 1),
        window_days=1,
        reference_version="3",
        rows=500,
        reference_rows=2000,
        min_rows=200,
        threshold=0.3,
        drift_detected=True,
        html_uri="s3://b/k.html",
        json_uri="s3://b/k.json",
        drift_share=0.5,
        drifted_columns=["amount"],
        column_scores={
            "amount": ColumnDrift(
                score=0.8, method="Wasserstein distance (normed)", threshold=0.1, drifted=True
            )
        },
    )
    data = json.loads(json.dumps(result.to_dict()))
    assert data["ds"] == "2024-03-01"
    assert data["column_scores"]["amount"]["drifted"] is True


# ---- per task: the log schema decides what is compared -------------------------------------------


def as_task(spec: PipelineSpec, task: str) -> PipelineSpec:
    return spec.model_copy(update={"task": task})


def test_drift_compares_the_outputs_of_each_task(spec: PipelineSpec) -> None:
    binary = drift_columns(spec)
    assert (binary.prediction, binary.categorical) == ("probability", [])
    assert binary.features == spec.monitoring.features
    multiclass = drift_columns(as_task(spec, "multiclass"))
    assert (multiclass.prediction, multiclass.categorical) == ("probability", ["predicted_class"])
    regression = drift_columns(as_task(spec, "regression"))
    assert (regression.prediction, regression.categorical) == ("value", [])
    for task in ("binary", "multiclass", "regression"):
        assert set(drift_columns(as_task(spec, task)).all) <= set(log_dtypes(as_task(spec, task)))


def test_an_empty_log_has_the_use_cases_columns(spec: PipelineSpec) -> None:
    for task in ("binary", "regression"):
        typed = as_task(spec, task)
        empty = empty_predictions(typed)
        assert empty.empty and list(empty.columns) == list(log_dtypes(typed))
        assert {str(t) for t in empty.dtypes} >= {"float64", "object", "bool"}
    assert "value" in empty_predictions(as_task(spec, "regression")).columns
    assert "value" not in empty_predictions(spec).columns
    # the key and entity columns come from the spec, not from the engine
    assert set(spec.dataset.key_columns) <= set(empty_predictions(spec).columns)


def test_a_shifted_predicted_class_is_a_categorical_output_drift(spec: PipelineSpec) -> None:
    cols = drift_columns(as_task(spec, "multiclass"))
    rng = np.random.default_rng(9)

    def frame(rows: int, seed: int, share_a: float) -> pd.DataFrame:
        out = synthetic(rows, seed=seed)
        out["predicted_class"] = np.where(rng.random(rows) < share_a, "a", rng.choice(["b", "c"], rows))
        return comparable_frame(out, cols.all, dataset="t", categorical=cols.categorical)

    reference, current = frame(2000, 1, 0.2), frame(2000, 2, 0.8)
    assert current["predicted_class"].dtype == object
    report = build_drift_snapshot(reference, current, features=cols.features, prediction=cols.prediction,
                                  categorical=cols.categorical, drift_share_threshold=0.3).dict()
    summary = summarize_drift(report, features=cols.features, prediction=cols.prediction,
                              categorical=cols.categorical, drift_share_threshold=0.3)
    assert summary.outputs["predicted_class"].drifted and not summary.outputs["probability"].drifted
    assert summary.drift_share == 0.0  # outputs never count in the share
    assert "predicted_class" not in summary.column_scores
