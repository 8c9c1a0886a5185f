"""Daily monitoring checks beyond feature drift, and the day's monitoring summary.

* **performance**: the champion's logged predictions of the trailing window joined, on the
  transaction id, to the delayed labels that have arrived by ``ds`` (the label feed is a
  dataset of its own, ingested and validated like any other); PR-AUC, recall at the
  target precision and expected cost, with the same code as the promotion gate, compared
  with the champion's holdout PR-AUC; target drift of the label rate (Evidently);
* **skew**: the features the service used (the prediction log) against the offline
  features of the same transactions at the same timestamps (Feast point-in-time join +
  the training matrix code), feature by feature;
* **quality**: entity misses, missing features and values outside the training
  reference's range in the day's serving inputs;
* **freshness**: how old the online features were at the end of ``ds`` (data time), and
  the champion's age.

Each check returns a :class:`Check`; :func:`write_summary` writes all of a day's results
(plus the retraining decision) to ``s3://<reports>/monitoring/<model>/ds=<ds>/summary.json``
and ``latest.json``, which the Prometheus exporter reads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.features.aggregates import feature_timestamp
from flywheel.monitoring import drift as monitoring
from flywheel.monitoring.exporter import LATEST, SUMMARY_PREFIX  # the exporter reads what this writes
from flywheel.training import evaluation, registry

log = logging.getLogger(__name__)

Status = Literal["ok", "alert", "insufficient_data", "waiting_for_data", "disabled"]
SUMMARY = "summary.json"  # per day; LATEST is the newest day's copy


@dataclass(frozen=True)
class Check:
    """One check's outcome; ``to_dict()`` is JSON-ready (XCom, the summary)."""

    name: str
    status: Status
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "alert": self.alert, "reason": self.reason, **self.metrics}


@dataclass(frozen=True)
class Champion:
    """What the checks need to know about the version being served."""

    version: str
    threshold: float
    holdout_pr_auc: float | None
    window_end: date | None
    registered_at: datetime | None

    @classmethod
    def current(cls, model_name: str, settings: Settings) -> Champion | None:
        mv = registry.alias_version(model_name, registry.CHAMPION, settings=settings)
        if mv is None:
            return None
        client = registry.client(settings)
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        return cls(
            version=str(mv.version),
            threshold=float(mv.tags.get("threshold", 0.5)),
            holdout_pr_auc=metrics.get("holdout_pr_auc", metrics.get("pr_auc")),
            window_end=registry.window_end(mv),
            registered_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
            if mv.creation_timestamp else None,
        )


def report_prefix(kind: str, spec: PipelineSpec, ds: date) -> str:
    return f"{kind}/{spec.model_name}/ds={ds.isoformat()}/"


# ---- performance on delayed labels ------------------------------------------------------------


def arrived_labels(spec: PipelineSpec, *, start: date, end: date, settings: Settings) -> pd.DataFrame:
    """Curated labels of the label feed that arrived in ``[start, end]`` (key, label)."""
    feed = spec.monitoring.labels
    assert feed is not None
    client = storage.s3_client(settings)
    available = set(storage.list_partitions(zone="curated", dataset=feed.dataset, settings=settings,
                                            client=client))
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    frames = [storage.read_partition(zone="curated", dataset=feed.dataset, ds=d, settings=settings, client=client)
              [[feed.key, feed.label]] for d in days if d in available]
    if not frames:
        return pd.DataFrame({feed.key: pd.Series(dtype="object"), feed.label: pd.Series(dtype="int64")})
    return pd.concat(frames, ignore_index=True).drop_duplicates(feed.key, keep="last")


def performance_check(spec: PipelineSpec, ds: date, *, champion: Champion,
                      settings: Settings | None = None) -> Check:
    """The champion's performance over the window's predictions whose labels have arrived."""
    settings = settings or get_settings()
    feed, cfg = spec.monitoring.labels, spec.monitoring.performance
    if feed is None:
        return Check("performance", "disabled", "the spec names no label feed (monitoring.labels)")
    start = ds - timedelta(days=cfg.window_days - 1)
    logs = monitoring.load_predictions(spec, start=start, end=ds, settings=settings)
    own = logs[(logs["model_version"].astype(str) == champion.version) & logs["transaction_id"].notna()]
    own = own.drop_duplicates("transaction_id", keep="last")
    labels = arrived_labels(spec, start=start, end=ds, settings=settings)
    joined = own.merge(labels, left_on="transaction_id", right_on=feed.key, how="inner")
    y = joined[feed.label].to_numpy(dtype="int64")
    proba = joined[monitoring.PREDICTION_COLUMN].to_numpy(dtype="float64")
    facts: dict[str, Any] = {
        "window": {"start": start.isoformat(), "end": ds.isoformat()},
        "champion_version": champion.version,
        "logged_rows": int(len(logs)), "champion_rows": int(len(own)), "labelled_rows": int(len(joined)),
        "label_coverage": float(len(joined) / len(own)) if len(own) else 0.0,
        "positives": int(y.sum()), "label_rate": float(y.mean()) if len(y) else None,
        "reference_pr_auc": champion.holdout_pr_auc,
    }
    if len(joined) < cfg.min_labelled_rows or y.sum() < cfg.min_positives:
        return Check("performance", "insufficient_data",
                     f"{len(joined)} labelled predictions of v{champion.version} ({int(y.sum())} positive) in "
                     f"{start}..{ds}; needs {cfg.min_labelled_rows} and {cfg.min_positives}", facts)
    training = spec.training
    costs = evaluation.Costs(training.costs.false_positive, training.costs.false_negative)
    scores = evaluation.metrics(y, proba, threshold=champion.threshold, costs=costs,
                                precision_target=training.precision_target)
    facts.update({
        "pr_auc": scores["pr_auc"], "roc_auc": scores["roc_auc"],
        "recall_at_precision": scores[f"recall_at_p{int(training.precision_target * 100)}"],
        "precision_target": training.precision_target, "expected_cost": scores["expected_cost"],
        "calibration_error": scores["calibration_error"],
    })
    facts.update(_performance_report(spec, ds, joined.assign(**{feed.label: y}), champion, settings))
    facts["min_pr_auc"] = cfg.min_pr_auc
    if cfg.min_pr_auc is not None and scores["pr_auc"] < cfg.min_pr_auc:
        return Check("performance", "alert",
                     f"PR-AUC {scores['pr_auc']:.3f} on {len(joined)} labelled predictions is below the floor "
                     f"{cfg.min_pr_auc}", facts)
    if champion.holdout_pr_auc is None:
        return Check("performance", "ok", "no holdout PR-AUC recorded for the champion: nothing to compare", facts)
    drop = champion.holdout_pr_auc - scores["pr_auc"]
    facts["pr_auc_drop"] = drop
    if drop > cfg.max_pr_auc_drop:
        return Check("performance", "alert",
                     f"PR-AUC {scores['pr_auc']:.3f} on {len(joined)} labelled predictions is {drop:.3f} below "
                     f"the champion's holdout {champion.holdout_pr_auc:.3f} (tolerance {cfg.max_pr_auc_drop})", facts)
    return Check("performance", "ok", f"PR-AUC {scores['pr_auc']:.3f} vs holdout {champion.holdout_pr_auc:.3f}",
                 facts)


def _performance_report(spec: PipelineSpec, ds: date, current: pd.DataFrame, champion: Champion,
                        settings: Settings) -> dict[str, Any]:
    """Evidently classification report + target drift of the label (vs the training reference)."""
    from evidently import BinaryClassification, DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset

    label, proba = spec.target, monitoring.PREDICTION_COLUMN
    feed = spec.monitoring.labels
    assert feed is not None
    current = current.rename(columns={feed.label: label})[[label, proba]]
    reference = monitoring.load_reference(spec, version=champion.version, settings=settings)
    reference = reference[[label, proba]] if label in reference.columns else None
    definition = DataDefinition(
        numerical_columns=[proba], categorical_columns=[label],
        classification=[BinaryClassification(target=label, prediction_probas=proba, pos_label=1)])
    report = Report([ClassificationPreset(probas_threshold=champion.threshold), ValueDrift(column=label)],
                    include_tests=True)
    with monitoring._quiet_evidently():
        snapshot = report.run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition) if reference is not None else None,
            timestamp=datetime.combine(ds, time.min),
            metadata={"model_name": spec.model_name, "ds": ds.isoformat(), "version": champion.version},
            tags=["performance", spec.model_name])
    result = snapshot.dict()
    drift = [m for m in result["metrics"] if monitoring._metric_type(m) == "ValueDrift"]
    verdicts = monitoring._drift_verdicts(result.get("tests", []))
    out: dict[str, Any] = {}
    if drift and reference is not None:
        out["target_drift_score"] = monitoring._finite(drift[0]["value"])
        out["target_drifted"] = verdicts.get(drift[0]["id"])
        out["reference_label_rate"] = float(reference[label].mean())
    prefix = report_prefix("performance", spec, ds)
    bucket = settings.bucket("reports")
    storage.put_bytes("reports", prefix + "report.html", snapshot.get_html_str(as_iframe=False).encode(),
                      content_type="text/html; charset=utf-8", settings=settings)
    monitoring.sync_workspace(snapshot, project_name=f"{spec.model_name} performance", ds=ds, settings=settings,
                              dashboard=_performance_dashboard)
    out["report"] = f"s3://{bucket}/{prefix}report.html"
    return out


def _performance_dashboard() -> Any:
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel

    panels = [
        line_plot_panel(title="ROC-AUC on labelled predictions",
                        values=[PanelMetric(legend="roc_auc", metric="RocAuc")]),
        line_plot_panel(title="Recall (at the model's threshold)",
                        values=[PanelMetric(legend="recall", metric="Recall")]),
        line_plot_panel(title="Label drift score", values=[PanelMetric(legend="is_fraud", metric="ValueDrift")]),
    ]
    tab = DashboardTabModel(title="Performance", panels=[panel.id for panel in panels])
    return DashboardModel(tabs=[tab], panels=panels)


# ---- training/serving skew --------------------------------------------------------------------


def skew_check(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> Check:
    """Served features of a sample of ``ds``'s predictions vs their offline features."""
    from flywheel.features.store import feature_store, historical_features
    from flywheel.training.trainer import features_of

    settings = settings or get_settings()
    cfg = spec.monitoring.skew
    logs = monitoring.load_predictions(spec, start=ds, end=ds, settings=settings)
    logs = logs[logs["transaction_id"].notna()].drop_duplicates("transaction_id", keep="last")
    if logs.empty:
        return Check("skew", "insufficient_data", f"no logged predictions with a transaction id on {ds}",
                     {"rows": 0})
    try:
        curated = storage.read_partition(zone="curated", dataset=spec.dataset.name, ds=ds.isoformat(),
                                         settings=settings)
    except storage.PartitionNotFound:
        return Check("skew", "waiting_for_data", f"curated {spec.dataset.name} ds={ds} is not there yet",
                     {"rows": 0})
    key = spec.dataset.key
    sample = logs.sample(n=min(cfg.sample_rows, len(logs)), random_state=0)
    ids = sample[["transaction_id"]].rename(columns={"transaction_id": key})
    rows = curated.drop_duplicates(key, keep=False).merge(ids, on=key)
    for column in spec.features.entities.values():
        rows[column] = rows[column].astype("int64")
    offline = historical_features(feature_store(settings), spec, rows)
    matrix = features_of(offline).set_index(offline[key])  # the training matrix code
    served = sample.set_index("transaction_id").loc[matrix.index, MODEL_FEATURES].astype("float64")
    offline_values = matrix[MODEL_FEATURES].to_numpy()
    diff = _mismatches(served.to_numpy(), offline_values, rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol)
    share = {name: float(diff[:, i].mean()) for i, name in enumerate(MODEL_FEATURES)}
    worst = max(share, key=lambda n: share[n])
    facts = {"rows": int(len(matrix)), "unmatched_rows": int(len(sample) - len(matrix)),
             "mismatch_share": share, "max_mismatch_share": share[worst], "worst_feature": worst,
             "skewed_features": sorted(n for n, s in share.items() if s > cfg.max_mismatch_share)}
    if share[worst] > cfg.max_mismatch_share:
        return Check("skew", "alert", f"served {worst} differs from the offline value in {share[worst]:.1%} of "
                                      f"{len(matrix)} sampled predictions (tolerance {cfg.max_mismatch_share:.1%})",
                     facts)
    return Check("skew", "ok", f"served features match offline ones ({len(matrix)} sampled predictions)", facts)


def _mismatches(served: np.ndarray, offline: np.ndarray, *, rel_tol: float, abs_tol: float) -> np.ndarray:
    """Element-wise: values differ beyond tolerance, or exactly one of them is missing."""
    both_nan = np.isnan(served) & np.isnan(offline)
    close = np.isclose(served, offline, rtol=rel_tol, atol=abs_tol)
    return ~(close | both_nan)


# ---- serving input quality and freshness ------------------------------------------------------


def quality_check(spec: PipelineSpec, ds: date, *, reference_version: str,
                  settings: Settings | None = None) -> Check:
    """Entity misses, missing features and out-of-range values in ``ds``'s serving inputs."""
    settings = settings or get_settings()
    cfg = spec.monitoring.quality
    logs = monitoring.load_predictions(spec, start=ds, end=ds, settings=settings)
    if logs.empty:
        return Check("quality", "insufficient_data", f"no logged predictions on {ds}", {"rows": 0})
    reference = monitoring.load_reference(spec, version=reference_version, settings=settings)
    features = [f for f in MODEL_FEATURES if f in reference.columns]
    current = logs[features].astype("float64")
    expected = reference[features].astype("float64")
    missing = current.isna().mean() - expected.isna().mean()  # beyond what training saw
    # The training range widened by a share of itself: a sample's max is not a hard limit for
    # heavy-tailed counts, an order of magnitude off (or a sign flip) is what this is for.
    span = (expected.max() - expected.min()).fillna(0)
    low, high = expected.min() - cfg.range_margin * span, expected.max() + cfg.range_margin * span
    outside = ((current < low) | (current > high)).mean()
    miss_rate = float(logs["feature_miss"].mean())
    facts = {
        "rows": int(len(logs)),
        "feature_miss_rate": miss_rate,
        "missing_rate": {f: float(current[f].isna().mean()) for f in features},
        "excess_missing_rate": {f: float(max(missing[f], 0.0)) for f in features},
        "out_of_range_rate": {f: float(outside[f]) for f in features},
    }
    problems = []
    if miss_rate > cfg.max_feature_miss_rate:
        problems.append(f"{miss_rate:.1%} of requests had an unknown entity")
    problems += [f"{f} missing in {missing[f]:.1%} more rows than in training" for f in features
                 if missing[f] > cfg.max_missing_rate]
    problems += [f"{f} outside the (widened) training range in {outside[f]:.1%} of rows" for f in features
                 if outside[f] > cfg.max_out_of_range_rate]
    if problems:
        return Check("quality", "alert", "; ".join(problems), facts)
    return Check("quality", "ok", f"{len(logs)} serving inputs within the training reference", facts)


def freshness_check(spec: PipelineSpec, ds: date, *, champion: Champion,
                    settings: Settings | None = None) -> Check:
    """Age of the online features at the end of ``ds`` (data time), and of the champion."""
    settings = settings or get_settings()
    cfg = spec.monitoring.quality
    records = storage.list_keys("reports", f"feature-freshness/{spec.name}/", settings=settings)
    days = sorted(d for d in (k.rsplit("ds=", 1)[-1].removesuffix(".json") for k in records)
                  if d <= ds.isoformat())
    end = feature_timestamp(ds)
    facts: dict[str, Any] = {
        "champion_version": champion.version,
        "model_age_days": (ds - champion.window_end).days if champion.window_end else None,
        "model_registered_days": (datetime.now(UTC) - champion.registered_at).days
        if champion.registered_at else None,
        "online_as_of": days[-1] if days else None,
    }
    if not days:
        return Check("freshness", "alert", f"nothing has been materialized to the online store by {ds}",
                     facts | {"online_age_hours": None})
    age = (end - feature_timestamp(date.fromisoformat(days[-1]))).total_seconds() / 3600
    facts["online_age_hours"] = age
    if age > cfg.max_online_age_hours:
        return Check("freshness", "alert", f"online features are {age:.0f} h old at the end of {ds} (as of "
                                           f"{days[-1]}; tolerance {cfg.max_online_age_hours:.0f} h)", facts)
    return Check("freshness", "ok", f"online features as of {days[-1]} ({age:.0f} h old)", facts)


# ---- the day's summary --------------------------------------------------------------------------


def drift_section(drift: dict[str, Any]) -> dict[str, Any]:
    """The drift result (monitoring.DriftResult.to_dict()) in the summary's flat shape."""
    scores = drift.get("column_scores") or {}
    return {
        "status": "alert" if drift.get("drift_detected") else drift.get("status"),
        "alert": bool(drift.get("drift_detected")),
        "rows": drift.get("rows"), "drift_share": drift.get("drift_share"),
        "drift_detected": bool(drift.get("drift_detected")),
        "prediction_drift_score": drift.get("prediction_drift_score"),
        "drifted_columns": drift.get("drifted_columns", []),
        "column_scores": {name: column.get("score") for name, column in scores.items()},
        "report": drift.get("html_uri"),
    }


def write_summary(spec: PipelineSpec, ds: date, sections: dict[str, Any], *, champion_version: str | None,
                  settings: Settings | None = None) -> str:
    """Write the day's summary, and ``latest.json`` unless a later day's summary is there."""
    settings = settings or get_settings()
    summary = {"model": spec.model_name, "ds": ds.isoformat(), "champion_version": champion_version,
               "generated_at": datetime.now(UTC).isoformat(), **sections}
    body = json.dumps(monitoring._json_safe(summary), indent=2, sort_keys=True, allow_nan=False).encode()
    base = f"{SUMMARY_PREFIX}{spec.model_name}/"
    uri = storage.put_bytes("reports", f"{base}ds={ds.isoformat()}/{SUMMARY}", body,
                            content_type="application/json", settings=settings)
    try:
        latest = json.loads(storage.get_bytes("reports", base + LATEST, settings=settings)).get("ds", "")
    except Exception:  # noqa: BLE001 - no latest yet (or unreadable): this one becomes it
        latest = ""
    if ds.isoformat() >= latest:
        storage.put_bytes("reports", base + LATEST, body, content_type="application/json", settings=settings)
    return uri


def read_summaries(spec: PipelineSpec, *, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every day's summary of a model, by day."""
    settings = settings or get_settings()
    keys = [k for k in storage.list_keys("reports", f"{SUMMARY_PREFIX}{spec.model_name}/ds=", settings=settings)
            if k.endswith(SUMMARY)]
    return sorted((json.loads(storage.get_bytes("reports", k, settings=settings)) for k in keys),
                  key=lambda s: s["ds"])


# ---- a whole day ---------------------------------------------------------------------------------


class NoChampion(RuntimeError):
    """Nothing is served yet: there is no traffic to monitor."""


def current_champion(spec: PipelineSpec, settings: Settings) -> Champion:
    champion = Champion.current(spec.model_name, settings)
    if champion is None:
        raise NoChampion(f"{spec.model_name} has no champion yet: no traffic to monitor")
    return champion


def serving_checks(spec: PipelineSpec, ds: date, *, champion: Champion | None = None,
                   settings: Settings | None = None) -> dict[str, Any]:
    """Quality of ``ds``'s serving inputs and freshness (one task: both read the day's logs cheaply)."""
    settings = settings or get_settings()
    champion = champion or current_champion(spec, settings)
    return {"quality": quality_check(spec, ds, reference_version=champion.version, settings=settings).to_dict(),
            "freshness": freshness_check(spec, ds, champion=champion, settings=settings).to_dict()}


def run_checks(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> dict[str, Any]:
    """Every check of ``ds``, as the monitoring DAG's tasks run them (for the simulation and the CLI)."""
    settings = settings or get_settings()
    champion = current_champion(spec, settings)
    drift = monitoring.run_drift_check(spec, ds=ds, reference_version=champion.version,
                                       window_days=spec.monitoring.drift_window_days, settings=settings)
    return {
        "ds": ds.isoformat(),
        "drift": drift.to_dict(),
        "performance": performance_check(spec, ds, champion=champion, settings=settings).to_dict(),
        "skew": skew_check(spec, ds, settings=settings).to_dict(),
        **serving_checks(spec, ds, champion=champion, settings=settings),
    }


def conclude(spec: PipelineSpec, observed: dict[str, Any], *, run_id: str,
             settings: Settings | None = None, now: datetime | None = None) -> Any:
    """Let the retraining policy decide on the day's checks; record both (decision + summary).

    ``now``: the decision's clock (default: the wall clock; the simulation passes its own).
    """
    from flywheel.monitoring import policy

    settings = settings or get_settings()
    decision = policy.evaluate(spec, observed, run_id=run_id, settings=settings, now=now)
    sections = {name: observed.get(name) for name in ("performance", "skew", "quality", "freshness")}
    sections["drift"] = drift_section(observed["drift"]) if observed.get("drift") else None
    sections["decision"] = {"action": decision.action, "reason": decision.reason,
                            "fired": decision.signals.get("fired", []),
                            "alerts": decision.signals.get("alerts", [])}
    write_summary(spec, date.fromisoformat(str(observed["ds"])), sections,
                  champion_version=decision.champion_version, settings=settings)
    for name, section in sections.items():
        if isinstance(section, dict) and section.get("alert"):
            log.warning("monitoring %s ds=%s: %s alert: %s", spec.model_name, observed["ds"], name,
                        section.get("reason", ""))
    return decision
