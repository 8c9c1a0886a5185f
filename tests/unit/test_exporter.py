"""The Prometheus exporter's flattening, naming, caching and failure handling (no store)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from typer.testing import CliRunner

from flywheel.core.config import Ports, Settings
from flywheel.monitoring import exporter
from flywheel.monitoring.exporter import MonitoringCollector, StoreRead, metric_name, summary_samples
from flywheel.stack import launcher as stack
from tests.ports import OFFSET, ports

pytestmark = pytest.mark.unit

VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
SUMMARY: dict[str, Any] = {
    "model": "fraud-detector", "use_case": "fraud", "task": "binary", "ds": "2026-01-20", "champion_version": "2",
    "generated_at": "2026-11-26T09:00:00+00:00",
    "drift": {"status": "ok", "rows": 2400, "drift_share": 0.11, "drift_detected": False,
              "prediction_drift_score": 0.02, "column_scores": {"amount": 0.03, "hour": 0.01}},
    "performance": {"status": "ok", "labelled_rows": 2100, "positives": 30, "pr_auc": 0.41,
                    "recall_at_precision": 0.3, "expected_cost": 0.7, "reference_pr_auc": 0.42,
                    "pr_auc_drop": 0.01, "label_rate": 0.015, "alert": False,
                    "metric": "pr_auc", "metric_value": 0.41, "reference_metric_value": 0.42, "metric_drop": 0.01},
    "skew": {"status": "ok", "rows": 500, "mismatch_share": {"amount": 0.0, "user_txn_count_7d": 0.02},
             "max_mismatch_share": 0.02, "alert": False},
    "quality": {"status": "ok", "rows": 2400, "feature_miss_rate": 0.01, "missing_rate": {"amount": 0.0},
                "out_of_range_rate": {"amount": 0.001}, "alert": False},
    "freshness": {"status": "ok", "online_age_hours": 20.5, "model_age_days": 6, "alert": True},
    "decision": {"action": "retrain", "fired": ["freshness"]},
}  # fmt: skip


def scrape(collector: MonitoringCollector) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """The collector's exposition, parsed back as Prometheus reads it: name → labels → value."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    series: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        assert VALID_NAME.match(family.name), family.name
        assert family.documentation, f"{family.name} has no HELP"
        for sample in family.samples:
            series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return series


def of(summaries: dict[str, dict[str, Any]], errors: tuple[str, ...] = ()) -> MonitoringCollector:
    return MonitoringCollector(lambda: StoreRead(summaries, errors), cache_s=0)


USE_CASES = {"fraud-detector": "fraud", "churn": "churn"}


def model(name: str = "fraud-detector", **labels: str) -> tuple[tuple[str, str], ...]:
    """Labels of a series: the model, its use case (the model's name for summaries without one)."""
    return tuple(sorted({"model": name, "use_case": USE_CASES.get(name, name), **labels}.items()))


def test_contract_summary_becomes_named_gauges() -> None:
    series = scrape(of({"fraud-detector": SUMMARY}))
    m = model()
    assert series["flywheel_monitoring_drift_drift_share"] == {m: 0.11}
    assert series["flywheel_monitoring_drift_drift_detected"] == {m: 0.0}
    assert series["flywheel_monitoring_performance_pr_auc"] == {m: 0.41}
    assert series["flywheel_monitoring_performance_pr_auc_drop"] == {m: 0.01}
    assert series["flywheel_monitoring_skew_max_mismatch_share"] == {m: 0.02}
    assert series["flywheel_monitoring_quality_feature_miss_rate"] == {m: 0.01}
    assert series["flywheel_monitoring_freshness_online_age_hours"] == {m: 20.5}
    assert series["flywheel_monitoring_skew_mismatch_share"] == {
        model(feature="amount"): 0.0, model(feature="user_txn_count_7d"): 0.02}
    assert series["flywheel_monitoring_drift_column_scores"][model(feature="hour")] == 0.01
    assert series["flywheel_monitoring_last_ds_timestamp_seconds"] == {m: 1768867200.0}  # 2026-01-20Z
    assert series["flywheel_champion_version"] == {m: 2.0}
    assert series["flywheel_monitoring_alert"] == {
        model(check="performance"): 0.0, model(check="skew"): 0.0, model(check="quality"): 0.0,
        model(check="freshness"): 1.0}
    assert series["flywheel_monitoring_decision"] == {model(action="retrain"): 1.0}
    assert series["flywheel_monitoring_decision_fired"] == {model(signal="freshness"): 1.0}
    assert series["flywheel_monitoring_check_status"][model(check="drift", status="ok")] == 1.0
    assert series["flywheel_monitoring_up"] == {(): 1.0}
    assert series["flywheel_monitoring_models"] == {(): 1.0}
    # The task's metric whatever its name, and the use case's task.
    assert series["flywheel_monitoring_performance_metric"] == {model(metric="pr_auc"): 0.41}
    assert series["flywheel_monitoring_performance_metric_drop"] == {m: 0.01}
    assert series["flywheel_monitoring_use_case_info"] == {model(task="binary"): 1.0}
    # Strings are not values; "alert" is exported once, as flywheel_monitoring_alert.
    generic = {f"flywheel_monitoring_{section}_{key}" for section in SUMMARY for key in ("status", "alert")}
    assert not generic & set(series) and "flywheel_monitoring_model" not in series


def test_missing_and_null_sections_export_nothing_for_them() -> None:
    partial = {"model": "fraud-detector", "use_case": "fraud", "ds": "2026-01-21", "drift": SUMMARY["drift"],
               "performance": None, "decision": None}
    series = scrape(of({"fraud-detector": partial}))
    assert series["flywheel_monitoring_drift_drift_share"] == {model(): 0.11}
    assert not [name for name in series if "performance" in name or "skew" in name or "decision" in name]
    assert "flywheel_monitoring_alert" not in series and "flywheel_champion_version" not in series
    assert series["flywheel_monitoring_up"] == {(): 1.0}


def test_null_and_non_finite_leaves_are_skipped() -> None:
    summary = {"drift": {"status": "insufficient_data", "rows": 12, "drift_share": None,
                         "prediction_drift_score": float("nan"), "column_scores": {}}}
    series = scrape(of({"m": summary}))
    assert series["flywheel_monitoring_drift_rows"] == {model("m"): 12.0}
    assert "flywheel_monitoring_drift_drift_share" not in series
    assert "flywheel_monitoring_drift_prediction_drift_score" not in series
    assert series["flywheel_monitoring_check_status"] == {model("m", check="drift", status="insufficient_data"): 1}


def test_a_new_key_or_section_is_exported_without_a_code_change() -> None:
    summary = copy.deepcopy(SUMMARY)
    summary["drift"]["psi_max"] = 0.31
    summary["drift"]["column_scores"] = {"amount": {"score": 0.4, "drifted": True, "method": "wasserstein"}}
    summary["fairness"] = {"gap": 0.05, "by_segment": {"new users": 0.07}, "note": "text is skipped",
                           "groups": ["a", "b"], "alert": True}
    series = scrape(of({"fraud-detector": summary}))
    assert series["flywheel_monitoring_drift_psi_max"] == {model(): 0.31}
    assert series["flywheel_monitoring_drift_column_scores_score"] == {model(feature="amount"): 0.4}
    assert series["flywheel_monitoring_drift_column_scores_drifted"] == {model(feature="amount"): 1.0}
    assert series["flywheel_monitoring_fairness_gap"] == {model(): 0.05}
    assert series["flywheel_monitoring_fairness_by_segment"] == {model(feature="new users"): 0.07}
    assert series["flywheel_monitoring_alert"][model(check="fairness")] == 1.0
    assert not [name for name in series if "note" in name or "groups" in name]


def test_names_are_sanitized_and_collisions_keep_one_series() -> None:
    assert metric_name("flywheel_monitoring", "Drift", "p95 latency (ms)") == "flywheel_monitoring_drift_p95_latency_ms"
    assert metric_name("9lives") == "_9lives"
    summary = {"my-check": {"pr-auc": 0.5, "pr_auc": 0.7, "ünï/côde": 1}, "x": {"up": 3}}
    series = scrape(of({"m": summary}))
    assert series["flywheel_monitoring_my_check_pr_auc"] == {model("m"): 0.5}  # first one wins
    assert all(VALID_NAME.match(name) for name in series)
    assert series["flywheel_monitoring_x_up"] == {model("m"): 3.0}


def test_two_models_share_one_family_per_metric() -> None:
    other = copy.deepcopy(SUMMARY) | {"model": "churn", "use_case": "churn", "task": "regression",
                                      "champion_version": "7"}
    other["drift"]["drift_share"] = 0.5
    other["performance"] |= {"metric": "rmse", "metric_value": 3.5}
    series = scrape(of({"fraud-detector": SUMMARY, "churn": other}))
    assert series["flywheel_monitoring_drift_drift_share"] == {model(): 0.11, model("churn"): 0.5}
    assert series["flywheel_champion_version"] == {model(): 2.0, model("churn"): 7.0}
    assert series["flywheel_monitoring_performance_metric"] == {model(metric="pr_auc"): 0.41,
                                                                model("churn", metric="rmse"): 3.5}
    assert series["flywheel_monitoring_use_case_info"] == {model(task="binary"): 1.0,
                                                           model("churn", task="regression"): 1.0}
    assert series["flywheel_monitoring_models"] == {(): 2.0}


def test_non_numeric_champion_and_bad_dates_are_skipped() -> None:
    samples = summary_samples("m", {"champion_version": "abc", "ds": "yesterday", "generated_at": 5})
    assert samples == []


def test_reads_are_cached_for_cache_s() -> None:
    now, reads = [0.0], []

    def read() -> StoreRead:
        reads.append(now[0])
        return StoreRead({"m": {"drift": {"drift_share": len(reads) / 10}}})

    collector = MonitoringCollector(read, cache_s=10, clock=lambda: now[0])
    assert scrape(collector)["flywheel_monitoring_drift_drift_share"] == {model("m"): 0.1}
    now[0] = 9.9
    assert scrape(collector)["flywheel_monitoring_drift_drift_share"] == {model("m"): 0.1}
    now[0] = 10.0
    assert scrape(collector)["flywheel_monitoring_drift_drift_share"] == {model("m"): 0.2}
    assert reads == [0.0, 10.0]


def test_a_failed_read_is_up_0_and_counted_once_per_read() -> None:
    now = [0.0]
    collector = MonitoringCollector(lambda: StoreRead(errors=("list",)), cache_s=5, clock=lambda: now[0])
    for _ in range(3):  # cached: one failed read
        series = scrape(collector)
    assert series["flywheel_monitoring_up"] == {(): 0.0}
    assert series["flywheel_monitoring_scrape_errors_total"][(("stage", "list"),)] == 1.0
    now[0] = 5.0
    series = scrape(collector)
    assert series["flywheel_monitoring_scrape_errors_total"][(("stage", "list"),)] == 2.0
    assert series["flywheel_monitoring_scrape_errors_total"][(("stage", "parse"),)] == 0.0


def test_a_partial_read_exports_what_was_read_and_is_not_up() -> None:
    series = scrape(of({"fraud-detector": SUMMARY}, errors=("parse",)))
    assert series["flywheel_monitoring_up"] == {(): 0.0}
    assert series["flywheel_monitoring_drift_drift_share"] == {model(): 0.11}


def test_store_without_credentials_is_up_0_not_an_exception(tmp_path, caplog) -> None:
    settings = Settings(home=tmp_path, s3_endpoint_url="http://127.0.0.1:9")  # no keys anywhere
    collector = MonitoringCollector(exporter.SummaryStore(settings).read, cache_s=0)
    with caplog.at_level("WARNING", logger="flywheel.monitoring.exporter"):
        series = scrape(collector)
    assert series["flywheel_monitoring_up"] == {(): 0.0}
    assert "no S3 credentials" in caplog.text


def test_exporter_is_an_optional_stack_service_on_its_own_port(tmp_path) -> None:
    settings = Settings(home=tmp_path, ports=ports(24000))
    service = stack.get_service("exporter")
    assert service.optional and "exporter" not in stack._default_services(None)
    assert service.requires == ("seaweedfs",)
    assert service.ports(settings) == (settings.ports.exporter,) == (24700 + OFFSET,)
    argv = service.command(settings)
    assert argv[1:] == ["exporter", "--host", "127.0.0.1", "--port", str(settings.ports.exporter)]
    assert service.url(settings) == f"http://127.0.0.1:{settings.ports.exporter}/metrics"
    defaults = Ports().model_dump()
    assert len(set(defaults.values())) == len(defaults)  # the new default clashes with no other port


def test_cli_help_names_the_metrics_and_the_defaults() -> None:
    from flywheel.cli import app

    result = CliRunner().invoke(app, ["exporter", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "/metrics" in result.output and "flywheel_monitoring_up 0" in result.output
    assert "--cache-seconds" in result.output and "--port" in result.output
