"""Prometheus export of the daily monitoring summaries (for Grafana and alerting).

Every monitoring run writes ``s3://<reports>/monitoring/<model>/latest.json`` (see
``flywheel/monitoring/checks.py``, ``write_summary``). On each scrape the exporter reads the ``latest.json`` of
every model under ``monitoring/`` and turns it into gauges. The read is reused for
``cache_s`` seconds, so frequent scrapes (several Prometheus replicas, Grafana's
"explore") cost one S3 listing per interval, not one per scrape.

Flattening is generic, so a key the producer adds later shows up without a change here:

Every series carries the labels ``model`` and ``use_case`` (the summary's ``use_case``; the
model's name for summaries written before use cases had names), so several use cases share
one exporter and one dashboard.

* a numeric or boolean leaf ``<section>.<key>`` becomes
  ``flywheel_monitoring_<section>_<key>{model, use_case}`` (booleans 0/1);
* a mapping of numbers (``skew.mismatch_share``) becomes one gauge with a ``feature``
  label; a mapping of mappings (``{"amount": {"score": 0.1}}``) one gauge per inner key,
  ``..._<key>_<inner>{model, feature}``;
* strings, lists and ``null`` are skipped, except the fields below.

Fixed metrics: ``flywheel_monitoring_last_ds_timestamp_seconds``,
``flywheel_monitoring_generated_timestamp_seconds``, ``flywheel_champion_version``,
``flywheel_monitoring_use_case_info{task}`` (1),
``flywheel_monitoring_alert{check}`` (each section's ``alert``),
``flywheel_monitoring_check_status{check, status}`` (each section's ``status``),
``flywheel_monitoring_performance_metric{metric}`` (the task's monitored metric, whatever its
name: PR-AUC, macro-F1, RMSE, ...),
``flywheel_monitoring_decision{action}`` and ``flywheel_monitoring_decision_fired{signal}``.
A store that cannot be read is not an error of the scrape: ``flywheel_monitoring_up``
drops to 0 and ``flywheel_monitoring_scrape_errors_total`` counts it (also logged).
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from flywheel.core.config import Settings
from flywheel.core.layout import LATEST, SUMMARY_PREFIX, summary_prefix

if TYPE_CHECKING:
    from threading import Thread
    from wsgiref.simple_server import WSGIServer

    from flywheel.core.storage import S3Client

log = logging.getLogger(__name__)

NAMESPACE = "flywheel_monitoring"
# A scrape must answer inside Prometheus' scrape_timeout (10 s by default).
S3_CONNECT_TIMEOUT_S = 2.0
S3_READ_TIMEOUT_S = 5.0

# Section keys exported by a fixed metric instead of the generic one.
_SECTION_FIXED = {"alert", "status"}
_INVALID = re.compile(r"[^a-zA-Z0-9_]+")
_HELP = {
    "drift_drift_share": "Share of the monitored features whose distribution drifted (latest day)",
    "drift_prediction_drift_score": "Drift score of the model output against the training reference",
    "drift_column_scores": "Drift score of each feature against the training reference",
    "performance_pr_auc": "PR-AUC of the champion on the labelled predictions of the window",
    "performance_reference_pr_auc": "PR-AUC of the champion on its training holdout",
    "performance_pr_auc_drop": "PR-AUC drop: reference minus live",
    "performance_metric_value": "The monitored metric of the champion on the labelled predictions of the window",
    "performance_reference_metric_value": "The monitored metric of the champion on its training holdout",
    "performance_metric_drop": "How much worse the live metric is than the holdout (in its direction)",
    "performance_label_rate": "Share of positive labels among the labelled predictions (binary)",
    "performance_label_coverage": "Share of the champion's predictions of the window that have a label",
    "skew_mismatch_share": "Share of rows whose online feature differs from the offline recomputation",
    "skew_max_mismatch_share": "Largest online/offline mismatch share over the features",
    "quality_feature_miss_rate": "Share of requests served with a missing online feature",
    "freshness_online_age_hours": "Age of the newest online feature values, in hours",
    "freshness_model_age_days": "Age of the champion model, in days",
}


class ExporterError(RuntimeError):
    """The exporter could not start (e.g. its port is taken)."""


def latest_key(model: str) -> str:
    """Key of a model's newest summary in the reports bucket."""
    return summary_prefix(model) + LATEST


def metric_name(*parts: str) -> str:
    """A valid Prometheus metric name from free-form parts (``[a-zA-Z_:][a-zA-Z0-9_:]*``)."""
    name = "_".join(p for p in (_INVALID.sub("_", part).strip("_").lower() for part in parts) if p)
    return f"_{name}" if name[:1].isdigit() else name


# ---- flattening: summary → samples -------------------------------------------------------

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Sample:
    """One exported value: metric name, HELP text, labels."""

    name: str
    help: str
    labels: Labels
    value: float


def _number(value: Any) -> float | None:
    """The value as a gauge reading: booleans 0/1, finite numbers as they are, else None."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _timestamp(value: Any) -> float | None:
    """Seconds since the epoch of a ``YYYY-MM-DD`` (midnight UTC) or an ISO timestamp."""
    if not isinstance(value, str):
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), datetime.min.time(), UTC).timestamp()
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def base_labels(model: str, summary: Mapping[str, Any]) -> Labels:
    """The labels of every series of one summary: the model and its use case."""
    use_case = summary.get("use_case")
    return (("model", model), ("use_case", use_case if isinstance(use_case, str) and use_case else model))


def _fixed_samples(labels: Labels, summary: Mapping[str, Any]) -> Iterator[Sample]:
    task = summary.get("task")
    if isinstance(task, str) and task:
        yield Sample(f"{NAMESPACE}_use_case_info", "1 for each use case exported, labelled with its task",
                     labels + (("task", task),), 1.0)
    readings = (
        (f"{NAMESPACE}_last_ds_timestamp_seconds", "Logical date (ds, midnight UTC) of the newest summary",
         _timestamp(summary.get("ds"))),
        (f"{NAMESPACE}_generated_timestamp_seconds", "When the newest summary was written",
         _timestamp(summary.get("generated_at"))),
        ("flywheel_champion_version", "Registered version of the champion the summary monitored",
         _version(summary.get("champion_version"))),
    )  # fmt: skip
    for name, text, value in readings:
        if value is not None:
            yield Sample(name, text, labels, value)


def _version(value: Any) -> float | None:
    try:
        return _number(float(value)) if value is not None and not isinstance(value, bool) else None
    except (TypeError, ValueError):
        return None


def _section_samples(labels: Labels, section: str, body: Mapping[str, Any]) -> Iterator[Sample]:
    alert, status = body.get("alert"), body.get("status")
    if isinstance(alert, bool):
        yield Sample(f"{NAMESPACE}_alert", "1 while a check's alert is raised (0 when it ran and is quiet)",
                     labels + (("check", section),), float(alert))
    if isinstance(status, str):
        yield Sample(f"{NAMESPACE}_check_status", "1 for the status of each check of the latest day",
                     labels + (("check", section), ("status", status)), 1.0)
    for key, value in body.items():
        if key in _SECTION_FIXED:
            continue
        name = metric_name(NAMESPACE, section, key)
        number = _number(value)
        if number is not None:
            yield Sample(name, _help(name, f"{section}.{key}"), labels, number)
        elif isinstance(value, Mapping):
            yield from _per_feature(labels, name, f"{section}.{key}", value)
    metric, value = body.get("metric"), _number(body.get("metric_value"))
    if section == "performance" and isinstance(metric, str) and value is not None:
        yield Sample(f"{NAMESPACE}_performance_metric", "The task's monitored metric on the window's labelled "
                     "predictions, named by the metric label", labels + (("metric", metric),), value)


def _per_feature(base: Labels, name: str, path: str, values: Mapping[str, Any]) -> Iterator[Sample]:
    for feature, value in values.items():
        labels = base + (("feature", str(feature)),)
        number = _number(value)
        if number is not None:
            yield Sample(name, _help(name, path, per_feature=True), labels, number)
        elif isinstance(value, Mapping):
            for inner, inner_value in value.items():
                inner_number = _number(inner_value)
                if inner_number is not None:
                    inner_name = metric_name(name, str(inner))
                    yield Sample(inner_name, _help(inner_name, f"{path}.<feature>.{inner}", per_feature=True),
                                 labels, inner_number)


def _help(name: str, path: str, *, per_feature: bool = False) -> str:
    known = _HELP.get(name.removeprefix(f"{NAMESPACE}_"))
    return known or f"Monitoring summary field {path}{', per feature' if per_feature else ''} (latest day)"


def _decision_samples(labels: Labels, decision: Mapping[str, Any]) -> Iterator[Sample]:
    action, fired = decision.get("action"), decision.get("fired")
    if isinstance(action, str) and action:
        yield Sample(f"{NAMESPACE}_decision", "1 for the retraining policy's latest action",
                     labels + (("action", action),), 1.0)
    for fired_signal in fired if isinstance(fired, list) else []:
        yield Sample(f"{NAMESPACE}_decision_fired", "1 for each signal that fired in the latest decision",
                     labels + (("signal", str(fired_signal)),), 1.0)


def summary_samples(model: str, summary: Mapping[str, Any]) -> list[Sample]:
    """Every sample of one model's summary; missing or ``null`` sections give none."""
    labels = base_labels(model, summary)
    samples = list(_fixed_samples(labels, summary))
    for section, body in summary.items():
        if isinstance(body, Mapping):
            samples.extend(_section_samples(labels, str(section), body))
    decision = summary.get("decision")
    if isinstance(decision, Mapping):
        samples.extend(_decision_samples(labels, decision))
    return samples


# ---- reading the store -------------------------------------------------------------------


@dataclass(frozen=True)
class StoreRead:
    """One read of the reports bucket: each model's latest summary and what failed."""

    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "list" (the bucket could not be listed) or "read" / "parse" (one model's latest.json).
    errors: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors


class SummaryStore:
    """Reads ``monitoring/<model>/latest.json`` of every model from the reports bucket."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._bucket = settings.bucket("reports")
        self._client: S3Client | None = None

    def read(self) -> StoreRead:
        """Never raises for an unreachable or inconsistent store: failures are in ``errors``."""
        from botocore.exceptions import BotoCoreError, ClientError

        from flywheel.core.storage import StorageError

        started = time.monotonic()
        try:
            models = self._models()
        except (BotoCoreError, ClientError, StorageError) as exc:
            self._warn(f"cannot list s3://{self._bucket}/{SUMMARY_PREFIX}", exc)
            return StoreRead(errors=("list",), seconds=time.monotonic() - started)
        summaries, errors = {}, []
        for model in models:
            try:
                summary = self._summary(model)
            except (BotoCoreError, ClientError) as exc:
                self._warn(f"cannot read s3://{self._bucket}/{latest_key(model)}", exc)
                errors.append("read")
                continue
            except ValueError as exc:
                self._warn(f"s3://{self._bucket}/{latest_key(model)} is not a JSON object", exc)
                errors.append("parse")
                continue
            if summary is not None:
                summaries[model] = summary
        return StoreRead(summaries, tuple(errors), time.monotonic() - started)

    def _s3(self) -> S3Client:
        if self._client is None:
            from flywheel.core.storage import s3_client

            self._client = s3_client(self._settings, max_attempts=1, connect_timeout=S3_CONNECT_TIMEOUT_S,
                                     read_timeout=S3_READ_TIMEOUT_S)
        return self._client

    def _models(self) -> list[str]:
        pages = self._s3().get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=SUMMARY_PREFIX, Delimiter="/"
        )
        prefixes = (p["Prefix"] for page in pages for p in page.get("CommonPrefixes", []))
        return sorted(prefix[len(SUMMARY_PREFIX):].rstrip("/") for prefix in prefixes)

    def _summary(self, model: str) -> dict[str, Any] | None:
        """The parsed latest.json, or None when the model has none yet; ValueError if not an object."""
        from botocore.exceptions import ClientError

        try:
            body = self._s3().get_object(Bucket=self._bucket, Key=latest_key(model))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return None
            raise
        summary = json.loads(body)
        if not isinstance(summary, dict):
            raise ValueError(f"expected a JSON object, found {type(summary).__name__}")
        return summary

    @staticmethod
    def _warn(what: str, exc: Exception) -> None:
        from flywheel.core.profiles import redact

        # botocore messages name the endpoint and operation, never the keys; redact()
        # still masks a password someone put into the endpoint URL.
        log.warning("monitoring export: %s: %s: %s", what, type(exc).__name__, redact(str(exc)))


# ---- the collector -----------------------------------------------------------------------


class MonitoringCollector(Collector):
    """A prometheus_client collector over a store read, cached for ``cache_s`` seconds."""

    def __init__(
        self,
        read: Callable[[], StoreRead],
        *,
        cache_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self._cache_s, self._clock = read, cache_s, clock
        self._lock = threading.Lock()
        self._cached: StoreRead | None = None
        self._read_at = -math.inf
        self._errors: dict[str, int] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # no read at registration time

    def collect(self) -> Iterable[Metric]:
        current = self._current()
        yield from families(sample for model, summary in current.summaries.items()
                            for sample in summary_samples(model, summary))
        yield from self._own_metrics(current)

    def _current(self) -> StoreRead:
        with self._lock:  # concurrent scrapes share one read
            if self._cached is None or self._clock() - self._read_at >= self._cache_s:
                self._cached = self._read()
                self._read_at = self._clock()
                for stage in self._cached.errors:
                    self._errors[stage] = self._errors.get(stage, 0) + 1
            return self._cached

    def _own_metrics(self, current: StoreRead) -> Iterator[Metric]:
        up = Metric(f"{NAMESPACE}_up", "1 when every monitoring summary could be read, else 0", "gauge")
        up.add_sample(f"{NAMESPACE}_up", {}, float(current.ok))
        models = Metric(f"{NAMESPACE}_models", "Models whose latest summary is exported", "gauge")
        models.add_sample(f"{NAMESPACE}_models", {}, float(len(current.summaries)))
        seconds = Metric(f"{NAMESPACE}_read_duration_seconds", "Time the last read of the store took", "gauge")
        seconds.add_sample(f"{NAMESPACE}_read_duration_seconds", {}, current.seconds)
        errors = Metric(f"{NAMESPACE}_scrape_errors", "Failed reads of the store since start, by stage",
                        "counter")
        for stage in ("list", "read", "parse"):
            count = float(self._errors.get(stage, 0))
            errors.add_sample(f"{NAMESPACE}_scrape_errors_total", {"stage": stage}, count)
        yield from (up, models, seconds, errors)


_RESERVED = {f"{NAMESPACE}_{name}" for name in ("up", "models", "read_duration_seconds", "scrape_errors",
                                                "scrape_errors_total")}


def families(samples: Iterable[Sample]) -> list[Metric]:
    """Gauge families from samples: one per name, the first value of a repeated series wins."""
    by_name: dict[str, Metric] = {}
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    for sample in samples:
        if sample.name in _RESERVED or (sample.name, sample.labels) in seen:
            log.debug("monitoring export: skipped duplicate series %s%s", sample.name, dict(sample.labels))
            continue
        seen.add((sample.name, sample.labels))
        metric = by_name.setdefault(sample.name, Metric(sample.name, sample.help, "gauge"))
        metric.add_sample(sample.name, dict(sample.labels), sample.value)
    return list(by_name.values())


# ---- serving -----------------------------------------------------------------------------


def registry_for(settings: Settings, *, cache_s: float | None = None) -> CollectorRegistry:
    """A registry holding only the monitoring collector over the settings' reports bucket."""
    registry = CollectorRegistry(auto_describe=False)
    cache = settings.exporter_cache_s if cache_s is None else cache_s
    registry.register(MonitoringCollector(SummaryStore(settings).read, cache_s=cache))
    return registry


def start(
    settings: Settings, *, host: str | None = None, port: int | None = None, cache_s: float | None = None
) -> tuple[WSGIServer, Thread]:
    """Serve ``/metrics`` in a daemon thread (port 0: any free port, see ``server.server_port``).

    Binds ``settings.host`` and ``settings.ports.exporter`` unless told otherwise.
    Raises :class:`ExporterError` when the address cannot be bound.
    """
    from prometheus_client import start_http_server

    host = settings.host if host is None else host
    port = settings.ports.exporter if port is None else port
    try:
        return start_http_server(port, addr=host, registry=registry_for(settings, cache_s=cache_s))
    except OSError as exc:
        raise ExporterError(f"cannot serve the exporter on {host}:{port}: {exc}") from exc


def serve(
    settings: Settings, *, host: str | None = None, port: int | None = None, cache_s: float | None = None
) -> None:
    """Serve ``/metrics`` in the foreground until SIGINT or SIGTERM (the ``flywheel exporter`` command).

    The listening socket is closed before the process exits, so a restart (``flywheel down``
    then ``up``) finds the port free at once.
    """
    server, thread = start(settings, host=host, port=port, cache_s=cache_s)
    log.info("monitoring exporter on http://%s:%s/metrics (bucket %s)", server.server_address[0],
             server.server_port, settings.bucket("reports"))
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        thread.join()
    except KeyboardInterrupt:
        log.info("monitoring exporter stopping")
    finally:
        server.shutdown()
        server.server_close()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    # Without a handler SIGTERM ends the process at once, and the socket can outlive the
    # main thread for a moment while the server thread is torn down.
    raise KeyboardInterrupt
