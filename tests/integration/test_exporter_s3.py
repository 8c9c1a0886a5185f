"""The Prometheus exporter over HTTP against a real S3 API (a private SeaweedFS)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flywheel.core import storage
from flywheel.core.config import SECRETS_FILE, Settings
from flywheel.monitoring import exporter
from flywheel.stack import launcher as stack
from tests.integration.seaweed import free_ports, private_seaweedfs

pytestmark = pytest.mark.integration

Series = dict[str, dict[tuple[tuple[str, str], ...], float]]


USE_CASES = {"fraud-detector": "fraud", "churn": "churn", "new-model": "new"}


def labels(model: str, **more: str) -> tuple[tuple[str, str], ...]:
    """A series' labels: the model, its use case and ``more``."""
    return tuple(sorted({"model": model, "use_case": USE_CASES[model], **more}.items()))


def summary(model: str, ds: str, *, drift_share: float, alert: bool) -> dict[str, Any]:
    return {
        "model": model, "use_case": USE_CASES[model], "task": "binary", "ds": ds, "champion_version": "4", "generated_at": f"{ds}T09:00:00+00:00",
        "drift": {"status": "ok", "rows": 2400, "drift_share": drift_share, "drift_detected": drift_share > 0.3,
                  "prediction_drift_score": 0.02, "column_scores": {"amount": 0.03}},
        "performance": None,
        "skew": {"status": "ok", "rows": 500, "mismatch_share": {"amount": 0.0, "hour": 0.04},
                 "max_mismatch_share": 0.04, "alert": alert},
        "decision": {"action": "retrain" if alert else "no_signal", "fired": ["skew"] if alert else []},
    }  # fmt: skip


def put_json(settings: Settings, key: str, body: Any) -> None:
    storage.put_bytes("reports", key, json.dumps(body).encode(), content_type="application/json",
                      settings=settings)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with private_seaweedfs(tmp_path_factory.mktemp("exporter-s3"), bucket_prefix="exp") as conf:
        for model, share, alert in (("fraud-detector", 0.11, False), ("churn", 0.45, True)):
            body = summary(model, "2026-01-20", drift_share=share, alert=alert)
            put_json(conf, f"monitoring/{model}/ds=2026-01-20/summary.json", body)
            put_json(conf, f"monitoring/{model}/latest.json", body)
        # A model whose first run has not finished: a partition but no latest.json yet.
        put_json(conf, "monitoring/new-model/ds=2026-01-20/summary.json", summary(
            "new-model", "2026-01-20", drift_share=0.9, alert=True))
        yield conf


def scrape(url: str) -> Series:
    response = httpx.get(url, timeout=15)
    assert response.status_code == 200
    series: Series = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            series.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return series


@pytest.fixture()
def served(settings: Settings) -> Iterator[str]:
    server, thread = exporter.start(settings, host="127.0.0.1", port=0, cache_s=0)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_two_models_are_scraped_over_http(served: str) -> None:
    series = scrape(served)
    assert series["flywheel_monitoring_up"] == {(): 1.0}
    assert series["flywheel_monitoring_models"] == {(): 2.0}
    assert series["flywheel_monitoring_drift_drift_share"] == {
        labels("churn"): 0.45, labels("fraud-detector"): 0.11}
    assert series["flywheel_monitoring_skew_mismatch_share"][labels("churn", feature="hour")] == 0.04
    assert series["flywheel_monitoring_alert"] == {
        labels("churn", check="skew"): 1.0, labels("fraud-detector", check="skew"): 0.0}
    assert series["flywheel_monitoring_decision"] == {
        labels("churn", action="retrain"): 1.0, labels("fraud-detector", action="no_signal"): 1.0}
    assert series["flywheel_champion_version"][labels("churn")] == 4.0
    assert not [name for name in series if "performance" in name]
    assert all(dict(names).get("model") != "new-model" for values in series.values() for names in values)


def test_a_new_latest_json_shows_on_the_next_scrape(settings: Settings, served: str) -> None:
    put_json(settings, "monitoring/fraud-detector/latest.json",
             summary("fraud-detector", "2026-01-21", drift_share=0.2, alert=False))
    try:
        series = scrape(served)
        assert series["flywheel_monitoring_drift_drift_share"][labels("fraud-detector")] == 0.2
        assert series["flywheel_monitoring_last_ds_timestamp_seconds"][labels("fraud-detector")] == (
            1768953600.0)  # 2026-01-21T00:00Z
    finally:
        put_json(settings, "monitoring/fraud-detector/latest.json",
                 summary("fraud-detector", "2026-01-20", drift_share=0.11, alert=False))


def test_a_corrupt_summary_is_counted_and_the_others_still_exported(settings: Settings, served: str) -> None:
    storage.put_bytes("reports", "monitoring/broken/latest.json", b"{not json", settings=settings)
    try:
        series = scrape(served)
    finally:
        storage.s3_client(settings).delete_object(Bucket=settings.bucket("reports"),
                                                  Key="monitoring/broken/latest.json")
    assert series["flywheel_monitoring_up"] == {(): 0.0}
    assert series["flywheel_monitoring_scrape_errors_total"][(("stage", "parse"),)] == 1.0
    assert series["flywheel_monitoring_models"] == {(): 2.0}
    assert scrape(served)["flywheel_monitoring_up"] == {(): 1.0}


def test_an_unreachable_store_is_up_0_not_a_failed_scrape(tmp_path: Path, caplog) -> None:
    (port,) = free_ports(1)  # nothing listens there
    secret = "s3cr3t-never-logged-0123456789"
    dead = Settings(home=tmp_path, s3_endpoint_url=f"http://127.0.0.1:{port}", s3_access_key="exporter-key",
                    s3_secret_key=secret, bucket_prefix="exp")
    server, thread = exporter.start(dead, host="127.0.0.1", port=0, cache_s=0)
    try:
        with caplog.at_level("WARNING", logger="flywheel.monitoring.exporter"):
            series = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert series["flywheel_monitoring_up"] == {(): 0.0}
    assert series["flywheel_monitoring_scrape_errors_total"][(("stage", "list"),)] == 1.0
    assert "cannot list s3://exp-reports/monitoring/" in caplog.text
    assert secret not in caplog.text and "exporter-key" not in caplog.text


def test_the_stack_service_serves_the_metrics(settings: Settings, tmp_path: Path) -> None:
    """The embedded stack's exporter service: its command, environment (secrets through
    <home>/secrets.json, as `flywheel up` writes them) and health check."""
    (port,) = free_ports(1)
    home = tmp_path / "home"
    home.mkdir()
    keys = {"s3_access_key": settings.s3_access_key, "s3_secret_key": settings.s3_secret_key}
    (home / SECRETS_FILE).write_text(json.dumps({k: v.get_secret_value() for k, v in keys.items() if v}))
    os.chmod(home / SECRETS_FILE, 0o600)
    native = Settings(home=home, s3_endpoint_url=settings.s3_endpoint_url, bucket_prefix="exp",
                      ports=settings.ports.model_copy(update={"exporter": port}))
    service = stack.get_service("exporter")
    env = service.env(native)
    secret = keys["s3_secret_key"]
    assert secret is not None and secret.get_secret_value() not in " ".join(service.command(native))  # not in ps
    log = (tmp_path / "exporter.log").open("wb")
    process = subprocess.Popen(service.command(native), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    try:
        deadline = time.monotonic() + 60
        while not service.health(native):
            assert process.poll() is None, (tmp_path / "exporter.log").read_text()
            assert time.monotonic() < deadline, "exporter not healthy in 60 s"
            time.sleep(0.3)
        series = scrape(str(service.url(native)))
        assert series["flywheel_monitoring_up"] == {(): 1.0}
        assert series["flywheel_monitoring_drift_drift_share"][labels("churn")] == 0.45
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()
