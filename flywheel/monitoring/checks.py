"""Daily monitoring checks beyond feature drift, and the day's monitoring summary.

Everything a check reads about the use case comes from its spec: the log's columns
(``flywheel.serving.logschema``), the key columns, the label, the task and its metrics.

* **performance**: the champion's logged predictions of the trailing window joined to the
  labels that have arrived by ``ds``: from the label feed (``monitoring.labels``, a dataset of
  its own, joined on its ``key``, a column the log carries), or, without a feed, from the use
  case's own curated dataset (the label arrives with the data; joined on the dataset's key
  columns; a key-less dataset cannot be joined: "not_applicable"). Metrics per task (binary:
  PR-AUC, ROC-AUC, recall at the target precision, expected cost with the gate's code;
  multiclass: macro-F1, accuracy; regression: RMSE, MAE, R²); the monitored metric is compared
  with the champion's holdout value of it, in the metric's direction; Evidently's preset of the
  task, and target drift of the label against the training reference;
* **skew**: the features the service used (the prediction log) against the offline
  features of the same rows (matched on the dataset's key columns) at the same timestamps
  (Feast point-in-time join + the one featurizer), feature by feature;
* **quality**: entity misses, unknown categorical values, missing features and values outside
  the training reference's range in the day's serving inputs;
* **freshness**: how old the online features were at the end of ``ds`` (data time), and
  the champion's age.

Each check returns a :class:`Check`; :func:`write_summary` writes all of a day's results
(plus the retraining decision) to ``s3://<reports>/monitoring/<model>/ds=<ds>/summary.json``
and ``latest.json``, labelled with the use case and its task, which the Prometheus exporter reads.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from flywheel.core import layout, storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.layout import LATEST, SUMMARY
from flywheel.core.spec import LOWER_IS_BETTER, TASK_METRICS, PerformanceSpec, PipelineSpec
from flywheel.features.aggregates import feature_timestamp
from flywheel.features.featurizer import featurizer_for, label_values
from flywheel.monitoring import drift as monitoring
from flywheel.serving import logschema
from flywheel.training import evaluation, registry

log = logging.getLogger(__name__)

Status = Literal["ok", "alert", "insufficient_data", "waiting_for_data", "disabled", "not_applicable"]
# The metrics a prediction log can be scored on, per task, in order of preference. Multiclass
# log loss needs every class's probability; the log carries the predicted class's only.
LIVE_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("pr_auc", "roc_auc"),
    "multiclass": ("macro_f1", "accuracy"),
    "regression": ("rmse", "mae", "r2"),
}
_LABEL = "__label"  # the label's column in joined frames (never a column of the log)


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
    # The version's holdout metrics (``holdout_<metric>`` of its training run), by metric name.
    holdout: dict[str, float]
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
            holdout=holdout_metrics(metrics),
            window_end=registry.window_end(mv),
            registered_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
            if mv.creation_timestamp else None,
        )


def holdout_metrics(run_metrics: dict[str, float]) -> dict[str, float]:
    """Metric -> holdout value from a training run's metrics (``holdout_<m>``, else a plain ``<m>``)."""
    names = {m for task in TASK_METRICS.values() for m in task}
    return {m: float(run_metrics.get(f"holdout_{m}", run_metrics[m] if m in run_metrics else math.nan))
            for m in names if f"holdout_{m}" in run_metrics or m in run_metrics}


def report_prefix(kind: str, spec: PipelineSpec, ds: date) -> str:
    return layout.report_prefix(kind, spec.model_name, ds)


# ---- performance on delayed labels ------------------------------------------------------------


def monitored_metric(spec: PipelineSpec) -> str:
    """The metric the performance check alerts on: ``monitoring.performance.metric``, else
    ``training.metric`` when a log can be scored on it, else the task's first live metric.

    Raises ``ValueError`` (naming the use case and field) for a metric of another task.
    """
    chosen = spec.monitoring.performance.metric
    if chosen is not None:
        if chosen not in TASK_METRICS[spec.task]:
            raise ValueError(f"use case {spec.name}: monitoring.performance.metric {chosen!r} is not a "
                             f"{spec.task} metric (one of {', '.join(TASK_METRICS[spec.task])})")
        return chosen
    trained = spec.training.metric
    return trained if trained in LIVE_METRICS[spec.task] else LIVE_METRICS[spec.task][0]


def label_keys(spec: PipelineSpec) -> list[str]:
    """The columns joining logged predictions to their labels: the feed's key, or the dataset's
    key columns when the label arrives with the data ([] for a key-less dataset)."""
    feed = spec.monitoring.labels
    return [feed.key] if feed is not None else spec.dataset.key_columns


def _key_strings(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """``keys`` as text (the log holds the caller's ids as text, curated data in its own types)."""
    return frame.assign(**{k: frame[k].astype("string").astype("object") for k in keys})


def arrived_labels(spec: PipelineSpec, *, start: date, end: date, settings: Settings) -> pd.DataFrame:
    """Labels that arrived in ``[start, end]``: key columns (as text) and ``__label``.

    From the label feed's curated partitions, or, without a feed, from the use case's own
    curated dataset (its label column or expression, :func:`label_values`). Rows whose label
    is null stay in (the caller counts them).
    """
    feed = spec.monitoring.labels
    dataset = feed.dataset if feed is not None else spec.dataset.name
    keys = label_keys(spec)
    client = storage.s3_client(settings)
    available = set(storage.list_partitions(zone="curated", dataset=dataset, settings=settings, client=client))
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    frames = []
    for day in (d for d in days if d in available):
        part = storage.read_partition(zone="curated", dataset=dataset, ds=day, settings=settings, client=client)
        label = part[feed.label] if feed is not None else label_values(spec, part)
        frames.append(_key_strings(part[keys], keys).assign(**{_LABEL: label.to_numpy()}))
    if not frames:
        return pd.DataFrame({**{k: pd.Series(dtype="object") for k in keys}, _LABEL: pd.Series(dtype="float64")})
    return pd.concat(frames, ignore_index=True).drop_duplicates(keys, keep="last")


def _outputs(spec: PipelineSpec) -> tuple[str, str | None]:
    """The log's score column and, for multiclass, its predicted-class column."""
    cols = monitoring.drift_columns(spec)
    return cols.prediction, (cols.categorical[0] if cols.categorical else None)


def performance_scores(spec: PipelineSpec, y: pd.Series, logged: pd.DataFrame, *,
                       threshold: float) -> dict[str, Any]:
    """The task's metrics of logged predictions against their labels ``y`` (same rows).

    Binary and regression: the gate's code (``training.evaluation.metrics``): PR-AUC, ROC-AUC,
    recall at the target precision, expected cost and calibration error at ``threshold``; RMSE,
    MAE and R² (None when the labels are constant). Multiclass: macro-F1 and accuracy of the
    logged class against the label (the gate scores class probabilities, which the log does not
    carry; log loss is None for the same reason).
    """
    from sklearn import metrics as sk

    score, predicted = _outputs(spec)
    if spec.task == "binary":
        training = spec.training
        costs = evaluation.Costs(training.costs.false_positive, training.costs.false_negative)
        got = evaluation.metrics(y.to_numpy(dtype="int64"), logged[score].to_numpy(dtype="float64"),
                                 threshold=threshold, costs=costs, precision_target=training.precision_target)
        return {"pr_auc": _finite(got["pr_auc"]), "roc_auc": _finite(got["roc_auc"]),
                "recall_at_precision": _finite(got[f"recall_at_p{int(training.precision_target * 100)}"]),
                "precision_target": training.precision_target, "expected_cost": got["expected_cost"],
                "calibration_error": got["calibration_error"]}
    if spec.task == "multiclass":
        assert predicted is not None
        truth, guess = y.astype(str).to_numpy(), logged[predicted].astype(str).to_numpy()
        return {"macro_f1": float(sk.f1_score(truth, guess, average="macro", zero_division=0)),
                "accuracy": float(sk.accuracy_score(truth, guess)), "log_loss": None,
                "classes": int(len(set(truth) | set(guess)))}
    got = evaluation.metrics(y.to_numpy(dtype="float64"), logged[score].to_numpy(dtype="float64"), task="regression")
    return {name: _finite(value) for name, value in got.items()}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def metric_verdict(metric: str, value: float, holdout: float | None, cfg: PerformanceSpec,
                   ) -> tuple[Status, str, dict[str, Any]]:
    """Status, reason and facts of the alert rule: ``value`` worse than ``cfg.metric_limit``, or
    worse than the champion's ``holdout`` by more than ``cfg.max_metric_drop`` ("worse" in the
    metric's direction: higher for log_loss/rmse/mae, lower for the others)."""
    lower = metric in LOWER_IS_BETTER
    facts: dict[str, Any] = {"metric": metric, "metric_value": value, "lower_is_better": lower,
                             "reference_metric_value": holdout, f"reference_{metric}": holdout,
                             "max_metric_drop": cfg.max_metric_drop, "metric_limit": cfg.metric_limit}
    name = metric.upper().replace("_", "-") if metric != "r2" else "R²"
    limit = cfg.metric_limit
    if limit is not None and (value > limit if lower else value < limit):
        return "alert", f"{name} {value:.3f} is {'above' if lower else 'below'} the limit {limit}", facts
    if holdout is None or not math.isfinite(holdout):
        return "ok", f"{name} {value:.3f}; no holdout {name} recorded for the champion: nothing to compare", facts
    drop = value - holdout if lower else holdout - value  # > 0: worse than the holdout
    facts |= {"metric_drop": drop, f"{metric}_drop": drop}
    if drop > cfg.max_metric_drop:
        return "alert", (f"{name} {value:.3f} is {drop:.3f} worse than the champion's holdout {holdout:.3f} "
                         f"(tolerance {cfg.max_metric_drop})"), facts
    return "ok", f"{name} {value:.3f} vs holdout {holdout:.3f}", facts


def _labelled(spec: PipelineSpec, logs: pd.DataFrame, labels: pd.DataFrame, *,
              version: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The champion's own predictions with an arrived, non-null label (``__label``), and counts."""
    keys = label_keys(spec)
    own = logs[logs["model_version"].astype(str) == version].dropna(subset=keys)
    own = _key_strings(own.drop_duplicates(keys, keep="last"), keys)
    joined = own.merge(labels, on=keys, how="inner", validate="one_to_one")
    null = joined[_LABEL].isna()
    counts = {"logged_rows": int(len(logs)), "champion_rows": int(len(own)),
              "unlabelled_rows": int(null.sum()), "labelled_rows": int((~null).sum()),
              "label_coverage": float((~null).sum() / len(own)) if len(own) else 0.0}
    return joined[~null].reset_index(drop=True), counts


def _label_facts(spec: PipelineSpec, y: pd.Series) -> dict[str, Any]:
    if spec.task == "binary":
        values = y.to_numpy(dtype="int64")
        return {"positives": int(values.sum()), "label_rate": float(values.mean()) if len(values) else None}
    if spec.task == "multiclass":
        return {"label_classes": int(y.astype(str).nunique())}
    return {"label_mean": float(y.astype("float64").mean()) if len(y) else None}


def performance_check(spec: PipelineSpec, ds: date, *, champion: Champion,
                      settings: Settings | None = None) -> Check:
    """The champion's performance over the window's predictions whose labels have arrived."""
    settings = settings or get_settings()
    cfg, keys = spec.monitoring.performance, label_keys(spec)
    metric = monitored_metric(spec)
    if not keys:
        return Check("performance", "not_applicable",
                     f"dataset {spec.dataset.name} has no key columns and the spec names no label feed "
                     "(monitoring.labels): logged predictions cannot be matched to their labels", {"metric": metric})
    missing = [k for k in keys if k not in logschema.log_dtypes(spec)]
    if missing:
        return Check("performance", "not_applicable",
                     f"monitoring.labels.key {missing[0]!r} is not a column of the prediction log (the log carries "
                     f"the key columns {spec.dataset.key_columns} of {spec.dataset.name})", {"metric": metric})
    if metric not in LIVE_METRICS[spec.task]:
        return Check("performance", "not_applicable",
                     f"{metric} cannot be computed from the prediction log (it carries the predicted class's "
                     f"probability only); use one of {', '.join(LIVE_METRICS[spec.task])}", {"metric": metric})
    start = ds - timedelta(days=cfg.window_days - 1)
    logs = monitoring.load_predictions(spec, start=start, end=ds, settings=settings)
    labels = arrived_labels(spec, start=start, end=ds, settings=settings)
    joined, counts = _labelled(spec, logs, labels, version=champion.version)
    y = joined[_LABEL]
    facts: dict[str, Any] = {"window": {"start": start.isoformat(), "end": ds.isoformat()},
                             "champion_version": champion.version, "task": spec.task, "metric": metric,
                             "label_source": spec.monitoring.labels.dataset if spec.monitoring.labels
                             else spec.dataset.name, **counts, **_label_facts(spec, y)}
    positives = facts.get("positives")
    if len(joined) < cfg.min_labelled_rows or (positives is not None and positives < cfg.min_positives):
        needs = f"{cfg.min_labelled_rows}" + (f" and {cfg.min_positives} positive" if positives is not None else "")
        have = f"{len(joined)} labelled predictions" + (f" ({positives} positive)" if positives is not None else "")
        return Check("performance", "insufficient_data",
                     f"{have} of v{champion.version} in {start}..{ds}; needs {needs}", facts)
    scores = performance_scores(spec, y, joined, threshold=champion.threshold)
    facts.update(scores)
    value = scores[metric]
    if value is None:
        return Check("performance", "insufficient_data",
                     f"{metric} is undefined on {len(joined)} labelled predictions (one class or constant labels)",
                     facts)
    facts.update(_performance_report(spec, ds, joined, champion, settings))
    status, reason, verdict = metric_verdict(metric, value, champion.holdout.get(metric), cfg)
    facts.update(verdict)
    return Check("performance", status, f"{reason} ({len(joined)} labelled predictions)", facts)


def _evidently_frames(spec: PipelineSpec, current: pd.DataFrame, reference: pd.DataFrame | None,
                      ) -> tuple[pd.DataFrame, pd.DataFrame | None, Any]:
    """Current and reference frames (label + outputs) and the data definition of the task."""
    from evidently import BinaryClassification, DataDefinition, MulticlassClassification, Regression

    label = spec.target
    score, predicted = _outputs(spec)
    columns = [label, predicted if spec.task == "multiclass" and predicted else score]
    if spec.task == "binary":
        definition = DataDefinition(numerical_columns=[score], categorical_columns=[label], classification=[
            BinaryClassification(target=label, prediction_probas=score, pos_label=1)])
    elif spec.task == "multiclass":
        definition = DataDefinition(categorical_columns=columns, classification=[
            MulticlassClassification(target=label, prediction_labels=columns[1])])
    else:
        definition = DataDefinition(numerical_columns=columns, regression=[Regression(target=label, prediction=score)])

    def typed(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame[columns].copy()
        if spec.task == "binary":
            out[label] = out[label].astype("int64")
        elif spec.task == "multiclass":
            out = out.astype(str)
        else:
            out = out.astype("float64")
        return out

    usable = reference is not None and set(columns) <= set(reference.columns)
    return typed(current), typed(reference) if usable and reference is not None else None, definition


def performance_snapshot(spec: PipelineSpec, labelled: pd.DataFrame, reference: pd.DataFrame | None, *,
                         threshold: float, ds: date, version: str) -> Any:
    """Evidently's report of the task (ClassificationPreset / RegressionPreset) on ``labelled``
    (the log's outputs + ``__label``), with the label's drift against ``reference`` (the training
    reference; compared only when it carries the label and the outputs)."""
    from evidently import Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import ClassificationPreset, RegressionPreset

    label = spec.target
    current, ref, definition = _evidently_frames(spec, labelled.rename(columns={_LABEL: label}), reference)
    preset = (RegressionPreset() if spec.task == "regression" else
              ClassificationPreset(probas_threshold=threshold) if spec.task == "binary" else
              ClassificationPreset())
    report = Report([preset, ValueDrift(column=label)] if ref is not None else [preset], include_tests=True)
    with monitoring._quiet_evidently():
        return report.run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(ref, data_definition=definition) if ref is not None else None,
            timestamp=datetime.combine(ds, time.min),
            metadata={"model_name": spec.model_name, "use_case": spec.name, "ds": ds.isoformat(),
                      "version": version},
            tags=["performance", spec.model_name])


def target_drift(spec: PipelineSpec, snapshot: Any, reference: pd.DataFrame | None) -> dict[str, Any]:
    """The label's drift as Evidently judged it (empty when no reference was compared)."""
    result = snapshot.dict()
    drift = [m for m in result["metrics"] if monitoring._metric_type(m) == "ValueDrift"]
    if not drift:
        return {}
    verdicts = monitoring._drift_verdicts(result.get("tests", []))
    out: dict[str, Any] = {"target_drift_score": monitoring._finite(drift[0]["value"]),
                           "target_drifted": verdicts.get(drift[0]["id"])}
    if spec.task == "binary" and reference is not None:
        out["reference_label_rate"] = float(reference[spec.target].astype("float64").mean())
    return out


def _performance_report(spec: PipelineSpec, ds: date, labelled: pd.DataFrame, champion: Champion,
                        settings: Settings) -> dict[str, Any]:
    """The task's Evidently report to the reports bucket and the workspace; the label's drift."""
    reference = monitoring.load_reference(spec, version=champion.version, settings=settings)
    snapshot = performance_snapshot(spec, labelled, reference, threshold=champion.threshold, ds=ds,
                                    version=champion.version)
    out = target_drift(spec, snapshot, reference)
    prefix = report_prefix("performance", spec, ds)
    bucket = settings.bucket("reports")
    storage.put_bytes("reports", prefix + "report.html", snapshot.get_html_str(as_iframe=False).encode(),
                      content_type="text/html; charset=utf-8", settings=settings)
    monitoring.sync_workspace(snapshot, project_name=f"{spec.model_name} performance", ds=ds, settings=settings,
                              dashboard=lambda: performance_dashboard(spec))
    out["report"] = f"s3://{bucket}/{prefix}report.html"
    return out


_DASHBOARD_PANELS = {
    "binary": (("ROC-AUC on labelled predictions", "roc_auc", "RocAuc"),
               ("Recall (at the model's threshold)", "recall", "Recall")),
    "multiclass": (("Accuracy on labelled predictions", "accuracy", "Accuracy"),
                   ("F1 on labelled predictions", "f1", "F1Score")),
    "regression": (("RMSE on labelled predictions", "rmse", "RMSE"),
                   ("MAE on labelled predictions", "mae", "MAE")),
}


def performance_dashboard(spec: PipelineSpec) -> Any:
    """The Evidently project's panels: the task's quality metrics and the label's drift."""
    from evidently.sdk.models import DashboardModel, DashboardTabModel, PanelMetric
    from evidently.sdk.panels import line_plot_panel

    panels = [line_plot_panel(title=title, values=[PanelMetric(legend=legend, metric=metric)])
              for title, legend, metric in _DASHBOARD_PANELS[spec.task]]
    panels.append(line_plot_panel(title="Label drift score", values=[
        PanelMetric(legend=spec.target, metric="ValueDrift", metric_labels={"column": spec.target})]))
    tab = DashboardTabModel(title="Performance", panels=[panel.id for panel in panels])
    return DashboardModel(tabs=[tab], panels=panels)


# ---- training/serving skew --------------------------------------------------------------------


def skew_check(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> Check:
    """Served features of a sample of ``ds``'s predictions vs their offline features (the rows
    matched on the dataset's key columns, recomputed by the one featurizer)."""
    from flywheel.features.store import cast_join_keys, feature_store, historical_features
    from flywheel.training.trainer import features_of

    settings = settings or get_settings()
    cfg, keys = spec.monitoring.skew, spec.dataset.key_columns
    if not keys:
        return Check("skew", "not_applicable", f"dataset {spec.dataset.name} has no key columns: served rows "
                                               "cannot be matched to curated rows", {"rows": 0})
    logs = monitoring.load_predictions(spec, start=ds, end=ds, settings=settings).dropna(subset=keys)
    logs = _key_strings(logs.drop_duplicates(keys, keep="last"), keys)
    if logs.empty:
        return Check("skew", "insufficient_data", f"no logged predictions with a key ({', '.join(keys)}) on {ds}",
                     {"rows": 0})
    try:
        curated = storage.read_partition(zone="curated", dataset=spec.dataset.name, ds=ds.isoformat(),
                                         settings=settings)
    except storage.PartitionNotFound:
        return Check("skew", "waiting_for_data", f"curated {spec.dataset.name} ds={ds} is not there yet",
                     {"rows": 0})
    names = featurizer_for(spec).names
    sample = logs.sample(n=min(cfg.sample_rows, len(logs)), random_state=0).set_index(keys)
    curated = curated.drop_duplicates(keys, keep=False)
    matched = _key_strings(curated, keys).set_index(keys).index.isin(sample.index)
    rows = cast_join_keys(spec, curated[matched].reset_index(drop=True))
    offline = historical_features(feature_store(settings), spec, rows)
    matrix = features_of(offline, spec)  # the training matrix: the one featurizer
    matrix.index = _key_strings(offline, keys).set_index(keys).index
    served = sample.loc[matrix.index, names].astype("float64")
    diff = _mismatches(served.to_numpy(), matrix[names].to_numpy(), rel_tol=cfg.rel_tol, abs_tol=cfg.abs_tol)
    share = {name: float(diff[:, i].mean()) if len(diff) else 0.0 for i, name in enumerate(names)}
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
    """Entity misses, unknown categorical values, missing features and out-of-range values in
    ``ds``'s serving inputs (the model inputs of the one featurizer, as logged)."""
    settings = settings or get_settings()
    cfg = spec.monitoring.quality
    logs = monitoring.load_predictions(spec, start=ds, end=ds, settings=settings)
    if logs.empty:
        return Check("quality", "insufficient_data", f"no logged predictions on {ds}", {"rows": 0})
    reference = monitoring.load_reference(spec, version=reference_version, settings=settings)
    features = [f for f in featurizer_for(spec).names if f in reference.columns and f in logs.columns]
    current = logs[features].astype("float64")
    expected = reference[features].astype("float64")
    missing = current.isna().mean() - expected.isna().mean()  # beyond what training saw
    # The training range widened by a share of itself: a sample's max is not a hard limit for
    # heavy-tailed counts, an order of magnitude off (or a sign flip) is what this is for.
    span = (expected.max() - expected.min()).fillna(0)
    low, high = expected.min() - cfg.range_margin * span, expected.max() + cfg.range_margin * span
    outside = ((current < low) | (current > high)).mean()
    miss_rate = float(logs["feature_miss"].astype(bool).mean())
    unknown = logs["unknown_value"] if "unknown_value" in logs.columns else pd.Series(False, index=logs.index)
    facts = {
        "rows": int(len(logs)),
        "feature_miss_rate": miss_rate,
        "unknown_value_rate": float(unknown.fillna(False).astype(bool).mean()),
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
    records = storage.list_keys("reports", layout.freshness_prefix(spec.name), settings=settings)
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


def drift_reason(drift: dict[str, Any]) -> str:
    """What the drift check saw, in one line: which columns drifted and the share against the threshold."""
    if drift.get("status") == "insufficient_data":
        return f"{drift.get('rows', 0)} rows logged, fewer than min_rows {drift.get('min_rows')}: not compared"
    drifted = list(drift.get("drifted_columns") or [])
    share, threshold = drift.get("drift_share"), drift.get("threshold")
    columns = len(drift.get("column_scores") or {})
    named = ", ".join(drifted[:4]) + (f" and {len(drifted) - 4} more" if len(drifted) > 4 else "")
    measured = f"{len(drifted)} of {columns} columns drifted" + (f" ({named})" if drifted else "")
    if share is not None and threshold is not None:
        sign = ">=" if share >= threshold else "<"
        measured += f", share {share:.2f} {sign} threshold {threshold:.2f}"
    if drift.get("prediction_drifted"):
        measured += f"; prediction {drift.get('prediction_column') or 'score'} drifted"
    return measured


def alert_reason(name: str, section: dict[str, Any]) -> str:
    """The reason an alert line prints: the check's own, or its status when it gave none."""
    return str(section.get("reason") or f"{name} status {section.get('status')!r} (no reason recorded)")


def drift_section(drift: dict[str, Any]) -> dict[str, Any]:
    """The drift result (monitoring.DriftResult.to_dict()) in the summary's flat shape."""
    scores = drift.get("column_scores") or {}
    return {
        "status": "alert" if drift.get("drift_detected") else drift.get("status"),
        "alert": bool(drift.get("drift_detected")),
        "reason": drift_reason(drift),
        "rows": drift.get("rows"), "drift_share": drift.get("drift_share"),
        "drift_detected": bool(drift.get("drift_detected")),
        "prediction_drift_score": drift.get("prediction_drift_score"),
        "prediction_column": drift.get("prediction_column"),
        "output_drift_scores": {name: column.get("score") for name, column in (drift.get("output_scores") or {}).items()},
        "drifted_columns": drift.get("drifted_columns", []),
        "column_scores": {name: column.get("score") for name, column in scores.items()},
        "report": drift.get("html_uri"),
    }


def write_summary(spec: PipelineSpec, ds: date, sections: dict[str, Any], *, champion_version: str | None,
                  settings: Settings | None = None) -> str:
    """Write the day's summary, and ``latest.json`` unless a later day's summary is there."""
    settings = settings or get_settings()
    summary = {"model": spec.model_name, "use_case": spec.name, "task": spec.task, "ds": ds.isoformat(),
               "champion_version": champion_version, "generated_at": datetime.now(UTC).isoformat(), **sections}
    body = json.dumps(monitoring._json_safe(summary), indent=2, sort_keys=True, allow_nan=False).encode()
    base = layout.summary_prefix(spec.model_name)
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
    keys = [k for k in storage.list_keys("reports", f"{layout.summary_prefix(spec.model_name)}ds=", settings=settings)
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
             settings: Settings | None = None, now: datetime | None = None, backfill: bool = False) -> Any:
    """Let the retraining policy decide on the day's checks; record both (decision + summary).

    ``now``: the decision's clock (default: the wall clock; the simulation passes its own).
    ``backfill``: a backfill run not allowed to retrain (see ``policy.decide``).
    """
    from flywheel.monitoring import policy

    settings = settings or get_settings()
    decision = policy.evaluate(spec, observed, run_id=run_id, settings=settings, now=now, backfill=backfill)
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
                        alert_reason(name, section))
    return decision
