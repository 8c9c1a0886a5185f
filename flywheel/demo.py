"""The README's ``make demo``: the whole loop on the embedded stack, through Airflow.

1. start the stack; generate two weeks of transactions plus drifted days;
2. backfill the data DAG (ingest → validate → features) over the two weeks;
3. run the training DAG (train → gate → package); start the model server;
4. replay real transactions over HTTP; a drift check finds nothing;
5. ingest drifted days, replay them; the drift check emits a retrain request,
   the scheduler runs the training DAG on it and a new version is registered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from flywheel import promotion, registry, stack, storage
from flywheel.airflow_client import AirflowClient
from flywheel.config import Settings, mask
from flywheel.datagen import DriftKind, write_landing
from flywheel.spec import PipelineSpec, load_spec

START = date(2026, 1, 1)


@dataclass
class DemoPlan:
    history_days: int = 14
    drift_days: int = 3
    drift: DriftKind = DriftKind.AMOUNT_SHIFT
    batch_size: int = 100

    @property
    def train_end(self) -> date:
        return START + timedelta(days=self.history_days - 1)

    @property
    def drift_start(self) -> date:
        return START + timedelta(days=self.history_days)

    @property
    def last_day(self) -> date:
        return START + timedelta(days=self.history_days + self.drift_days - 1)


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


def valid_rows(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """Rows a product service would send (the generator's bad records left out)."""
    allowed = spec.dataset.contract.columns["merchant_category"].allowed or []
    ok = frame["user_id"].notna() & (frame["amount"] > 0) & frame["merchant_category"].isin(allowed)
    return frame[ok]


def replay(settings: Settings, spec: PipelineSpec, day: date, *, batch_size: int) -> dict[str, Any]:
    """Send one day of transactions to the model server: single calls, then batches."""
    path = settings.home / "landing" / spec.dataset.name / f"ds={day.isoformat()}" / "part-0.parquet"
    rows = valid_rows(pd.read_parquet(path), spec)
    rows = rows.assign(event_timestamp=rows["event_timestamp"].map(lambda t: t.isoformat()),
                       user_id=rows["user_id"].astype("int64"), merchant_id=rows["merchant_id"].astype("int64"))
    records = rows.drop(columns=[spec.label]).to_dict("records")
    headers = {"X-API-Key": settings.api_key.get_secret_value() if settings.api_key else ""}
    versions: set[str] = set()
    flagged = 0
    with httpx.Client(base_url=str(settings.model_server_url), headers=headers, timeout=30) as http:
        for record in records[:20]:
            resp = http.post("/predict", json=record)
            resp.raise_for_status()
            versions.add(resp.json()["model_version"])
            flagged += resp.json()["is_fraud"]
        for i in range(20, len(records), batch_size):
            resp = http.post("/predict_batch", json=records[i : i + batch_size])
            resp.raise_for_status()
            for pred in resp.json():
                versions.add(pred["model_version"])
                flagged += pred["is_fraud"]
    return {"day": day.isoformat(), "requests": len(records), "flagged": flagged, "versions": sorted(versions)}


def wait_for_prediction_logs(settings: Settings, spec: PipelineSpec, day: date, *, timeout: float = 60) -> int:
    """Prediction logs are flushed off the request path: wait until they land."""
    deadline = time.monotonic() + timeout
    prefix = f"{spec.model_name}/dt={day.isoformat()}/"
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


def wait_for_retrain(client: AirflowClient, spec: PipelineSpec, known: set[str], *, timeout: float = 420) -> str:
    """Wait for a training run the retrain request caused (not one we triggered)."""
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
    """The demo replays past days against the online store: a re-run must start from the
    same state, so drop the online store (rebuilt by the backfill, in date order) and the
    prediction logs of the replayed days. Data, models and reports are kept."""
    from flywheel import features

    stack.down(settings, services=["model-server"], console=console)
    features.reset_online_store(settings)
    client = storage.s3_client(settings)
    for offset in range(plan.history_days + plan.drift_days):
        day = START + timedelta(days=offset)
        keys = storage.list_keys("predictions", f"{spec.model_name}/dt={day.isoformat()}/",
                                 settings=settings, client=client)
        for key in keys:
            client.delete_object(Bucket=settings.bucket("predictions"), Key=key)


def run(settings: Settings, console: Console, plan: DemoPlan | None = None) -> DemoReport:
    plan = plan or DemoPlan()
    report = DemoReport()
    spec = load_spec(settings=settings)
    data_dag, train_dag = f"{spec.name}_data", f"{spec.name}_training"

    with Timer(report, console, "start the embedded stack"):
        core = [s.name for s in stack.SERVICES if not s.optional]  # the model server comes later
        settings = stack.up(settings, services=core, console=console)
    with Timer(report, console, "generate data"):
        days = plan.history_days + plan.drift_days
        write_landing(settings.home / "landing", START, days, spec.generator,
                      drift_from=plan.drift_start, drift=plan.drift, dataset=spec.dataset.name)
        console.print(f"{days} daily partitions under {settings.home / 'landing'} "
                      f"({plan.drift.value} drift from {plan.drift_start})")
    client = AirflowClient(settings)
    for dag_id in (data_dag, train_dag, f"{spec.name}_monitoring"):
        client.wait_for_dag(dag_id, timeout=180)
        client.unpause(dag_id)

    with Timer(report, console, "reset the simulated traffic of an earlier demo"):
        reset_simulation(settings, spec, plan, console)
    for stale in client.active_backfills(data_dag):  # left by an interrupted earlier demo
        console.print(f"cancelling unfinished backfill {stale} of {data_dag}")
        client.cancel_backfill(stale)
    with Timer(report, console, f"backfill {data_dag} {START}..{plan.train_end}"):
        backfill = client.backfill(data_dag, START, plan.train_end, reprocess_behavior="completed")
        states = client.wait_for_runs(data_dag, backfill, timeout=900)
        console.print(f"backfill {backfill}: {len(states)} runs succeeded")

    with Timer(report, console, "train, gate and package the first model"):
        first = client.trigger(train_dag, conf={"end": plan.train_end.isoformat()})
        client.wait_for_runs(train_dag, [first], timeout=600)
        champion = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
        if champion is None:
            raise RuntimeError("the first model did not become champion: see the training run's log")
        latest = latest_version(settings, spec)
        if str(champion.version) != latest:  # a re-run: an earlier demo's model holds the alias
            promotion.promote(spec.model_name, latest, actor="flywheel-demo",
                              reason="demo re-run: serve the model trained on the loaded history",
                              settings=settings)
        mv = registry.client(settings).get_model_version(spec.model_name, latest)
        report.facts["first_champion"] = latest
        console.print(f"{spec.model_name} v{latest} ({mv.tags.get('family')}) is champion "
                      f"({mv.tags.get('gate.reason')})")
        console.print(family_table(settings, spec, mv.tags["run_id"]))

    with Timer(report, console, "serve the champion and replay normal traffic"):
        settings = stack.up(settings, services=["model-server"], console=console)
        for offset in (1, 0):
            result = replay(settings, spec, plan.train_end - timedelta(days=offset), batch_size=plan.batch_size)
            console.print(f"replayed {result}")
        wait_for_prediction_logs(settings, spec, plan.train_end)
        tasks = run_monitoring(client, spec, plan.train_end)
        report.facts["normal_day_retrain"] = tasks.get("request_retrain")
        console.print(f"drift check {plan.train_end}: tasks {tasks}")

    with Timer(report, console, "inject drift: ingest and replay drifted days"):
        backfill = client.backfill(data_dag, plan.drift_start, plan.last_day, reprocess_behavior="completed")
        client.wait_for_runs(data_dag, backfill, timeout=600)
        drift_day = plan.drift_start + timedelta(days=1)
        console.print(f"replayed {replay(settings, spec, drift_day, batch_size=plan.batch_size)}")
        wait_for_prediction_logs(settings, spec, drift_day)

    with Timer(report, console, "drift detected → retrain request → training DAG"):
        known = {r.run_id for r in client.list_runs(train_dag)}
        tasks = run_monitoring(client, spec, drift_day)
        console.print(f"drift check {drift_day}: tasks {tasks}")
        if tasks.get("request_retrain") != "success":
            raise RuntimeError(f"drift on {drift_day} did not request a retrain: {tasks}")
        retrain = wait_for_retrain(client, spec, known)
        latest = latest_version(settings, spec)
        report.facts.update(retrain_run=retrain, latest_version=latest, drift_day=drift_day.isoformat())
        console.print(f"retrain run {retrain} registered {spec.model_name} v{latest}")
    report.facts["report_url"] = save_report(settings, spec, drift_day)
    summary(settings, spec, report, console)
    return report


def family_table(settings: Settings, spec: PipelineSpec, run_id: str) -> Table:
    """Each candidate family's best model on the holdout (and the baseline), and its cost."""
    metrics = registry.client(settings).get_run(run_id).data.metrics
    recall = f"recall_at_p{int(spec.training.precision_target * 100)}"
    columns = {"PR-AUC": "pr_auc", "ROC-AUC": "roc_auc", recall.replace("_at_", "@"): recall,
               "exp. cost": "expected_cost", "trials": "trials", "fit s": "train_seconds",
               "search s": "search_seconds"}
    table = Table(title="candidate families on the holdout (selected by validation score)")
    table.add_column("family")
    for title in columns:
        table.add_column(title, justify="right")

    def cell(key: str) -> str:
        return f"{metrics[key]:.4g}" if key in metrics else "-"

    holdout = {"pr_auc", "roc_auc", recall, "expected_cost"}
    for family in spec.training.candidates:
        keys = [f"{family}_holdout_{k}" if k in holdout else f"{family}_{k}" for k in columns.values()]
        table.add_row(family, *(cell(k) for k in keys))
    table.add_row(f"baseline ({spec.training.baseline})", *(cell(f"baseline_{k}") for k in columns.values()))
    return table


def save_report(settings: Settings, spec: PipelineSpec, day: date) -> str:
    """A local copy of the day's drift report to open in a browser (no credentials in a URL)."""
    key = f"drift/{spec.model_name}/ds={day.isoformat()}/report.html"
    target = settings.home / "reports" / f"drift-{spec.model_name}-{day.isoformat()}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(storage.get_bytes("reports", key, settings=settings))
    return f"{target.as_uri()}  (s3://{settings.bucket('reports')}/{key})"


def summary(settings: Settings, spec: PipelineSpec, report: DemoReport, console: Console) -> None:
    table = Table(title="Flywheel demo: what to open", show_lines=False)
    table.add_column("what")
    table.add_column("where", overflow="fold")
    password = settings.airflow_password.get_secret_value() if settings.airflow_password else ""
    table.add_row("Airflow UI", f"{settings.airflow_url}  (user {settings.airflow_user}, password "
                  f"{mask(password)} in {settings.home / 'secrets.json'})")
    table.add_row("MLflow UI", f"{settings.mlflow_tracking_uri}/#/models/{spec.model_name}")
    table.add_row("Model API (Swagger)", f"{settings.model_server_url}/  (header X-API-Key, see secrets.json)")
    table.add_row("Latest drift report", str(report.facts.get("report_url")))
    table.add_row("Stop everything", "make down   (or: flywheel down)")
    console.print(table)
    timing = Table(title="Timings (s)")
    timing.add_column("step")
    timing.add_column("seconds", justify="right")
    for step, seconds in report.timings.items():
        timing.add_row(step, f"{seconds:.1f}")
    timing.add_row("total", f"{sum(report.timings.values()):.1f}")
    console.print(timing)
    console.print({k: v for k, v in report.facts.items() if k != "report_url"})
