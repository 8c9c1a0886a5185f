"""What the Flywheel view of the Airflow UI shows: one row per use case, read from the registry
and the object store, and the links to what each stage produced.

Per use case (every ``kind: pipeline`` spec of ``specs_dir``): the versions behind the registered
model's aliases (``champion``; ``challenger``: registered, not promoted; the version behind the
``rollout`` alias under its stage, ``shadow`` or ``canary``; any other alias too), the latest
monitoring summary's drift, performance and skew status, the retraining decision of that day and
its reason, and links: the champion's MLflow run and version, its model card (version tag
``flywheel.model_card``), the GX Data Docs of the latest curated partition, the latest Evidently
drift report and the model API's Swagger UI.

Objects of the reports zone (Data Docs, Evidently reports) are private to the object store's
identities; the view links them through its own authenticated route (:data:`REPORTS_ROUTE`),
which serves only the prefixes of :data:`PUBLISHED_PREFIXES`. No credential is ever rendered.

A use case that fails to load or to read shows its error in its row; the others still render.
"""

from __future__ import annotations

import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flywheel.core import layout, storage
from flywheel.core.catalog import load_folder
from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec

log = logging.getLogger(__name__)

ALIASES = ("champion", "challenger", "shadow", "canary")
MODEL_CARD_TAG = "flywheel.model_card"
# The view's route that serves reports-zone objects, relative to the view's own URL.
REPORTS_ROUTE = "reports/"
# What that route serves: the reports the loop publishes for people, nothing else of the zone
# (leases, audit records and decisions stay in the store).
PUBLISHED_PREFIXES = ("data-docs/", "drift/", "performance/")


@dataclass(frozen=True)
class Link:
    label: str
    href: str


@dataclass
class UseCaseRow:
    """One use case as the view shows it; ``error`` set when it could not be read."""

    name: str
    model: str = ""
    aliases: dict[str, str] = field(default_factory=dict)
    monitored_day: str = ""
    drift: str = ""
    performance: str = ""
    skew: str = ""
    decision: str = ""
    decision_reason: str = ""
    links: list[Link] = field(default_factory=list)
    error: str = ""


def report_href(uri: str | None, settings: Settings) -> str | None:
    """The view's link to an ``s3://<reports>/…`` object it publishes, else None."""
    bucket = f"s3://{settings.bucket('reports')}/"
    if not uri or not uri.startswith(bucket):
        return None
    key = uri.removeprefix(bucket)
    return REPORTS_ROUTE + quote(key) if published(key) else None


def published(key: str) -> bool:
    """Whether the view serves the reports-zone object ``key``: a key under a published prefix with
    no empty, ``.`` or ``..`` part (Data Docs pages have names of GX's own: no stricter charset)."""
    parts = key.split("/")
    return key.startswith(PUBLISHED_PREFIXES) and "\\" not in key and not any(
        part.strip() in ("", ".", "..") for part in parts)


def mlflow_run_url(settings: Settings, experiment_id: str, run_id: str) -> str:
    return f"{settings.mlflow_tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"


def mlflow_version_url(settings: Settings, model: str, version: str) -> str:
    return f"{settings.mlflow_tracking_uri}/#/models/{quote(model)}/versions/{version}"


def swagger_url(settings: Settings) -> str:
    return f"{settings.model_server_url}/"


def rows(settings: Settings) -> list[UseCaseRow]:
    """Every use case of ``settings.specs_dir``, one row each, broken ones with their error."""
    found = load_folder(Path(settings.specs_dir))
    out = [UseCaseRow(name=path.stem, error=message) for path, message in found.errors.items()]
    for spec in found.specs.values():
        if not isinstance(spec, PipelineSpec):
            continue  # a dataset-only spec has no model to show
        try:
            out.append(use_case_row(spec, settings))
        # Fail soft per use case: whatever breaks one row (an unreachable registry, a corrupt
        # summary) is shown in that row, and logged; the other use cases still render.
        except Exception as exc:  # noqa: BLE001
            log.warning("flywheel view: use case %s: %s: %s", spec.name, type(exc).__name__, exc)
            out.append(UseCaseRow(name=spec.name, model=spec.model_name, error=f"{type(exc).__name__}: {exc}"))
    return sorted(out, key=lambda row: row.name)


def use_case_row(spec: PipelineSpec, settings: Settings) -> UseCaseRow:
    """One use case's row (raises whatever reading the registry or the store raises)."""
    row = UseCaseRow(name=spec.name, model=spec.model_name)
    row.aliases, champion_links = _registry(spec, settings)
    summary = latest_summary(spec, settings)
    report = None
    if summary:
        row.monitored_day = str(summary.get("ds", ""))
        row.drift, row.performance, row.skew = (_status(summary.get(k)) for k in ("drift", "performance", "skew"))
        decision = summary.get("decision") or {}
        row.decision, row.decision_reason = str(decision.get("action", "")), str(decision.get("reason", ""))
        report = report_href((summary.get("drift") or {}).get("report"), settings)
    row.links = champion_links
    docs = latest_data_docs(spec, settings)
    if docs:
        row.links.append(Link("GX Data Docs", docs))
    if report:
        row.links.append(Link("Evidently report", report))
    row.links.append(Link("Swagger", swagger_url(settings)))
    return row


def _status(section: Any) -> str:
    return str(section.get("status", "")) if isinstance(section, dict) else ""


def _registry(spec: PipelineSpec, settings: Settings) -> tuple[dict[str, str], list[Link]]:
    """The model's aliases (alias -> version) and the champion's MLflow links."""
    from mlflow.exceptions import MlflowException

    from flywheel.training import registry, stages

    client = registry.client(settings)
    try:
        model = client.get_registered_model(spec.model_name)
    except MlflowException as exc:
        # Not registered yet (the auth app answers 403 for a model without a permission row).
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or exc.get_http_status_code() in (403, 404):
            return {}, []
        raise
    aliases = {alias: str(version) for alias, version in sorted((model.aliases or {}).items())}
    under_rollout = aliases.pop(stages.ROLLOUT, None)
    if under_rollout is not None:  # shown under its stage (shadow, canary), not as an alias
        stage = (client.get_model_version(spec.model_name, under_rollout).tags or {}).get(stages.STAGE_TAG)
        aliases[stage if stage in ALIASES else f"{stages.ROLLOUT} ({stage or 'no stage'})"] = under_rollout
    champion = aliases.get("champion")
    if champion is None:
        return aliases, []
    mv = client.get_model_version(spec.model_name, champion)
    links = [Link(f"MLflow version {champion}", mlflow_version_url(settings, spec.model_name, champion))]
    if mv.run_id:
        run = client.get_run(mv.run_id)
        run_url = mlflow_run_url(settings, run.info.experiment_id, mv.run_id)
        links.insert(0, Link("MLflow run", run_url))
        card = (mv.tags or {}).get(MODEL_CARD_TAG)
        if card:
            links.append(Link("Model card", card if card.startswith(("http://", "https://"))
                              else f"{run_url}/artifacts/{quote(card)}"))
    return aliases, links


def latest_summary(spec: PipelineSpec, settings: Settings) -> dict[str, Any] | None:
    """The latest monitoring summary of the use case's model (None before the first)."""
    from botocore.exceptions import ClientError

    key = layout.summary_prefix(spec.model_name) + layout.LATEST
    try:
        body = storage.get_bytes("reports", key, settings=settings)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    summary: dict[str, Any] = json.loads(body)
    return summary


def latest_data_docs(spec: PipelineSpec, settings: Settings) -> str | None:
    """The view's link to the Data Docs of the latest curated partition, when published."""
    days = storage.list_partitions(zone="curated", dataset=spec.dataset.name, settings=settings)
    if not days:
        return None
    prefix = layout.data_docs_prefix(spec.dataset.name, days[-1])
    if prefix + "index.html" not in storage.list_keys("reports", prefix, settings=settings):
        return None
    return REPORTS_ROUTE + quote(prefix + "index.html")


# ---- the page --------------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1a1a1a}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #d0d7de;padding:.4rem .6rem;
text-align:left;vertical-align:top}th{background:#f3f4f6}.error{color:#b42318}
.alert{color:#b42318;font-weight:600}.ok{color:#067647}td a{margin-right:.6rem}"""
_COLUMNS = ("Use case", "Model", *(a.capitalize() for a in ALIASES), "Other aliases", "Monitored day",
            "Drift", "Performance", "Skew", "Last retraining decision", "Links")


def render(page_rows: list[UseCaseRow], *, user: str) -> str:
    """The view as one HTML page (every value escaped; links open in a new tab)."""
    head = "".join(f"<th>{c}</th>" for c in _COLUMNS)
    body = "".join(_render_row(row) for row in page_rows) or (
        f'<tr><td colspan="{len(_COLUMNS)}">No use case in the specs folder.</td></tr>')
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Flywheel</title>"
            f"<style>{_STYLE}</style></head><body><h1>Flywheel use cases</h1>"
            f"<p>Signed in as {html.escape(user)}.</p><table id=\"use-cases\"><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></body></html>")


def _render_row(row: UseCaseRow) -> str:
    e = html.escape
    if row.error:
        return (f'<tr data-use-case="{e(row.name)}"><td>{e(row.name)}</td><td>{e(row.model)}</td>'
                f'<td class="error" colspan="{len(_COLUMNS) - 2}">{e(row.error)}</td></tr>')
    others = ", ".join(f"{a}: v{v}" for a, v in row.aliases.items() if a not in ALIASES)
    aliases = "".join(f'<td class="alias-{a}">{e(row.aliases.get(a, ""))}</td>' for a in ALIASES)
    statuses = "".join(f'<td class="status-{k} {_tone(v)}">{e(v)}</td>'
                       for k, v in (("drift", row.drift), ("performance", row.performance), ("skew", row.skew)))
    decision = e(row.decision) + (f": {e(row.decision_reason)}" if row.decision_reason else "")
    links = "".join(f'<a href="{e(link.href)}" target="_blank" rel="noopener">{e(link.label)}</a>'
                    for link in row.links)
    return (f'<tr data-use-case="{e(row.name)}"><td>{e(row.name)}</td><td>{e(row.model)}</td>{aliases}'
            f"<td>{e(others)}</td><td>{e(row.monitored_day)}</td>{statuses}"
            f'<td class="decision">{decision}</td><td class="links">{links}</td></tr>')


def _tone(status: str) -> str:
    return {"alert": "alert", "ok": "ok"}.get(status, "")
