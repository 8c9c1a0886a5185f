"""``flywheel``: run the ML loop locally and operate the embedded stack.

Configuration comes from FLYWHEEL_* environment variables (and the TOML file
named by FLYWHEEL_CONFIG); state lives in FLYWHEEL_HOME (default ./.flywheel).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flywheel.core.config import Profile, get_settings

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
console = Console()


@app.command()
def up(
    model_server: Annotated[bool, typer.Option(help="Also start the model server (needs a built bento)")] = False,
    exporter: Annotated[
        bool, typer.Option(help="Also start the Prometheus exporter of the monitoring summaries")
    ] = False,
    profile: Annotated[
        Profile | None,
        typer.Option(help="embedded (SQLite, LocalExecutor) or production (PostgreSQL, Redis, Celery "
                     "workers; services from FLYWHEEL_PRODUCTION__* URLs). Default: FLYWHEEL_PROFILE"),
    ] = None,
) -> None:
    """Start the stack: SeaweedFS (S3), MLflow, Airflow (+ the model server if a bento exists).

    `--exporter` adds the Prometheus exporter of the monitoring summaries (`flywheel exporter`).

    Idempotent: running services are left alone. Fails with a clear message if a port is taken.
    The production profile first creates the databases it needs and checks Redis and the broker.
    """
    from flywheel.stack import launcher as stack

    settings = get_settings()
    if profile is not None and profile is not settings.profile:
        settings = settings.model_copy(update={"profile": profile})
    services = None
    if model_server:
        services = [s.name for s in stack.SERVICES if not s.optional] + ["model-server"]
    settings = stack.up(settings, services=services, also=["exporter"] if exporter else [], console=console)
    _print_status(settings)


@app.command()
def down() -> None:
    """Stop every service of the embedded stack (SIGTERM, then SIGKILL after a grace period)."""
    from flywheel.stack import launcher as stack

    stopped = stack.down(get_settings(), console=console)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


@app.command()
def status() -> None:
    """Show what runs where: pid, port, URL, health and log file of each service."""
    _print_status(get_settings())


def _print_status(settings: object) -> None:
    from flywheel.stack import launcher as stack

    table = Table(title="Flywheel stack")
    for column in ("service", "pid", "url", "healthy", "log"):
        table.add_column(column)
    for s in stack.status(settings):  # type: ignore[arg-type]
        table.add_row(s.name, str(s.pid or "-"), s.url or "-", "yes" if s.healthy else "no", str(s.log))
    console.print(table)


@app.command()
def exporter(
    host: Annotated[str | None, typer.Option(help="Address to bind (default: FLYWHEEL_HOST, 127.0.0.1)")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port of /metrics (default: FLYWHEEL_PORTS__EXPORTER, 19108)")
    ] = None,
    cache_seconds: Annotated[
        float | None,
        typer.Option(help="Reuse one read of the store for this long (default: FLYWHEEL_EXPORTER_CACHE_S, 10)"),
    ] = None,
) -> None:
    """Serve the monitoring summaries as Prometheus metrics on http://HOST:PORT/metrics.

    Each scrape reads monitoring/<model>/latest.json of every model in the
    reports bucket (one read is reused for --cache-seconds) and exports it as
    flywheel_monitoring_* gauges labelled by model: drift share, PR-AUC and its
    drop, skew, feature miss rate, online feature age, alerts, the retraining
    decision, and flywheel_champion_version. A store that cannot be read shows
    as flywheel_monitoring_up 0, never as a failed scrape.

    Runs in the foreground until interrupted; `flywheel up --exporter` runs it
    as a service of the embedded stack. Metric list: monitoring/README.md.
    """
    import logging

    from flywheel.monitoring import exporter as exporter_mod

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    try:
        exporter_mod.serve(settings, host=host, port=port, cache_s=cache_seconds)
    except exporter_mod.ExporterError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


@app.command()
def demo(
    history_days: Annotated[int, typer.Option(help="Days of normal history to load and train on")] = 14,
    stable_days: Annotated[int, typer.Option(help="Served days of normal traffic before the first shift "
                                                  "(false alarms are counted over them)")] = 7,
    concept_days: Annotated[int, typer.Option(help="Days of the concept shift (the covariate episode "
                                                   "follows; keep it beyond the retrain cooldown)")] = 14,
) -> None:
    """Run the whole loop through Airflow on the embedded stack, then weeks of simulated production.

    History is backfilled through the data DAG and the first champion comes from the training
    DAG; the first served day goes through the data, label and monitoring DAGs; the following
    weeks (stable traffic, a concept shift seen only in delayed labels, then a covariate-shift
    episode) run day by day, and every retrain the policy triggers is an Asset event the
    scheduler turns into a training run. Prints the outcome day by day, the detection delays
    and false alarms, and where to look. Leaves the stack running; stop it with `flywheel down`.
    """
    from flywheel import demo as demo_mod
    from flywheel.simulation import CONCEPT, STABLE, Scenario

    base = Scenario()
    phases = tuple((name, stable_days if name == STABLE else concept_days if name == CONCEPT else days, kinds)
                   for name, days, kinds in base.phases)
    plan = demo_mod.DemoPlan(scenario=Scenario(start=base.start, history_days=history_days, phases=phases))
    demo_mod.run(get_settings(), console, plan)


@app.command()
def generate(
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD")] = "2026-01-01",
    days: Annotated[int, typer.Option(help="Number of daily partitions")] = 14,
    drift_from: Annotated[str | None, typer.Option(help="Inject drift from this day on")] = None,
    drift: Annotated[str, typer.Option(help="Drift kind: amount_shift or new_pattern")] = "amount_shift",
) -> None:
    """Write synthetic daily transaction partitions into the landing area (FLYWHEEL_HOME/landing)."""
    from flywheel.core.spec import load_spec
    from flywheel.datagen import DriftKind, write_landing

    settings = get_settings()
    spec = load_spec(settings=settings)
    paths = write_landing(
        settings.home / "landing", date.fromisoformat(start), days, spec.generator,
        drift_from=date.fromisoformat(drift_from) if drift_from else None,
        drift=DriftKind(drift), dataset=spec.dataset.name,
    )
    console.print(f"wrote {len(paths)} partitions under {settings.home / 'landing' / spec.dataset.name}")


@app.command()
def train(end: Annotated[str, typer.Option(help="Last day of training data, YYYY-MM-DD")]) -> None:
    """Train, register and gate a model outside Airflow (same code as the training DAG)."""
    from flywheel.core.spec import load_spec
    from flywheel.training.trainer import train as run_train

    result = run_train(load_spec(), end=date.fromisoformat(end), reason="cli")
    table = Table(title=f"candidates (selected: {result.family}, registered as v{result.version})")
    from flywheel.core.spec import TASK_METRICS

    shown = [*TASK_METRICS[result.task], *(["expected_cost"] if result.task == "binary" else [])]
    columns = [f"val_{result.metric}", *(f"holdout_{m}" for m in shown), "trials", "train_seconds",
               "search_seconds"]
    table.add_column("family")
    for column in columns:
        table.add_column(column, justify="right")
    for family, metrics in result.families.items():
        table.add_row(family, *(f"{metrics.get(c, float('nan')):.4g}" for c in columns))
    table.add_row("baseline", "", *(f"{result.metrics.get(f'baseline_{m}', float('nan')):.4g}" for m in shown))
    console.print(table)
    state = "awaiting approval" if result.awaiting_approval else ("promoted" if result.promoted else "not promoted")
    console.print(f"gate: {result.reason} → {state}")


@app.command()
def package(version: Annotated[str, typer.Option(help="Model version the bento is labelled with")]) -> None:
    """Build the BentoML bento of the model server (`bentoml build`)."""
    from flywheel.core.spec import load_spec
    from flywheel.training.packaging import build_bento

    console.print(build_bento(load_spec(), version=version))


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="Registered version to make champion")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")],
) -> None:
    """Move the `champion` alias to a version by hand; the model server follows within its refresh interval."""
    from flywheel.core.spec import load_spec
    from flywheel.training import promotion

    record = promotion.promote(load_spec().model_name, version, reason=reason)
    console.print(f"champion {record.from_version} → {record.to_version} by {record.actor}: {record.reason}")


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")]) -> None:
    """Restore the previous champion (from the audit log) in one command."""
    from flywheel.core.spec import load_spec
    from flywheel.training import promotion

    record = promotion.rollback(load_spec().model_name, reason=reason)
    console.print(f"champion {record.from_version} → {record.to_version} by {record.actor}: {record.reason}")


@app.command()
def approve(
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving")] = False,
) -> None:
    """Answer the training DAG's pending promotion approval (when `training.approval.required`).

    The same request shows in the Airflow UI under Browse → Required Actions.
    """
    from flywheel.airflow.client import AirflowClient
    from flywheel.core.spec import load_spec

    spec = load_spec()
    with AirflowClient() as client:
        pending = client.pending_approvals(f"{spec.name}_training")
        if not pending:
            console.print("no promotion is waiting for approval")
            raise typer.Exit(1)
        for request in pending:
            client.respond(request, "Reject" if reject else "Approve")
            console.print(f"{'rejected' if reject else 'approved'}: {request['subject']} ({request['run_id']})")


@app.command()
def decisions(limit: Annotated[int, typer.Option(help="How many of the latest decisions")] = 30) -> None:
    """The retraining policy's decisions: triggered or suppressed (cooldown, duplicate, cap, labels)."""
    from flywheel.core.spec import load_spec
    from flywheel.monitoring import policy

    table = Table(title="retraining policy decisions")
    for column in ("decided at", "monitored day", "action", "signals", "reason", "champion"):
        table.add_column(column)
    for d in policy.history(load_spec().model_name)[-limit:]:
        table.add_row(d.decided_at, d.ds, d.action, ",".join(d.signals.get("fired", [])) or "-", d.reason,
                      d.champion_version or "-")
    console.print(table)


@app.command()
def monitoring(
    limit: Annotated[int, typer.Option(help="How many of the latest monitored days")] = 14,
) -> None:
    """The daily monitoring summaries: drift share, PR-AUC on delayed labels, skew, quality,
    freshness and the retraining decision of each day (what `fraud_monitoring` wrote; the same
    numbers `flywheel exporter` serves to Prometheus). Reports: s3://<prefix>-reports/{drift,performance}/.
    """
    from flywheel.core.spec import load_spec
    from flywheel.monitoring import checks

    def cell(section: dict | None, key: str, fmt: str = "{:.3f}") -> str:
        if not section:
            return "-"
        value = section.get(key)
        shown = fmt.format(value) if isinstance(value, int | float) else str(section.get("status", "-"))
        return f"[red]{shown}[/red]" if section.get("alert") else shown

    table = Table(title="monitoring, day by day")
    for column in ("day", "champion", "drift share", "PR-AUC", "skew", "quality", "online age h", "decision"):
        table.add_column(column)
    for summary in checks.read_summaries(load_spec())[-limit:]:
        decision = summary.get("decision") or {}
        table.add_row(summary["ds"], str(summary.get("champion_version") or "-"),
                      cell(summary.get("drift"), "drift_share", "{:.2f}"), cell(summary.get("performance"), "pr_auc"),
                      cell(summary.get("skew"), "max_mismatch_share"), cell(summary.get("quality"), "feature_miss_rate"),
                      cell(summary.get("freshness"), "online_age_hours", "{:.0f}"),
                      f"{decision.get('action', '-')} {','.join(decision.get('fired', []))}".strip())
    console.print(table)


@app.command()
def audit() -> None:
    """Every move of the champion alias: when, who, why, from → to."""
    from flywheel.core.spec import load_spec
    from flywheel.training import promotion

    table = Table(title="champion alias history")
    for column in ("at", "action", "from", "to", "actor", "reason"):
        table.add_column(column)
    for r in promotion.history(load_spec().model_name):
        table.add_row(r.at, r.action, r.from_version or "-", r.to_version, r.actor, r.reason)
    console.print(table)


@app.command("features-apply")
def features_apply() -> None:
    """`feast apply` the feature repo for the current profile (and render feature_store.yaml)."""
    from flywheel.features import store as features

    console.print(f"rendered {features.render_feature_store_yaml()}")
    console.print(f"applied {features.apply(spec)}")


@app.command()
def replay(
    dataset: Annotated[str, typer.Argument(help="Dataset name (as in the spec's dataset.name)")],
    ds: Annotated[str, typer.Option("--ds", help="Data interval date, YYYY-MM-DD")],
    features: Annotated[bool, typer.Option(help="Also recompute and materialize the day's features")] = True,
) -> None:
    """Re-process a quarantined batch after its contract or data was fixed (ingest → validate → features).

    DATASET is any dataset of a spec under models/ (a use case or a `kind: dataset` spec).
    """
    from flywheel.core.spec import SpecError, find_dataset_spec
    from flywheel.data.contracts import replay as run_replay

    try:
        spec = find_dataset_spec(dataset)
    except SpecError as exc:
        raise typer.BadParameter(str(exc)) from exc
    date.fromisoformat(ds)
    console.print(run_replay(spec, ds, run_id=f"replay__{ds}", features=features))


@app.command("init-dataset")
def init_dataset(
    sample: Annotated[str, typer.Argument(help="A sample CSV, Parquet or JSON Lines file")],
    name: Annotated[str, typer.Option(help="Dataset name")],
    source: Annotated[str, typer.Option(help="Source template, e.g. s3://bucket/orders/ds={ds}/")],
    timestamp: Annotated[str | None, typer.Option(help="Event-time column (default: first datetime)")] = None,
    key: Annotated[str | None, typer.Option(help="Unique key column (default: first unique column)")] = None,
    owner: Annotated[str, typer.Option(help="Owning team (DAG owner)")] = "data-engineering",
    out: Annotated[str | None, typer.Option(help="Write the YAML here, e.g. models/orders.yaml "
                                                  "(default: print it)")] = None,
) -> None:
    """Draft a complete dataset spec (`kind: dataset`) with its contract from a sample file.

    Review the contract, save it under models/ and the `<name>_data` DAG (ingest → validate,
    quarantine, replay) appears in Airflow: no Python. Example:

        flywheel init-dataset orders.csv --name orders --source "s3://landing/orders/ds={ds}/" --out models/orders.yaml
    """
    from pathlib import Path

    import yaml

    from flywheel.data.contracts import draft_spec

    drafted = {"kind": "dataset", "name": name, "owner": owner,
               "dataset": draft_spec(Path(sample), name=name, source=source, timestamp=timestamp, key=key)}
    text = "# Drafted by `flywheel init-dataset` from " + Path(sample).name + ": review the contract.\n"
    text += yaml.safe_dump(drafted, sort_keys=False)
    if out:
        Path(out).write_text(text)
        console.print(f"wrote {out}")
    else:
        console.print(text, markup=False, highlight=False)


if __name__ == "__main__":
    app()
