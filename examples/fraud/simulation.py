"""Weeks of simulated production, day by day: traffic → data → labels → monitoring → retraining.

Every simulated day runs what production runs, in the order it happens:

1. the day's transactions go to the model server over HTTP: the champion scores them with the
   online features as of the day before, and the server logs its predictions;
2. the day's batch lands and goes through the data pipeline (ingest → validate → aggregates
   → materialize), and so does the day's label feed (labels of earlier days' transactions);
3. the day's monitoring checks (drift, performance on the labels that have arrived, skew,
   quality, freshness) and the retraining policy, whose decision and summary are recorded;
4. a triggered retrain trains, gates and promotes only a better model; the server follows
   the champion alias by itself, and the driver waits until it serves the new version.

Steps 2 and 3 call the functions the Airflow tasks call. Driving them in-process keeps a
scenario of weeks within minutes; the Airflow wiring of the same steps (schedules, the
retrain Asset, approval) is what ``tests/e2e/test_loop.py`` proves. A retrain can go through
Airflow too (``retrain=`` hook): ``make demo`` posts the retrain Asset event and waits for
the training DAG the scheduler starts.
"""

from __future__ import annotations

import logging
import time as clock
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd

from examples.fraud.generator import DriftKind, Phase, drift_label, drift_on, write_landing
from examples.model_api import http_client, wait_for_logs  # noqa: F401 (re-exported)
from flywheel.core import layout, storage
from flywheel.core.config import Settings
from flywheel.core.spec import DataSpec, PipelineSpec, find_dataset_spec
from flywheel.monitoring import checks
from flywheel.monitoring.policy import Decision
from flywheel.training import registry

log = logging.getLogger(__name__)

STABLE, COVARIATE, CONCEPT = "stable", "covariate_shift", "concept_shift"


@dataclass(frozen=True)
class Scenario:
    """History, then phases: ``(name, days, drift kinds)`` in order."""

    start: date = date(2026, 1, 1)
    history_days: int = 14
    phases: tuple[tuple[str, int, frozenset[DriftKind]], ...] = (
        (STABLE, 7, frozenset()),
        # Fraudsters change tactics (for good): visible only through the delayed labels.
        (CONCEPT, 14, frozenset({DriftKind.NEW_PATTERN})),
        # Then an episode of shifted amounts: drift on its first day, again inside the cooldown.
        # It comes last on purpose: a model trained over an episode carries it in its drift
        # reference, and normal traffic afterwards reads as drifted until the next retrain.
        (COVARIATE, 3, frozenset({DriftKind.NEW_PATTERN, DriftKind.AMOUNT_SHIFT})),
    )

    @property
    def first_day(self) -> date:
        """The first simulated (served) day."""
        return self.start + timedelta(days=self.history_days)

    @property
    def history_end(self) -> date:
        return self.first_day - timedelta(days=1)

    @property
    def days(self) -> int:
        return self.history_days + sum(days for _, days, _ in self.phases)

    @property
    def last_day(self) -> date:
        return self.start + timedelta(days=self.days - 1)

    def schedule(self) -> list[Phase]:
        out, day = [], self.first_day
        for name, days, kinds in self.phases:
            out.append(Phase(day, kinds, name))
            day += timedelta(days=days)
        return out

    def phase_of(self, day: date) -> Phase | None:
        current = None
        for phase in self.schedule():
            if phase.start <= day:
                current = phase
        return current if day >= self.first_day else None


@dataclass
class DayOutcome:
    day: str
    phase: str
    drift: str
    requests: int
    served_by: list[str]
    drift_share: float | None
    drift_detected: bool
    pr_auc: float | None
    pr_auc_drop: float | None
    performance: str
    skew: float | None
    alerts: list[str]
    action: str
    reason: str
    champion: str | None
    retrained: str | None = None
    promoted: bool | None = None
    seconds: float = 0.0


@dataclass
class SimulationResult:
    scenario: Scenario
    days: list[DayOutcome] = field(default_factory=list)

    def phase_starts(self, name: str) -> list[date]:
        return [p.start for p in self.scenario.schedule() if p.name == name]

    def detection_delay(self, phase: str, signal: str) -> int | None:
        """Days from the first start of ``phase`` to the first day ``signal`` alerted (None: never)."""
        starts = self.phase_starts(phase)
        if not starts:
            return None
        for outcome in self.days:
            day = date.fromisoformat(outcome.day)
            if day >= starts[0] and signal in outcome.alerts:
                return (day - starts[0]).days
        return None

    def false_alarms(self) -> list[str]:
        """Days of the stable phase on which a retraining signal (drift, performance) alerted."""
        return [d.day for d in self.days if d.phase == STABLE and {"drift", "performance"} & set(d.alerts)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "first_day": self.scenario.first_day.isoformat(), "last_day": self.scenario.last_day.isoformat(),
            "phases": [{"name": p.name, "start": p.start.isoformat(), "drift": drift_label(p.drift)}
                       for p in self.scenario.schedule()],
            "days": [asdict(d) for d in self.days],
            "detection_delay_days": {"covariate_shift (drift)": self.detection_delay(COVARIATE, "drift"),
                                     "concept_shift (performance)": self.detection_delay(CONCEPT, "performance")},
            "false_alarms": self.false_alarms(),
        }


# ---- the steps of a day -----------------------------------------------------------------------


def label_spec(spec: PipelineSpec, settings: Settings) -> DataSpec | None:
    feed = spec.monitoring.labels
    return find_dataset_spec(feed.dataset, settings=settings) if feed else None


def write_data(settings: Settings, spec: PipelineSpec, scenario: Scenario) -> None:
    """The scenario's landing files: transactions and the label feed of every day (idempotent)."""
    labels = label_spec(spec, settings)
    write_landing(settings.home / "landing", scenario.start, scenario.days, spec.generator,
                  schedule=scenario.schedule(), dataset=spec.dataset.name,
                  labels_dataset=labels.dataset.name if labels else None)


def process_data(settings: Settings, spec: PipelineSpec, day: date, *, run_id: str) -> dict[str, Any]:
    """The data DAG's stages for one day (flywheel.runs.data_day: ingest → validate → features),
    then the label feed's."""
    from flywheel import runs

    ds = day.isoformat()
    validated = runs.data_day(spec, ds, run_id=run_id, settings=settings)["validate"]
    out = {"curated_rows": validated.get("curated_rows"), "quarantined_rows": validated.get("quarantined_rows")}
    labels = label_spec(spec, settings)
    if labels is not None:
        out["labels"] = runs.data_day(labels, ds, run_id=run_id, settings=settings)["validate"].get("curated_rows")
    return out


def send_traffic(settings: Settings, spec: PipelineSpec, day: date, *, batch_size: int = 250) -> dict[str, Any]:
    """Send the day's valid transactions to the model server (batches); returns what served them."""
    path = settings.home / "landing" / spec.dataset.name / f"ds={day.isoformat()}" / "part-0.parquet"
    rows = valid_rows(pd.read_parquet(path), spec, day)
    rows = rows.assign(event_timestamp=rows["event_timestamp"].map(lambda t: t.isoformat()),
                       user_id=rows["user_id"].astype("int64"), merchant_id=rows["merchant_id"].astype("int64"))
    records = rows.drop(columns=[spec.target]).to_dict("records")
    versions: set[str] = set()
    with http_client(settings) as http:
        for i in range(0, len(records), batch_size):
            resp = http.post(f"/{spec.name}/predict_batch", json=records[i : i + batch_size])
            resp.raise_for_status()
            versions.update(p["model_version"] for p in resp.json())
    return {"requests": len(records), "versions": sorted(versions)}


def valid_rows(frame: pd.DataFrame, spec: PipelineSpec, day: date | None = None) -> pd.DataFrame:
    """Rows a product service would send: the generator's bad records (nulls, negative amounts,
    unknown categories, duplicate ids, timestamps outside the day) left out."""
    allowed = spec.dataset.contract.columns["merchant_category"].allowed or []
    ok = frame["user_id"].notna() & (frame["amount"] > 0) & frame["merchant_category"].isin(allowed)
    if day is not None:
        ok &= pd.to_datetime(frame[spec.dataset.timestamp], utc=True).dt.date == day
    return frame[ok].drop_duplicates(spec.dataset.key, keep=False)






def wait_for_version(settings: Settings, spec: PipelineSpec, version: str, probe: dict[str, Any], *,
                     timeout: float = 120) -> None:
    """Wait until the model server answers with ``version`` (it follows the alias by itself)."""
    deadline = clock.monotonic() + timeout
    with http_client(settings) as http:
        while clock.monotonic() < deadline:
            resp = http.post(f"/{spec.name}/predict", json=probe)
            if resp.status_code == 200 and resp.json()["model_version"] == version:
                return
            clock.sleep(1)
    raise TimeoutError(f"the model server did not switch to v{version} within {timeout:.0f} s")


def retrain_inline(settings: Settings, spec: PipelineSpec, decision: Decision) -> tuple[str, bool]:
    """What the asset-triggered training DAG does: train on the window ending at the day, gate."""
    from flywheel.monitoring.policy import retrain_spec
    from flywheel.training.trainer import train

    result = train(retrain_spec(spec, decision.signals), end=date.fromisoformat(decision.ds),
                   reason="retrain_request", settings=settings)
    return result.version, result.promoted


def reset_predictions(settings: Settings, spec: PipelineSpec, scenario: Scenario) -> None:
    """Drop the prediction logs of the scenario's days (a re-run replays them from scratch)."""
    client = storage.s3_client(settings)
    for offset in range(scenario.days):
        day = scenario.start + timedelta(days=offset)
        for key in storage.list_keys("predictions", layout.prediction_prefix(spec.name, day),
                                     settings=settings, client=client):
            client.delete_object(Bucket=settings.bucket("predictions"), Key=key)


# ---- the whole run -------------------------------------------------------------------------------


Retrain = Callable[[Settings, PipelineSpec, Decision], tuple[str, bool]]


def prepare_history(settings: Settings, spec: PipelineSpec, scenario: Scenario,
                    progress: Callable[[str], None] | None = None) -> None:
    """Land the scenario's files and run the data pipeline over its history (in-process)."""
    write_data(settings, spec, scenario)
    for offset in range(scenario.history_days):
        day = scenario.start + timedelta(days=offset)
        process_data(settings, spec, day, run_id=f"simulation__{day}")
        if progress:
            progress(f"history {day}")


def simulate(settings: Settings, spec: PipelineSpec, scenario: Scenario, *, days: Sequence[date] | None = None,
             retrain: Retrain = retrain_inline, on_day: Callable[[DayOutcome], None] | None = None,
             result: SimulationResult | None = None) -> SimulationResult:
    """Run the scenario's served days (all of them by default); the model server must be up."""
    result = result or SimulationResult(scenario)
    days = list(days) if days is not None else [
        scenario.first_day + timedelta(days=i) for i in range((scenario.last_day - scenario.first_day).days + 1)]
    for day in days:
        started = clock.monotonic()
        outcome = simulate_day(settings, spec, scenario, day, retrain=retrain)
        outcome.seconds = round(clock.monotonic() - started, 1)
        result.days.append(outcome)
        if on_day:
            on_day(outcome)
    return result


def simulate_day(settings: Settings, spec: PipelineSpec, scenario: Scenario, day: date, *,
                 retrain: Retrain = retrain_inline) -> DayOutcome:
    run_id = f"simulation__{day}"
    phase = scenario.phase_of(day)
    traffic = send_traffic(settings, spec, day)
    wait_for_logs(settings, spec, day, traffic["requests"])
    process_data(settings, spec, day, run_id=run_id)
    observed = checks.run_checks(spec, day, settings=settings)
    # The simulated clock: the day's checks run just after it closes (the daily cap counts
    # decisions per day of this clock, as production counts them per wall-clock day).
    now = datetime.combine(day + timedelta(days=1), time(1), tzinfo=UTC)
    decision = checks.conclude(spec, observed, run_id=run_id, settings=settings, now=now)
    drift, performance, skew = observed["drift"], observed["performance"], observed["skew"]
    outcome = DayOutcome(
        day=day.isoformat(), phase=phase.name if phase else "history",
        drift=drift_label(drift_on(day, scenario.schedule())), requests=traffic["requests"],
        served_by=traffic["versions"], drift_share=drift.get("drift_share"),
        drift_detected=bool(drift.get("drift_detected")), pr_auc=performance.get("pr_auc"),
        pr_auc_drop=performance.get("pr_auc_drop"), performance=performance["status"],
        skew=skew.get("max_mismatch_share"),
        alerts=sorted(name for name, section in observed.items() if isinstance(section, dict)
                      and (section.get("alert") or (name == "drift" and section.get("drift_detected")))),
        action=decision.action, reason=decision.reason, champion=decision.champion_version)
    if decision.triggered:
        version, promoted = retrain(settings, spec, decision)
        outcome.retrained, outcome.promoted = version, promoted
        champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
        if champion is not None:
            wait_for_version(settings, spec, str(champion.version), probe(settings, spec, day))
    log.info("simulated %s (%s): %s %s", day, outcome.phase, outcome.action, outcome.reason)
    return outcome


def probe(settings: Settings, spec: PipelineSpec, day: date) -> dict[str, Any]:
    path = settings.home / "landing" / spec.dataset.name / f"ds={day.isoformat()}" / "part-0.parquet"
    row = valid_rows(pd.read_parquet(path), spec, day).iloc[0]
    return {"transaction_id": f"probe-{day.isoformat()}", "user_id": int(row["user_id"]), "merchant_id": int(row["merchant_id"]),
            "amount": float(row["amount"]), "event_timestamp": row["event_timestamp"].isoformat(),
            "merchant_category": row["merchant_category"], "country": row["country"], "device": row["device"]}


# Short forms that keep a day on one line of an 80-column terminal (the legend says what they mean).
SHORT_ALERTS = {"performance": "perf", "quality": "qual", "freshness": "fresh"}
SHORT_ACTIONS = {"triggered": "retrain", "no_signal": "-", "insufficient_labels": "few labels",
                 "daily_cap": "daily cap", "duplicate": "duplicate", "cooldown": "cooldown", "backfill": "backfill"}
LEGEND = ("perf: delayed-label performance, qual: data quality, fresh: feature freshness; "
          "v3 ✓: retrained, v3 promoted; v3 ✗: retrained, the champion kept; "
          "few labels: a signal, too few labels to retrain")


def short_phase(phase: str) -> str:
    return phase.removesuffix("_shift")


def short_alerts(alerts: Sequence[str]) -> str:
    return ",".join(SHORT_ALERTS.get(a, a) for a in alerts) or "-"


def short_decision(outcome: DayOutcome) -> str:
    action = SHORT_ACTIONS.get(outcome.action, outcome.action)
    if outcome.retrained is None:
        return action
    return f"v{outcome.retrained} {'✓' if outcome.promoted else '✗'}"  # a retrain's outcome says it retrained


def day_line(outcome: DayOutcome) -> str:
    """One simulated day as a progress line (under 60 characters)."""
    return f"{outcome.day} {short_phase(outcome.phase):<9} {short_alerts(outcome.alerts):<15} {short_decision(outcome)}"


def outcome_table(result: SimulationResult) -> Any:
    """The day-by-day outcome as a rich table that fits an 80-column terminal, one line a day
    (``LEGEND`` says what its short forms mean; a skew alert shows in ``alerts``)."""
    from rich import box
    from rich.table import Table

    year = result.days[0].day[:4] if result.days else ""
    table = Table(title=f"Simulated production {year}, day by day", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                  pad_edge=False)
    for column in ("day", "phase", "model", "drift", "PR-AUC", "drop", "alerts", "decision"):
        table.add_column(column, no_wrap=True, justify="right" if column in ("drift", "PR-AUC", "drop") else "left")
    for d in result.days:
        table.add_row(d.day[5:], short_phase(d.phase), ",".join(f"v{v}" for v in d.served_by),
                      "-" if d.drift_share is None else f"{d.drift_share:.2f}",
                      "-" if d.pr_auc is None else f"{d.pr_auc:.3f}",
                      "-" if d.pr_auc_drop is None else f"{d.pr_auc_drop:+.2f}",
                      short_alerts(d.alerts), short_decision(d))
    return table
