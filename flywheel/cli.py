"""``flywheel``: run the ML loop locally and operate the embedded stack.

Configuration comes from FLYWHEEL_* environment variables (and the TOML file
named by FLYWHEEL_CONFIG); state lives in FLYWHEEL_HOME (default ./.flywheel).
"""

from __future__ import annotations

import enum
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from flywheel.core.config import Profile, get_settings

if TYPE_CHECKING:
    from flywheel.core.spec import DataSpec, PipelineSpec

app = typer.Typer(
    help=__doc__,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
console = Console()
errors = Console(stderr=True)

UseCase = Annotated[str | None, typer.Option(
    "--use-case", help="Use case (a spec's name under models/); default: the only one, or FLYWHEEL_USE_CASE")]


def fail(message: str, *, code: int = 2) -> NoReturn:
    """One clear line on stderr (what, where, what to do), no traceback; exit 2 for a user's mistake."""
    errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@app.callback()
def _check_settings() -> None:
    """Invalid configuration (environment or FLYWHEEL_CONFIG) is one line naming the setting."""
    from pydantic import ValidationError

    from flywheel.core.config import ConfigError, Settings

    try:
        Settings()  # not the cached one: a command may change the environment before reading it
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        fail(f"configuration: {where}: {first['msg'].removeprefix('Value error, ')}")
    except ConfigError as exc:
        fail(f"configuration: {exc}")


def use_case_spec(name: str | None) -> PipelineSpec:
    """The use case ``--use-case`` names (default: the only one); a clear error line otherwise."""
    from flywheel.core import catalog
    from flywheel.core.spec import PipelineSpec

    try:
        spec = catalog.resolve(name)
    except catalog.SpecError as exc:
        fail(str(exc))
    assert isinstance(spec, PipelineSpec)
    return spec


def any_spec(name: str | None) -> DataSpec:
    """A use case or a dataset spec (``kind: dataset``) by name (default: the only use case)."""
    from flywheel.core import catalog

    try:
        return catalog.resolve(name, datasets=True)
    except catalog.SpecError as exc:
        fail(str(exc))


def _iso_date(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date: use YYYY-MM-DD")


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
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Let the model server start without an API key, serving without "
                           "authentication (it warns loudly); a configured key is still required")
    ] = False,
) -> None:
    """Start the stack: SeaweedFS (S3), MLflow, Airflow (+ the model server if a bento exists).

    `--exporter` adds the Prometheus exporter of the monitoring summaries (`flywheel exporter`).
    The model server refuses to start without an API key (FLYWHEEL_API_KEY, or the one `up`
    generates into <home>/secrets.json) unless `--insecure` is given.

    Idempotent: running services are left alone. Fails with a clear message if a port is taken.
    The production profile first creates the databases it needs and checks Redis and the broker.
    """
    from flywheel.stack import launcher as stack

    settings = get_settings()
    if profile is not None and profile is not settings.profile:
        settings = settings.model_copy(update={"profile": profile})
    if insecure:
        settings = settings.model_copy(update={"serving_insecure": True})
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
def demo() -> None:
    """The demo is an example, not part of the engine: run `make demo` (python -m examples.demo)."""
    console.print("The demo lives in examples/demo.py: run `make demo` from a checkout "
                  "(or `python -m examples.demo --help`). Synthetic fraud data: "
                  "`python -m examples.fraud.generator --help`.")


@app.command()
def train(end: Annotated[str, typer.Option(help="Last day of training data, YYYY-MM-DD")],
          use_case: UseCase = None) -> None:
    """Train, register and gate a model outside Airflow (same code as the training DAG)."""
    from flywheel.training.trainer import train as run_train

    result = run_train(use_case_spec(use_case), end=_iso_date(end, "--end"), reason="cli")
    table = Table(title=f"candidates (selected: {result.family}, registered as v{result.version})")
    columns = ["val_pr_auc", "holdout_pr_auc", "holdout_roc_auc", "holdout_expected_cost", "trials",
               "train_seconds", "search_seconds"]
    table.add_column("family")
    for column in columns:
        table.add_column(column, justify="right")
    for family, metrics in result.families.items():
        table.add_row(family, *(f"{metrics.get(c, float('nan')):.4g}" for c in columns))
    table.add_row("baseline", "", f"{result.metrics['baseline_pr_auc']:.4g}",
                  f"{result.metrics['baseline_roc_auc']:.4g}", f"{result.metrics['baseline_expected_cost']:.4g}")
    console.print(table)
    state = "awaiting approval" if result.awaiting_approval else ("promoted" if result.promoted else "not promoted")
    console.print(f"gate: {result.reason} → {state}")


@app.command()
def package(version: Annotated[str, typer.Option(help="Model version the bento is labelled with")],
            use_case: UseCase = None) -> None:
    """Build the BentoML bento of the model server (`bentoml build`)."""
    from flywheel.training.packaging import build_bento

    console.print(build_bento(use_case_spec(use_case), version=version))


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="Registered version to make champion")],
    reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")],
    use_case: UseCase = None,
) -> None:
    """Move the `champion` alias to a version by hand; the model server follows within its refresh interval."""
    from flywheel.core.lease import LeaseBusy
    from flywheel.training import promotion

    try:
        record = promotion.promote(use_case_spec(use_case).model_name, version, reason=reason)
    except (promotion.PromotionError, LeaseBusy) as exc:
        fail(str(exc))
    console.print(f"champion {record.from_version} → {record.to_version} by {record.actor}: {record.reason}")


@app.command()
def rollback(reason: Annotated[str, typer.Option(help="Why (kept in the audit log)")],
             use_case: UseCase = None) -> None:
    """Restore the previous champion (from the audit log) in one command."""
    from flywheel.core.lease import LeaseBusy
    from flywheel.training import promotion

    try:
        record = promotion.rollback(use_case_spec(use_case).model_name, reason=reason)
    except (promotion.PromotionError, LeaseBusy) as exc:
        fail(str(exc))
    console.print(f"champion {record.from_version} → {record.to_version} by {record.actor}: {record.reason}")


@app.command("rollout")
def rollout_step(
    use_case: UseCase = None,
    day: Annotated[str | None, typer.Option(help="Last event day of the window read (YYYY-MM-DD); today")] = None,
    start: Annotated[str | None, typer.Option(help="Put this version into the spec's first rollout stage")] = None,
    reason: Annotated[str, typer.Option(help="Why (with --start; kept in the audit log)")] = "",
) -> None:
    """Move the version under rollout one stage (shadow → canary → champion) when its live metrics
    pass the spec's `rollout` thresholds, or take it out of traffic when they fail (audited)."""
    import getpass

    from flywheel.core.lease import LeaseBusy
    from flywheel.monitoring import rollout
    from flywheel.training import promotion, stages

    spec = use_case_spec(use_case)
    try:
        ds = date.fromisoformat(day) if day else None
    except ValueError as exc:
        fail(f"--day {day!r}: {exc}")
    try:
        if start is not None:
            if spec.rollout.mode == "champion_only":
                fail(f"use case {spec.name} has rollout.mode champion_only: use `flywheel promote`")
            record = stages.begin(spec.model_name, start, spec.rollout.mode, reason=reason, actor=getpass.getuser())
            console.print(f"v{record.to_version} entered {record.action} (champion {record.from_version})")
            return
        result = rollout.step(spec, ds=ds)
    except (promotion.PromotionError, LeaseBusy) as exc:
        fail(str(exc))
    moved = f" → {result.record.action} v{result.record.to_version}" if result.record else ""
    console.print(f"{result.verdict.action}{moved}: {result.verdict.reason}")


@app.command()
def approve(
    reject: Annotated[bool, typer.Option("--reject", help="Reject instead of approving")] = False,
    use_case: UseCase = None,
) -> None:
    """Answer the training DAG's pending promotion approval (when `training.approval.required`).

    The same request shows in the Airflow UI under Browse → Required Actions.
    """
    from flywheel.airflow.client import AirflowClient

    spec = use_case_spec(use_case)
    with AirflowClient() as client:
        pending = client.pending_approvals(f"{spec.name}_training")
        if not pending:
            console.print("no promotion is waiting for approval")
            raise typer.Exit(1)
        for request in pending:
            client.respond(request, "Reject" if reject else "Approve")
            console.print(f"{'rejected' if reject else 'approved'}: {request['subject']} ({request['run_id']})")


@app.command()
def decisions(limit: Annotated[int, typer.Option(help="How many of the latest decisions")] = 30,
              use_case: UseCase = None) -> None:
    """The retraining policy's decisions: triggered or suppressed (cooldown, duplicate, cap, labels)."""
    from flywheel.monitoring import policy

    spec = use_case_spec(use_case)
    table = Table(title="retraining policy decisions")
    for column in ("decided at", "monitored day", "action", "signals", "reason", "champion"):
        table.add_column(column)
    for d in policy.history(spec.model_name)[-limit:]:
        table.add_row(d.decided_at, d.ds, d.action, ",".join(d.signals.get("fired", [])) or "-", d.reason,
                      d.champion_version or "-")
    console.print(table)


@app.command()
def monitoring(
    limit: Annotated[int, typer.Option(help="How many of the latest monitored days")] = 14,
    use_case: UseCase = None,
) -> None:
    """The daily monitoring summaries: drift share, PR-AUC on delayed labels, skew, quality,
    freshness and the retraining decision of each day (what `fraud_monitoring` wrote; the same
    numbers `flywheel exporter` serves to Prometheus). Reports: s3://<prefix>-reports/{drift,performance}/.
    """
    from flywheel.monitoring import checks

    spec = use_case_spec(use_case)

    def cell(section: dict | None, key: str, fmt: str = "{:.3f}") -> str:
        if not section:
            return "-"
        value = section.get(key)
        shown = fmt.format(value) if isinstance(value, int | float) else str(section.get("status", "-"))
        return f"[red]{shown}[/red]" if section.get("alert") else shown

    table = Table(title="monitoring, day by day")
    for column in ("day", "champion", "drift share", "PR-AUC", "skew", "quality", "online age h", "decision"):
        table.add_column(column)
    for summary in checks.read_summaries(spec)[-limit:]:
        decision = summary.get("decision") or {}
        table.add_row(summary["ds"], str(summary.get("champion_version") or "-"),
                      cell(summary.get("drift"), "drift_share", "{:.2f}"), cell(summary.get("performance"), "pr_auc"),
                      cell(summary.get("skew"), "max_mismatch_share"), cell(summary.get("quality"), "feature_miss_rate"),
                      cell(summary.get("freshness"), "online_age_hours", "{:.0f}"),
                      f"{decision.get('action', '-')} {','.join(decision.get('fired', []))}".strip())
    console.print(table)


@app.command()
def audit(use_case: UseCase = None) -> None:
    """Every move of the champion alias: when, who, why, from → to."""
    from flywheel.training import promotion

    spec = use_case_spec(use_case)
    table = Table(title="champion alias history")
    for column in ("at", "action", "outcome", "from", "to", "actor", "reason"):
        table.add_column(column)
    for r in promotion.history(spec.model_name):
        table.add_row(r.at, r.action, r.outcome, r.from_version or "-", r.to_version, r.actor, r.reason)
    console.print(table)


Version = Annotated[str | None, typer.Option("--version", help="Model version (default: the champion, else the latest)")]


@app.command()
def report(version: Version = None, update_card: Annotated[bool, typer.Option(
        "--update-card", help="Also rewrite the rubric in the version's model card")] = False,
           use_case: UseCase = None) -> None:
    """The ML Test Score rubric of a version (Breck et al. 2017), each test with its evidence."""
    from flywheel.monitoring import testscore as evidence_report

    spec = use_case_spec(use_case)
    try:
        rubric, url = evidence_report.report(spec, version, update_card=update_card)
    except evidence_report.errors() as exc:
        fail((str(exc).strip().splitlines() or [type(exc).__name__])[0])
    wide = Console(width=80)
    wide.print(evidence_report.table(rubric))
    wide.print(f"card: {url or 'none (trained before model cards)'}", soft_wrap=True)


@app.command()
def reproduce(version: Version = None, use_case: UseCase = None) -> None:
    """Retrain a version (same window, family, parameters, seed) and compare it with the registered one."""
    from flywheel.monitoring import testscore as evidence_report
    from flywheel.training import drills

    spec = use_case_spec(use_case)
    try:
        result = drills.reproduce(spec, evidence_report.resolve_version(spec, version))
    except evidence_report.errors() as exc:
        fail((str(exc).strip().splitlines() or [type(exc).__name__])[0])
    console.print(f"{'reproduced' if result.passed else 'NOT reproduced'}: max |Δscore| {result.max_abs_diff:.3g}, "
                  f"{result.metric} {result.reproduced:.6g} vs {result.logged:.6g} logged ({result.window})")
    raise typer.Exit(0 if result.passed else 1)


@app.command()
def drill(use_case: UseCase = None) -> None:
    """Rollback drill: roll the champion back to the previous one and restore it (both audited)."""
    from flywheel.core.lease import LeaseBusy
    from flywheel.training import drills, promotion

    try:
        result = drills.rollback_drill(use_case_spec(use_case))
    except (promotion.PromotionError, LeaseBusy) as exc:
        fail(str(exc))
    console.print(f"drill {'passed' if result.passed else 'FAILED'}: v{result.champion} → v{result.rolled_back_to} "
                  f"→ v{result.restored}")
    raise typer.Exit(0 if result.passed else 1)


@app.command("features-apply")
def features_apply(use_case: UseCase = None) -> None:
    """`feast apply` a use case's entities, views and service (and render feature_store.yaml).

    Every use case's objects are namespaced (`<use case>_<entity>`), so applying one leaves the
    others in the registry untouched; the `feast` CLI reads the same repo (feature_repo/).
    """
    from flywheel.features import store as features

    console.print(f"rendered {features.render_feature_store_yaml()}")
    console.print(f"applied {features.apply(use_case_spec(use_case))}")


@app.command()
def replay(
    dataset: Annotated[str, typer.Argument(help="Dataset name (as in the spec's dataset.name)")],
    ds: Annotated[str, typer.Option("--ds", help="Data interval date, YYYY-MM-DD")],
    features: Annotated[bool, typer.Option(help="Also recompute and materialize the day's features")] = True,
) -> None:
    """Re-process a quarantined batch after its contract or data was fixed (ingest → validate → features).

    DATASET is any dataset of a spec under models/ (a use case or a `kind: dataset` spec).
    """
    from flywheel.core import catalog
    from flywheel.core.lease import PartitionBusy
    from flywheel.data.validation import ContractViolation
    from flywheel.runs import replay as run_replay

    try:
        _, spec = catalog.find_dataset(dataset)
    except catalog.SpecError as exc:
        fail(str(exc))
    _iso_date(ds, "--ds")
    try:
        console.print(run_replay(spec, ds, run_id=f"replay__{ds}", features=features))
    except (ContractViolation, PartitionBusy) as exc:
        fail(str(exc), code=1)


def _write(text: str, out: str | None, *, force: bool) -> None:
    """Print the draft, or write it to ``out`` (never over an existing file without --force)."""
    if out is None:
        console.print(text, markup=False, highlight=False)
        return
    path = Path(out)
    if path.exists() and not force:
        fail(f"{path} exists: pass --force to overwrite it, or choose another --out")
    if not path.parent.is_dir():
        fail(f"--out {path}: folder {path.parent} does not exist")
    path.write_text(text)
    errors.print(f"wrote {path}")


def _notes(notes: list[str]) -> None:
    for note in notes:
        errors.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


class Format(enum.StrEnum):
    csv = "csv"
    parquet = "parquet"
    jsonl = "jsonl"


class Task(enum.StrEnum):
    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"


@app.command("init-dataset")
def init_dataset(
    samples: Annotated[list[str], typer.Argument(help="Sample files (CSV, Parquet, JSON Lines) or a quoted glob, "
                                                      "e.g. 'landing/flights/ds=2013-01-0*/*.csv'")],
    name: Annotated[str, typer.Option(help="Dataset name (lower-case letters, digits, _)")],
    source: Annotated[str, typer.Option(help="Source template, e.g. s3://bucket/orders/ds={ds}/")],
    timestamp: Annotated[str | None, typer.Option(help="Event-time column (default: the first datetime)")] = None,
    key: Annotated[str | None, typer.Option(help="Row key: a column, a composite 'a,b,c', or 'none' (rows keyed "
                                                 "by a hash of the row). Default: a column unique in every sample")] = None,
    fmt: Annotated[Format | None, typer.Option("--format", help="File format (default: from the suffix)")] = None,
    owner: Annotated[str, typer.Option(help="Owning team (DAG owner)")] = "data-engineering",
    out: Annotated[str | None, typer.Option(help="Write the YAML here, e.g. models/orders.yaml "
                                                  "(default: print it)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists")] = False,
) -> None:
    """Draft a dataset spec (`kind: dataset`) with its contract from several sample files.

    Types, nullability and allowed sets come from all samples; calendar-like columns get their
    natural range or none, id-like columns none, other numeric ranges are widened by the observed
    span; every such choice is printed as a note. Review it, save it under models/ and the
    `<name>_data` DAG (ingest → validate, quarantine, replay) appears in Airflow. Example:

        flywheel init-dataset 'samples/orders-*.csv' --name orders --source "s3://landing/orders/ds={ds}/" --key order_id,line --out models/orders.yaml
    """
    from flywheel.core.spec import DataSpec
    from flywheel.data.onboarding import DraftError, draft_dataset, expand_samples, parse_key, to_yaml

    try:
        paths = expand_samples(samples)
        draft = draft_dataset(paths, name=name, source=source, timestamp=timestamp, key=parse_key(key),
                              fmt=fmt.value if fmt else None)
        drafted = {"kind": "dataset", "name": name, "owner": owner, "dataset": draft.spec}
        DataSpec.model_validate({k: v for k, v in drafted.items() if k != "kind"})
    except DraftError as exc:
        fail(str(exc))
    _notes(draft.notes)
    shown = ", ".join(p.name for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    text = f"# Drafted by `flywheel init-dataset` from {shown}: review the contract.\n"
    _write(text + to_yaml(drafted), out, force=force)


@app.command("init-use-case")
def init_use_case(
    dataset: Annotated[str, typer.Option(help="The dataset (a spec under models/, e.g. from init-dataset)")],
    label: Annotated[str, typer.Option(help="Label column, or a SQL expression on columns ('arr_delay > 15')")],
    task: Annotated[Task, typer.Option(help="binary, multiclass or regression")],
    entities: Annotated[str, typer.Option(help="Columns the rows are grouped by for aggregates, 'a,b' (a+b: "
                                               "one entity with a composite key)")],
    request: Annotated[str | None, typer.Option(help="Columns known at prediction time, 'c,d' (default: every "
                                                     "contract column but label, key, timestamp, entities)")] = None,
    name: Annotated[str | None, typer.Option(help="Use-case name (default: the dataset spec's name)")] = None,
    label_name: Annotated[str | None, typer.Option(help="Name of a label expression (default: from it)")] = None,
    out: Annotated[str | None, typer.Option(help="Write the YAML here, e.g. models/flights.yaml "
                                                  "(default: print it)")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists")] = False,
) -> None:
    """Draft a complete use-case spec on a dataset spec: label, entities with default windowed
    aggregations, request features, training, monitoring. It trains and serves as drafted.

    The use-case spec carries the dataset section: it replaces the dataset spec (write it over
    that file with --force, or delete the dataset spec). Example:

        flywheel init-use-case --dataset flights --label 'arr_delay > 15' --task binary --entities carrier,origin --out models/flights.yaml --force
    """
    import yaml

    from flywheel.core import catalog
    from flywheel.core.spec import PipelineSpec, SpecError
    from flywheel.data.onboarding import DraftError, draft_use_case, to_yaml

    try:
        source_file, data = catalog.find_dataset(dataset)
        draft = draft_use_case(data, label=label, task=task.value, entities=_split(entities),
                               request=_split(request) if request is not None else None, name=name,
                               label_name=label_name,
                               dataset_section=(yaml.safe_load(source_file.read_text()) or {}).get("dataset"))
        PipelineSpec.model_validate(draft.spec)
    except (DraftError, SpecError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
    _notes(draft.notes)
    if out is not None and Path(out).resolve() != source_file.resolve():
        errors.print(f"note: {source_file} ingests the same dataset: delete it once {out} is reviewed "
                     "(two specs may not write one dataset)", highlight=False, markup=False, soft_wrap=True)
    text = (f"# Drafted by `flywheel init-use-case` on {source_file.name}: review the label, the features "
            "and the monitoring.\n")
    _write(text + to_yaml(draft.spec), out, force=force)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@app.command()
def backfill(
    first: Annotated[str, typer.Option("--from", help="First data interval, YYYY-MM-DD")],
    last: Annotated[str, typer.Option("--to", help="Last data interval, YYYY-MM-DD (included)")],
    use_case: UseCase = None,
    reprocess: Annotated[str, typer.Option(help="Rerun existing runs: none, failed or completed")] = "completed",
    max_active_runs: Annotated[int, typer.Option(help="Runs at a time")] = 4,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds")] = 6 * 3600,
) -> None:
    """Run the data DAG (`<use case>_data`) over a range of days through the running scheduler.

    Creates an Airflow backfill over the REST API (the UI's Backfill dialog does the same) and
    shows a progress bar of the runs done and failed; exits 1 naming the failed runs and tasks.
    A `kind: dataset` spec can be named too. Needs the stack: `flywheel up`.
    """
    spec = any_spec(use_case)
    start, end = _iso_date(first, "--from"), _iso_date(last, "--to")
    if end < start:
        fail(f"--to {last} is before --from {first}: pass the first day, then the last")
    if reprocess not in ("none", "failed", "completed"):
        fail(f"--reprocess {reprocess!r}: use none, failed or completed")
    _run_backfill(f"{spec.name}_data", start, end, reprocess=reprocess, max_active_runs=max_active_runs,
                  timeout=timeout)


def _run_backfill(dag_id: str, start: date, end: date, *, reprocess: str, max_active_runs: int,
                  timeout: float) -> None:
    import time

    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flywheel.airflow.client import AirflowClient, AirflowClientError

    days = (end - start).days + 1
    settings = get_settings()
    try:
        from flywheel.stack.launcher import revive_scheduler

        with AirflowClient(settings, on_poll=lambda: revive_scheduler(settings)) as client:
            if client.wait_for_dag(dag_id, timeout=120).get("is_paused"):
                client.unpause(dag_id)
                client.settle_after_unpause(dag_id)
            backfill_id = client.backfill(dag_id, start, end, max_active_runs=max_active_runs,
                                          reprocess_behavior=reprocess)  # type: ignore[arg-type]
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn())
            deadline = time.monotonic() + timeout
            with Progress(*columns, console=errors) as bar:
                task = bar.add_task(f"{dag_id} {start}..{end}", total=days, failed=0)
                while True:
                    progress = client.backfill_progress(backfill_id)
                    bar.update(task, completed=progress.succeeded + len(progress.failed),
                               failed=len(progress.failed))
                    if progress.done(days) or time.monotonic() > deadline:
                        break
                    client.pause_between_polls()
            failed = {run: client.task_states(dag_id, run) for run in progress.failed}
    except httpx.TransportError as exc:
        fail(f"Airflow is not reachable at {settings.airflow_url} ({exc}): start the stack with `flywheel up`",
             code=1)
    except AirflowClientError as exc:
        fail(f"backfill of {dag_id}: {exc}", code=1)
    if not progress.done(days):
        fail(f"backfill {backfill_id} of {dag_id}: not finished after {timeout:.0f} s "
             f"({progress.succeeded} of {days} runs succeeded); it goes on in Airflow", code=1)
    for run, states in failed.items():
        bad = ", ".join(t for t, s in states.items() if s in ("failed", "upstream_failed")) or "?"
        errors.print(f"failed: {run} ({bad}): `flywheel airflow tasks logs` or the UI show why", highlight=False)
    if failed:
        raise typer.Exit(1)
    console.print(f"backfill {backfill_id} of {dag_id}: {progress.succeeded} runs succeeded")


@app.command("airflow", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                          "help_option_names": []})
def airflow_cli(ctx: typer.Context) -> None:
    """Run the plain `airflow` CLI against this stack (its AIRFLOW_HOME, database and settings):
    `flywheel airflow dags list`, `flywheel airflow backfill create --dag-id ...`. No environment
    variables needed. Every argument goes to airflow as it is.
    """
    import subprocess
    import sys

    from flywheel.stack import launcher as stack

    settings = get_settings()
    try:
        env = stack.airflow_env(settings)
    except stack.StackError as exc:
        fail(f"{exc} (FLYWHEEL_HOME={settings.home})")
    binary = Path(sys.executable).parent / "airflow"
    command = [str(binary) if binary.exists() else "airflow", *ctx.args]
    raise typer.Exit(subprocess.call(command, env=env))


if __name__ == "__main__":
    app()
