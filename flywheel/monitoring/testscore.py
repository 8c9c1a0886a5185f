"""The ML Test Score's tests whose evidence is the served model's monitoring.

:func:`rubric` scores a version on every test: training's evidence
(:data:`flywheel.training.testscore.CHECKS`) plus what the daily monitoring summaries of the
days it was champion say (drift, performance, skew, quality) and the retraining policy.
"""

from __future__ import annotations

from typing import Any

from flywheel.core import layout
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import testscore
from flywheel.training.testscore import AUTOMATED, MANUAL, NOT_MET, Check, Evidence

OBSERVED = frozenset({"ok", "alert"})  # a check that looked at data (not insufficient / waiting / n/a)


def observed_days(summaries: list[dict[str, Any]], version: str) -> dict[str, list[str]]:
    """Per monitoring section, the days it observed data while ``version`` was champion."""
    days: dict[str, list[str]] = {}
    for summary in summaries:
        if str(summary.get("champion_version")) != str(version):
            continue
        for name in ("drift", "performance", "skew", "quality"):
            section = summary.get(name) or {}
            if isinstance(section, dict) and section.get("status") in OBSERVED:
                days.setdefault(name, []).append(str(summary.get("ds")))
    return days


def _days(ev: Evidence, name: str) -> list[str]:
    return list(ev.monitoring.get("days", {}).get(name, []))


def _where(ev: Evidence) -> str:
    return f"s3 reports/{layout.summary_prefix(ev.spec.model_name)}"


def _section(name: str, what: str, to_meet: str) -> Check:
    def check(ev: Evidence) -> tuple[float, str, str]:
        days = _days(ev, name)
        if not days:
            return NOT_MET, f"no {name} check observed data while v{ev.version} was champion", to_meet
        return AUTOMATED, f"{what}: {len(days)} day(s) {days[0]}..{days[-1]} ({_where(ev)})", ""
    return check


def _correlate(ev: Evidence) -> tuple[float, str, str]:
    days = _days(ev, "performance")
    if not days:
        return NOT_MET, "no online performance measured yet", "feed labels back (monitoring.labels)"
    metric = ev.tags.get("gate.metric", "")
    return MANUAL, f"online {metric} on {len(days)} labelled day(s) next to holdout " \
                   f"{ev.metrics.get(f'holdout_{metric}', float('nan')):.4g} ({_where(ev)})", \
        "compute the offline/online correlation across versions automatically"


def _staleness(ev: Evidence) -> tuple[float, str, str]:
    days = _days(ev, "performance")
    if len(days) < 2:
        return NOT_MET, "performance over the model's age not measured (needs ≥ 2 labelled days)", \
            "monitor labelled performance over several days"
    return MANUAL, f"performance by day over {len(days)} days of this version ({_where(ev)})", \
        "fit the metric's decay with model age and set max_model_age_days from it"


def _not_stale(ev: Evidence) -> tuple[float, str, str]:
    age = ev.spec.monitoring.retrain.max_model_age_days
    decisions = ev.monitoring.get("decisions", 0)
    if age is None:
        return NOT_MET, "monitoring.retrain.max_model_age_days is unset", "set a maximum model age"
    return (AUTOMATED if decisions else MANUAL), \
        f"retrain after {age} days (monitoring.retrain); {decisions} policy decision(s) recorded", \
        "run the monitoring DAG (it decides daily)"


def _dependencies(ev: Evidence) -> tuple[float, str, str]:
    return NOT_MET, f"package versions recorded ({ev.tag('lineage.packages')}), nothing notifies on change", \
        "alert when a dependency's version differs from the champion's lineage.packages"


CHECKS: dict[str, Check] = {
    "model-2": _correlate, "model-4": _staleness,
    "monitoring-1": _dependencies,
    "monitoring-2": _section("quality", "serving inputs checked against the training reference",
                             "serve traffic and run the monitoring DAG (quality check)"),
    "monitoring-3": _section("skew", "served features recomputed offline and compared",
                             "log keyed predictions and run the skew check"),
    "monitoring-4": _not_stale,
    "monitoring-7": _section("performance", "labelled prediction quality tracked",
                             "feed labels back (monitoring.labels) and run the monitoring DAG"),
}


def rubric(spec: PipelineSpec, version: str | None = None, *,
           settings: Settings | None = None) -> testscore.Rubric:
    """The whole rubric of ``version`` (default: the champion, else the latest version).

    Raises :class:`flywheel.training.registry.RegistryError` when the model has no version."""
    from flywheel.monitoring import checks, policy

    settings = settings or get_settings()
    version = version or _default_version(spec, settings)
    ev = testscore.gather(spec, version, settings=settings)
    ev.monitoring = {"days": observed_days(checks.read_summaries(spec, settings=settings), ev.version),
                     "decisions": sum(1 for d in policy.history(spec.model_name, settings=settings)
                                      if str(d.champion_version) == ev.version)}
    return testscore.evaluate(ev, testscore.CHECKS | CHECKS)


def resolve_version(spec: PipelineSpec, version: str | None, *, settings: Settings | None = None) -> str:
    """``version``, or the champion's, or the latest registered one."""
    return version or _default_version(spec, settings or get_settings())


def errors() -> tuple[type[BaseException], ...]:
    """What a report or reproduction raises for a user's mistake (no such version, no window)."""
    from mlflow.exceptions import MlflowException

    from flywheel.training import drills, registry

    return MlflowException, registry.RegistryError, drills.ReproductionError, FileNotFoundError


def report(spec: PipelineSpec, version: str | None = None, *, update_card: bool = False,
           settings: Settings | None = None) -> tuple[testscore.Rubric, str]:
    """The version's whole rubric and its card's URL (empty: none); ``update_card``: rewrite the
    rubric part of the card with this one."""
    from flywheel.training import card, registry

    settings = settings or get_settings()
    scored = rubric(spec, resolve_version(spec, version, settings=settings), settings=settings)
    mv = registry.client(settings).get_model_version(spec.model_name, scored.version)
    url = mv.tags.get(card.TAG, "")
    if update_card and url:
        text = card.with_rubric(card.read(spec.model_name, scored.version, settings=settings), scored.markdown())
        run_id = mv.tags.get("run_id") or mv.run_id
        url = card.attach(spec.model_name, scored.version, run_id, text, facts=None, settings=settings)
    return scored, url


def table(scored: testscore.Rubric) -> Any:
    """The rubric as a rich table (fits 80 columns: evidence wraps)."""
    from rich.table import Table

    sections = scored.sections()
    caption = " · ".join(f"{s} {v:g}" for s, v in sections.items())
    out = Table(title=f"ML Test Score of {scored.model} v{scored.version}: {scored.final:g}", caption=caption,
                show_lines=True)
    out.add_column("test", ratio=3)
    out.add_column("pts", justify="right", width=3)
    out.add_column("evidence / to meet", ratio=5)
    for r in scored.results:
        detail = r.evidence if not r.to_meet else f"{r.evidence}\n[dim]to meet: {r.to_meet}[/dim]"
        out.add_row(f"{r.test.id} {r.test.title}", f"{r.points:g}", detail)
    return out


def _default_version(spec: PipelineSpec, settings: Settings) -> str:
    from flywheel.training import registry

    mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if mv is not None:
        return str(mv.version)
    versions = registry.client(settings).search_model_versions(f"name = '{spec.model_name}'")
    if not versions:
        raise registry.RegistryError(f"registered model {spec.model_name!r} has no version yet: train first")
    return str(max(int(v.version) for v in versions))
