"""The rollout step: the live metrics of the version under rollout, and the move they call for.

:func:`evaluate` reads the prediction-log rows the challenger scored at its current stage (since
the stage's audit record) and, when labels arrived, the same rows with their labels; it answers
``advance`` (every threshold of ``spec.rollout`` passes), ``rollback`` (one fails) or ``wait``
(fewer than ``min_requests`` rows, or, before the last step to champion, fewer than
``min_labelled_rows`` labels). :func:`step` applies it through :mod:`flywheel.training.stages`
(compare-and-set, audited): shadow → canary → champion, or out of traffic.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import LOWER_IS_BETTER, PipelineSpec
from flywheel.monitoring import checks
from flywheel.monitoring import drift as monitoring
from flywheel.serving.logschema import prediction_column
from flywheel.training import promotion, registry, stages

log = logging.getLogger(__name__)
Action = Literal["wait", "advance", "rollback"]
ACTOR = "rollout-step"


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepResult:
    rollout: stages.Rollout | None
    verdict: Verdict
    record: promotion.AuditRecord | None = None


def evaluate(spec: PipelineSpec, rows: pd.DataFrame, *, stage: stages.Stage,
             labelled: pd.DataFrame | None = None, thresholds: tuple[float, float] = (math.nan, math.nan)) -> Verdict:
    """The verdict on the challenger's rows of one stage (prediction-log columns).

    ``labelled``: those rows with an arrived label (``checks._LABEL``); ``thresholds``: the
    (champion, challenger) decision thresholds (binary)."""
    cfg = spec.rollout
    n = len(rows)
    facts: dict[str, Any] = {"stage": stage, "requests": n}
    if n < cfg.min_requests:
        return Verdict("wait", f"{n} of {cfg.min_requests} rows scored at {stage}", facts)
    errors = rows["challenger_error"].to_numpy(dtype=bool)
    ok = rows[~errors]
    facts |= {"error_rate": float(errors.mean()),
              "agreement": float(ok["challenger_agrees"].mean()) if len(ok) else 0.0,
              "p99_ms": float(np.percentile(ok["challenger_ms"], 99)) if len(ok) else math.inf}
    if facts["error_rate"] > cfg.max_error_rate:
        return Verdict("rollback", f"error rate {facts['error_rate']:.4f} > {cfg.max_error_rate}", facts)
    if facts["agreement"] < cfg.min_agreement:
        return Verdict("rollback", f"agreement {facts['agreement']:.4f} < {cfg.min_agreement}", facts)
    if facts["p99_ms"] > cfg.max_p99_ms:
        return Verdict("rollback", f"p99 {facts['p99_ms']:.1f} ms > {cfg.max_p99_ms} ms", facts)
    passed = (f"{n} rows: agreement {facts['agreement']:.4f}, p99 {facts['p99_ms']:.1f} ms, "
              f"error rate {facts['error_rate']:.4f}")
    labels = _label_verdict(spec, labelled, thresholds, facts)
    if labels is not None and labels.action == "rollback":
        return labels
    if labels is not None and labels.action == "wait" and stage == "canary":
        return Verdict("wait", f"{passed}; {labels.reason}", facts)
    return Verdict("advance", passed + (f"; {labels.reason}" if labels is not None else ""), facts)


def _label_verdict(spec: PipelineSpec, labelled: pd.DataFrame | None, thresholds: tuple[float, float],
                   facts: dict[str, Any]) -> Verdict | None:
    """The delayed-label comparison on the same rows: None when it does not apply."""
    cfg = spec.rollout
    if cfg.min_labelled_rows == 0 or spec.task == "multiclass":  # the log keeps no challenger class
        return None
    have = 0 if labelled is None else len(labelled)
    facts["labelled_rows"] = have
    if labelled is None or have < cfg.min_labelled_rows:
        return Verdict("wait", f"{have} of {cfg.min_labelled_rows} labels arrived", facts)
    metric = checks.monitored_metric(spec)
    score = prediction_column(spec)
    y = labelled[checks._LABEL]
    got = {who: checks.performance_scores(spec, y, labelled.assign(**{score: labelled[f"{who}_score"]}),
                                          threshold=t).get(metric)
           for who, t in zip(("champion", "challenger"), thresholds, strict=True)}
    facts |= {"metric": metric, "champion_metric": got["champion"], "challenger_metric": got["challenger"]}
    if got["champion"] is None or got["challenger"] is None:
        return Verdict("wait", f"{metric} is undefined on {have} labelled rows", facts)
    lower = metric in LOWER_IS_BETTER
    drop = got["challenger"] - got["champion"] if lower else got["champion"] - got["challenger"]
    facts["metric_drop"] = drop
    said = f"{metric} {got['challenger']:.4f} vs champion {got['champion']:.4f} on {have} labelled rows"
    if drop > cfg.max_metric_drop:
        return Verdict("rollback", f"{said}: {drop:.4f} worse (tolerance {cfg.max_metric_drop})", facts)
    return Verdict("advance", said, facts)


def stage_rows(spec: PipelineSpec, rollout: stages.Rollout, *, since: datetime, ds: date,
               settings: Settings) -> pd.DataFrame:
    """The prediction-log rows the challenger scored at its stage since ``since``, over the
    monitoring window ending at ``ds`` (event dates)."""
    start = ds - timedelta(days=spec.monitoring.performance.window_days - 1)
    logs = monitoring.load_predictions(spec, start=start, end=ds, settings=settings)
    if "challenger_version" not in logs.columns:  # only logs written before rollouts existed
        return logs.iloc[0:0]
    mine = (logs["challenger_version"].astype(str) == rollout.version) & \
        (logs["rollout_stage"].astype(str) == rollout.stage) & (logs["logged_at"] >= pd.Timestamp(since))
    return logs[mine].reset_index(drop=True)


def labelled_rows(spec: PipelineSpec, rows: pd.DataFrame, *, ds: date, settings: Settings) -> pd.DataFrame | None:
    """``rows`` with an arrived, non-null label; None when the log cannot be joined to labels."""
    keys = checks.label_keys(spec)
    if not keys or any(k not in rows.columns for k in keys) or rows.empty:
        return None
    start = ds - timedelta(days=spec.monitoring.performance.window_days - 1)
    labels = checks.arrived_labels(spec, start=start, end=ds, settings=settings)
    own = checks._key_strings(rows.dropna(subset=keys).drop_duplicates(keys, keep="last"), keys)
    joined = own.merge(labels, on=keys, how="inner")
    return joined[joined[checks._LABEL].notna()].reset_index(drop=True)


def stage_started(model_name: str, rollout: stages.Rollout, *, settings: Settings) -> datetime:
    """When the version's current stage began: its last ``done`` stage record."""
    for record in reversed(promotion.history(model_name, settings=settings)):
        if record.action == rollout.stage and record.to_version == rollout.version and record.outcome == "done":
            return datetime.strptime(record.at, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=UTC)
    return datetime.now(UTC)  # set behind Flywheel's back: count from now


def step(spec: PipelineSpec, *, ds: date | None = None, actor: str = ACTOR,
         settings: Settings | None = None) -> StepResult:
    """Evaluate the version under rollout and move it (audited, compare-and-set): one stage on,
    or out of traffic. Nothing to do without a ``rollout`` alias or with ``mode: champion_only``.
    Raises :class:`stages.RolloutMoved` when the rollout moved while it was evaluated."""
    settings = settings or get_settings()
    rollout = stages.current(spec.model_name, settings=settings)
    if rollout is None or spec.rollout.mode == "champion_only":
        why = "no version under rollout" if rollout is None else "rollout.mode is champion_only"
        return StepResult(rollout, Verdict("wait", why))
    ds = ds or datetime.now(UTC).date()
    since = stage_started(spec.model_name, rollout, settings=settings)
    rows = stage_rows(spec, rollout, since=since, ds=ds, settings=settings)
    labelled = labelled_rows(spec, rows, ds=ds, settings=settings) if spec.rollout.min_labelled_rows else None
    verdict = evaluate(spec, rows, stage=rollout.stage, labelled=labelled,
                       thresholds=(_threshold(spec, rollout.champion, settings), _threshold(spec, rollout.version,
                                                                                            settings)))
    reason = f"rollout {rollout.stage} of v{rollout.version}: {verdict.reason}"
    if verdict.action == "advance":
        record = stages.advance(spec.model_name, rollout, reason=reason, actor=actor, settings=settings)
    elif verdict.action == "rollback":
        record = stages.abort(spec.model_name, rollout, reason=reason, actor=actor, settings=settings)
    else:
        return StepResult(rollout, verdict)
    log.info("%s: %s (%s)", spec.model_name, record.action, reason)
    return StepResult(rollout, verdict, record)


def _threshold(spec: PipelineSpec, version: str | None, settings: Settings) -> float:
    if version is None or spec.task != "binary":
        return math.nan
    mv = registry.client(settings).get_model_version(spec.model_name, version)
    return float(mv.tags.get("threshold", "nan"))
