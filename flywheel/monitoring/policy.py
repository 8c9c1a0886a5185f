"""Retraining policy: whether monitoring signals become a retrain request, with guardrails.

Signals (``monitoring.retrain.signals`` in the spec choose which may retrain): data drift share
over its threshold (``data_drift``), the task's metric on delayed labels worse than the
champion's holdout or its limit (``performance``: PR-AUC, macro-F1, RMSE, ... per the spec),
training/serving skew (``skew``, off by default: skew is a pipeline bug that retraining does not
fix), and model staleness (days of data since the champion's training window ended, when
``max_model_age_days`` is set). Quality and freshness alerts are recorded but never retrain. Guardrails,
all in *data time* (the monitored day ``ds``) so backfills and reruns decide the same way:

* **dedup**: one trigger per monitored day (a rerun of the same Airflow run may re-trigger);
* **cooldown**: no trigger within ``cooldown_days`` of another triggered day;
* **minimum new labels**: enough labelled curated rows after the champion's window;
* **daily cap**: at most ``max_per_day`` triggers decided per wall-clock day, so a backfill
  of many drifted days cannot start a storm of retrains;
* **backfill**: a backfill run (re)computing past days never requests a retrain unless its
  operator asks for it (``allow_retrain: true`` in the backfill's run conf). Airflow emits a
  backfill's Asset events like any run's (Airflow issue 52665), so the guard is here.

Every decision, triggered or suppressed, is recorded as JSON under
``s3://<prefix>-reports/policy/<model>/`` (``flywheel decisions`` lists them), per model, so
per use case.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

from flywheel.core import layout, storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import registry

Action = Literal["triggered", "no_signal", "duplicate", "cooldown", "insufficient_labels", "daily_cap",
                 "backfill"]
BACKFILL_REASON = ("a backfill run does not request retraining (Airflow issue 52665); create the backfill "
                   "with run conf {\"allow_retrain\": true} to let it")


@dataclass(frozen=True)
class Decision:
    model: str
    ds: str
    action: Action
    reason: str
    signals: dict[str, Any]
    run_id: str
    champion_version: str | None
    decided_at: str = field(default_factory=lambda: stamp(datetime.now(UTC)))
    # The spec's name (records written before use cases had names: "").
    use_case: str = ""

    @property
    def triggered(self) -> bool:
        return self.action == "triggered"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"triggered": self.triggered}


def history(model_name: str, *, settings: Settings | None = None) -> list[Decision]:
    """Every recorded decision of a model, in the order they were made."""
    settings = settings or get_settings()
    keys = storage.list_keys("reports", layout.policy_prefix(model_name), settings=settings)
    records = [json.loads(storage.get_bytes("reports", k, settings=settings)) for k in keys]
    decisions = [Decision(**{k: v for k, v in r.items() if k != "triggered"}) for r in records]
    return sorted(decisions, key=lambda d: d.decided_at)


def record(decision: Decision, *, settings: Settings | None = None) -> str:
    key = f"{layout.policy_prefix(decision.model)}ds={decision.ds}/{decision.decided_at}-{uuid.uuid4().hex[:6]}.json"
    return storage.put_bytes("reports", key, json.dumps(decision.to_dict(), sort_keys=True).encode(),
                             content_type="application/json", settings=settings or get_settings())


def signals(spec: PipelineSpec, observed: dict[str, Any], *, champion_end: date | None) -> dict[str, Any]:
    """What the monitoring run saw, and which signals fire.

    ``observed``: ``{"ds": ..., "drift": DriftResult.to_dict(), "performance": Check.to_dict(), ...}``;
    a check that did not run is absent or None.
    """
    ds = date.fromisoformat(str(observed["ds"]))
    drift = observed.get("drift") or {}
    performance, skew = observed.get("performance") or {}, observed.get("skew") or {}
    age = (ds - champion_end).days if champion_end else None
    policy = spec.monitoring.retrain
    out: dict[str, Any] = {
        "drift_share": drift.get("drift_share"),
        "drift_threshold": spec.monitoring.drift_share_threshold,
        "drift_status": drift.get("status"),
        "drifted_columns": drift.get("drifted_columns", []),
        "report": drift.get("html_uri"),
        "model_age_days": age,
        "max_model_age_days": policy.max_model_age_days,
        "performance_status": performance.get("status"),
        "metric": performance.get("metric"),
        "metric_value": performance.get("metric_value"),
        "metric_drop": performance.get("metric_drop"),
        "labelled_predictions": performance.get("labelled_rows"),
        "skew_status": skew.get("status"),
        "max_mismatch_share": skew.get("max_mismatch_share"),
        "alerts": sorted(name for name, section in observed.items()
                         if isinstance(section, dict) and section.get("alert")),
    }
    seen = {"data_drift": bool(drift.get("drift_detected")), "performance": bool(performance.get("alert")),
            "skew": bool(skew.get("alert"))}
    fired: list[str] = [name for name in ("data_drift", "performance", "skew")
                        if seen[name] and name in policy.signals]
    if age is not None and policy.max_model_age_days is not None and age > policy.max_model_age_days:
        fired.append("staleness")
    out["fired"] = fired
    if "performance" in fired and policy.performance_lookback_days:
        out["lookback_days"] = policy.performance_lookback_days  # the retrain's training window
    out["ignored"] = [name for name, on in seen.items() if on and name not in policy.signals]
    return out


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def decide(spec: PipelineSpec, observed: dict[str, Any], *, run_id: str, new_labelled_rows: int,
           champion_version: str | None, champion_end: date | None, past: list[Decision],
           today: date | None = None, now: datetime | None = None, backfill: bool = False) -> Decision:
    """The policy as a pure function of what was observed and what was decided before.

    ``now`` is the wall clock of the decision (its ``decided_at``, and the day the daily cap
    counts); a simulation passes its simulated clock. ``backfill``: the run is a backfill whose
    operator did not allow retraining: a fired signal is recorded, never triggered.
    """
    policy = spec.monitoring.retrain
    now = now or datetime.now(UTC)
    ds = date.fromisoformat(str(observed["ds"]))
    seen = signals(spec, observed, champion_end=champion_end)
    seen["new_labelled_rows"] = new_labelled_rows

    def made(action: Action, reason: str) -> Decision:
        return Decision(model=spec.model_name, ds=ds.isoformat(), action=action, reason=reason, signals=seen,
                        run_id=run_id, champion_version=champion_version, decided_at=stamp(now),
                        use_case=spec.name)

    if not seen["fired"]:
        return made("no_signal", "no retraining signal fired")
    if backfill:
        return made("backfill", f"{' + '.join(seen['fired'])} on {ds}: {BACKFILL_REASON}")
    triggers = [d for d in past if d.triggered]
    if any(d.ds == ds.isoformat() and d.run_id != run_id for d in triggers):
        return made("duplicate", f"a retrain was already requested for {ds}")
    near = [d.ds for d in triggers if d.ds != ds.isoformat()
            and abs((date.fromisoformat(d.ds) - ds).days) < policy.cooldown_days]
    if near:  # either side: a backfill over older days is held to the same spacing
        return made("cooldown", f"a retrain was requested for {max(near)}, within the "
                                f"{policy.cooldown_days}-day cooldown")
    if new_labelled_rows < policy.min_new_labelled_rows:
        return made("insufficient_labels", f"{new_labelled_rows} labelled rows since the champion's window, "
                                           f"fewer than {policy.min_new_labelled_rows}")
    day = (today or now.astimezone(UTC).date()).strftime("%Y%m%d")
    if sum(1 for d in triggers if d.decided_at.startswith(day) and d.run_id != run_id) >= policy.max_per_day:
        return made("daily_cap", f"already {policy.max_per_day} retrain request(s) today")
    return made("triggered", f"{' + '.join(seen['fired'])} on {ds}")


def retrain_request(decision: Decision) -> dict[str, Any]:
    """The ``extra`` of the retrain Asset event a triggered decision emits (what the training
    DAG reads: the window end and, for performance triggers, the window length)."""
    signals = decision.signals
    return {"reason": decision.reason, "signals": signals.get("fired", []), "window_end": decision.ds,
            "drift_share": signals.get("drift_share"), "drifted_columns": signals.get("drifted_columns", []),
            "report": signals.get("report"), "lookback_days": signals.get("lookback_days")}


def retrain_spec(spec: PipelineSpec, request: dict[str, Any]) -> PipelineSpec:
    """The spec a retrain request trains with: its ``lookback_days`` (set for performance
    triggers) replaces the training window's length."""
    days = request.get("lookback_days")
    return spec if not days else spec.model_copy(update={"training": spec.training.with_lookback(int(days))})


def champion_window_end(model_name: str, settings: Settings) -> tuple[str | None, date | None]:
    """The champion's version and the last day of its training data."""
    mv = registry.alias_version(model_name, registry.CHAMPION, settings=settings)
    if mv is None:
        return None, None
    return str(mv.version), registry.window_end(mv)


def labelled_rows_since(spec: PipelineSpec, after: date | None, until: date, settings: Settings) -> int:
    """Curated (labelled) rows of days in ``(after, until]``, from the partition manifests."""
    days = [d for d in storage.list_partitions(zone="curated", dataset=spec.dataset.name, settings=settings)
            if (after is None or date.fromisoformat(d) > after) and date.fromisoformat(d) <= until]
    return sum(storage.read_manifest(zone="curated", dataset=spec.dataset.name, ds=d, settings=settings).rows
               for d in days)


def evaluate(spec: PipelineSpec, observed: dict[str, Any], *, run_id: str,
             settings: Settings | None = None, now: datetime | None = None, backfill: bool = False) -> Decision:
    """Decide for one monitoring run and record the decision (``backfill``: see :func:`decide`)."""
    settings = settings or get_settings()
    version, end = champion_window_end(spec.model_name, settings)
    ds = date.fromisoformat(str(observed["ds"]))
    decision = decide(spec, observed, run_id=run_id, champion_version=version, champion_end=end,
                      new_labelled_rows=labelled_rows_since(spec, end, ds, settings),
                      past=history(spec.model_name, settings=settings), now=now, backfill=backfill)
    record(decision, settings=settings)
    return decision
