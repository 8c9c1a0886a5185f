"""The ML Test Score (Breck et al., 2017) of a model version, from evidence Flywheel collected.

28 tests in four sections of seven: Data, Model development, ML infrastructure, Monitoring.
Each test scores as in the paper: 0 when not met, 0.5 when done by hand with the result
recorded, 1 when automated and run every time; a section's score is the sum of its tests, the
final score the minimum over sections. Every result links to its evidence (an MLflow tag or
artifact, a test module, an audit record, a doc); a test not met says what would meet it.

This module evaluates the tests whose evidence training holds (:data:`CHECKS`); the Monitoring
section's evidence lives in a higher layer (:mod:`flywheel.monitoring.testscore` adds it). A
test without an evaluator reads "not met" and says where its evidence would come from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flywheel.core.config import PROJECT_ROOT, Settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import evidence

SECTIONS = ("Data", "Model development", "ML infrastructure", "Monitoring")
AUTOMATED, MANUAL, NOT_MET = 1.0, 0.5, 0.0
Status = Literal["automated", "manual", "not met"]


@dataclass(frozen=True)
class Test:
    id: str  # "data-1" .. "monitoring-7"
    section: str
    title: str


def _tests() -> list[Test]:
    titles = {
        "Data": ["Feature expectations are captured in a schema", "All features are beneficial",
                 "No feature's cost is too much", "Features adhere to meta-level requirements",
                 "The data pipeline has appropriate privacy controls", "New features can be added quickly",
                 "All input feature code is tested"],
        "Model development": ["Model specs are reviewed and submitted", "Offline and online metrics correlate",
                              "All hyperparameters have been tuned", "The impact of model staleness is known",
                              "A simpler model is not better", "Model quality is sufficient on important slices",
                              "The model is tested for considerations of inclusion"],
        "ML infrastructure": ["Training is reproducible", "Model specs are unit tested",
                              "The ML pipeline is integration tested", "Model quality is validated before serving",
                              "The model is debuggable", "Models are canaried before serving",
                              "Serving models can be rolled back"],
        "Monitoring": ["Dependency changes result in notification", "Data invariants hold for inputs",
                       "Training and serving are not skewed", "Models are not too stale",
                       "Models are numerically stable", "Computing performance has not regressed",
                       "Prediction quality has not regressed"],
    }
    prefix = {"Data": "data", "Model development": "model", "ML infrastructure": "infra", "Monitoring": "monitoring"}
    return [Test(f"{prefix[s]}-{i}", s, t) for s in SECTIONS for i, t in enumerate(titles[s], 1)]


TESTS: tuple[Test, ...] = tuple(_tests())


@dataclass(frozen=True)
class Result:
    test: Test
    points: float
    evidence: str  # what was found, with a link (tag, artifact URL, file, audit key)
    to_meet: str = ""  # not met: what would meet it

    @property
    def status(self) -> Status:
        return "automated" if self.points >= AUTOMATED else "manual" if self.points > 0 else "not met"


@dataclass
class Evidence:
    """What a version's tests are judged on: its tags and run metrics, the spec, the project."""

    spec: PipelineSpec
    version: str
    tags: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    run_url: str = ""
    root: Path = PROJECT_ROOT
    monitoring: dict[str, Any] = field(default_factory=dict)  # filled by flywheel.monitoring.testscore

    def tag(self, name: str) -> str:
        return f"tag {name} of {self.spec.model_name} v{self.version}"

    def file(self, relative: str) -> str | None:
        """``relative`` when it exists in the project (a test module, a doc), else None."""
        return relative if (self.root / relative).exists() else None


Check = Callable[[Evidence], tuple[float, str, str]]  # -> (points, evidence, to_meet)


@dataclass(frozen=True)
class Rubric:
    model: str
    version: str
    results: list[Result]

    def sections(self) -> dict[str, float]:
        return {s: sum(r.points for r in self.results if r.test.section == s) for s in SECTIONS}

    @property
    def final(self) -> float:
        return min(self.sections().values())

    def markdown(self) -> str:
        lines = [f"## ML Test Score (Breck et al. 2017): {self.final:g}",
                 "", "0.5 = done by hand and recorded, 1 = automated; final = minimum over sections.", "",
                 "| section | score |", "|---|---|"]
        lines += [f"| {s} | {v:g} / 7 |" for s, v in self.sections().items()]
        lines += ["", "| test | result | evidence | to meet |", "|---|---|---|---|"]
        lines += [f"| {r.test.id} {r.test.title} | {r.status} ({r.points:g}) | {_cell(r.evidence)} | "
                  f"{_cell(r.to_meet)} |" for r in self.results]
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def evaluate(ev: Evidence, checks: Mapping[str, Check]) -> Rubric:
    """Every test of :data:`TESTS`, scored by its check in ``checks`` (none: not met)."""
    results = []
    for test in TESTS:
        check = checks.get(test.id)
        if check is None:
            results.append(Result(test, NOT_MET, "no evidence collected at this layer",
                                  "run `flywheel report` (it adds the monitoring evidence)"))
            continue
        points, found, to_meet = check(ev)
        results.append(Result(test, points, found, "" if points >= AUTOMATED else to_meet))
    return Rubric(ev.spec.model_name, ev.version, results)


def gather(spec: PipelineSpec, version: str, *, settings: Settings) -> Evidence:
    """A version's tags and its run's metrics, from MLflow."""
    from flywheel.training import card, registry

    client = registry.client(settings)
    mv = client.get_model_version(spec.model_name, version)
    tags = dict(mv.tags)
    run_id = tags.get("run_id") or mv.run_id
    run = client.get_run(run_id)
    return Evidence(spec, str(mv.version), tags, dict(run.data.metrics),
                    card.ui_url(settings, run.info.experiment_id, run_id, path="evaluation"))


# ---- Data ----------------------------------------------------------------------------------------


def _schema(ev: Evidence) -> tuple[float, str, str]:
    columns = ev.spec.dataset.contract.columns
    parts = evidence.loads(ev.tags, "data.partitions") or []
    found = (f"contract of {len(columns)} columns in the spec (compiled to a Great Expectations suite); "
             f"{len(parts)} validated partitions ({ev.tag('data.partitions')})")
    return (AUTOMATED if columns and parts else NOT_MET), found, "declare dataset.contract.columns and ingest " \
        "through validate"


def _beneficial(ev: Evidence) -> tuple[float, str, str]:
    ablation = evidence.loads(ev.tags, evidence.ABLATION)
    if not ablation:
        return NOT_MET, "no feature-group ablation recorded", "train with this Flywheel (the card's ablation)"
    useless = [g for g, v in ablation.items() if v <= 0]
    found = f"feature-group ablation on holdout ({ev.tag(evidence.ABLATION)}): " + ", ".join(
        f"{g} {v:+.3g}" for g, v in ablation.items())
    return (NOT_MET if useless else AUTOMATED), found, f"drop or rework groups that do not help: {', '.join(useless)}"


def _cost(ev: Evidence) -> tuple[float, str, str]:
    return (NOT_MET, "latency is measured for the whole model only (latency.* tags)",
            "measure each feature group's serving cost (latency with the group's lookup removed)")


def _meta(ev: Evidence) -> tuple[float, str, str]:
    contract = ev.spec.dataset.contract
    found = (f"forbidden columns {contract.forbidden_columns or 'none'}; the spec loader refuses features "
             "on undeclared or forbidden columns (tests/unit/test_config_spec.py)")
    return (AUTOMATED if contract.forbidden_columns else MANUAL), found, \
        "list the columns no feature may use in dataset.contract.forbidden_columns"


def _privacy(ev: Evidence) -> tuple[float, str, str]:
    pii = {n: c.pii_policy for n, c in ev.spec.dataset.contract.columns.items() if c.pii}
    if not pii:
        return NOT_MET, "no column is marked pii in the contract", "mark PII columns (pii: true, pii_policy)"
    found = f"PII columns with policies {pii} enforced at ingest (tests/integration/test_privacy.py)"
    return AUTOMATED, found, ""


def _new_features(ev: Evidence) -> tuple[float, str, str]:
    doc = ev.file("docs/features.md") or ev.file("README.md") or "docs"
    return MANUAL, f"a feature is a spec entry compiled to Feast and the featurizer ({doc})", \
        "time and record adding a feature end to end in CI"


def _feature_code(ev: Evidence) -> tuple[float, str, str]:
    test = ev.file("tests/unit/test_feature_language.py")
    python = [n for n, f in ev.spec.features.request.items() if f.fn == "python"]
    if not test:
        return NOT_MET, "no featurizer tests in this checkout", "run the featurizer's unit tests in CI"
    if python:
        return MANUAL, f"featurizer tested ({test}); python request features {python} are the use case's code", \
            "unit test the use case's python feature functions"
    return AUTOMATED, f"every feature is compiled by the tested featurizer ({test})", ""


# ---- Model development ---------------------------------------------------------------------------


def _reviewed(ev: Evidence) -> tuple[float, str, str]:
    commit, dirty = ev.tags.get("lineage.code.commit", "unknown"), ev.tags.get("lineage.code.dirty", "unknown")
    found = f"code {commit[:12]} (dirty={dirty}), spec sha256 {ev.tags.get('lineage.spec.sha256', '?')[:12]}"
    clean = commit != "unknown" and dirty == "false"
    return (MANUAL if clean else NOT_MET), found, "train from a clean, reviewed commit (lineage.code.dirty=false)"


def _tuned(ev: Evidence) -> tuple[float, str, str]:
    family = ev.tags.get("family", "")
    trials = ev.metrics.get(f"{family}_trials", 0.0)
    found = f"{family}: {trials:g} search trial(s) (run metric {family}_trials, {ev.run_url})"
    return (AUTOMATED if trials > 1 else NOT_MET), found, \
        "set training.search.trials > 1 and a search space for the selected family"


def _simpler(ev: Evidence) -> tuple[float, str, str]:
    metric = ev.tags.get("gate.metric", "")
    cand, base = ev.metrics.get(f"holdout_{metric}"), ev.metrics.get(f"baseline_{metric}")
    if cand is None or base is None:
        return NOT_MET, "no baseline comparison recorded", "train with a baseline family (training.baseline)"
    from flywheel.training.evaluation import better

    found = f"holdout {metric} {cand:.4g} vs baseline {base:.4g} ({ev.tag('gate.reason')})"
    return (AUTOMATED if better(metric, cand, base) else NOT_MET), found, "beat the baseline on holdout"


def _slices(ev: Evidence) -> tuple[float, str, str]:
    reason = ev.tags.get("gate.reason", "")
    found = f"slice table in {ev.run_url}/evaluation.md; gate: {reason}"
    if "regresses slices" in reason:
        return NOT_MET, found, "fix the regressed slices named by the gate"
    return AUTOMATED, found, ""


def _inclusion(ev: Evidence) -> tuple[float, str, str]:
    review = ev.spec.card.inclusion_review
    if not review:
        return NOT_MET, "no inclusion review recorded (card.inclusion_review)", \
            "review slices by sensitive attributes (training.slices) and record it in card.inclusion_review"
    return MANUAL, f"card.inclusion_review: {review}", "automate the review as a slice gate"


# ---- ML infrastructure ---------------------------------------------------------------------------


def _reproducible(ev: Evidence) -> tuple[float, str, str]:
    record = evidence.loads(ev.tags, evidence.REPRODUCE)
    if not record:
        return NOT_MET, "no reproduction recorded", f"run `flywheel reproduce --version {ev.version}`"
    found = f"retrained {record.get('at', '?')}: max score difference {record.get('max_abs_diff', '?')} " \
            f"({ev.tag(evidence.REPRODUCE)})"
    return (MANUAL if record.get("passed") else NOT_MET), found, \
        "make the retrain match (same window and seed), and run it on a schedule"


def _unit_tested(ev: Evidence) -> tuple[float, str, str]:
    results = evidence.loads(ev.tags, evidence.OVERFIT)
    if not results:
        return NOT_MET, "no overfit-one-batch result recorded", "train with this Flywheel (it overfits a batch first)"
    found = "overfit one batch before training: " + ", ".join(
        f"{r['family']} {r['ratio']:.2g}×" for r in results) + f" of a constant's loss ({ev.tag(evidence.OVERFIT)})"
    return (AUTOMATED if all(r.get("passed") for r in results) else NOT_MET), found, "fix the family that fails"


def _integration(ev: Evidence) -> tuple[float, str, str]:
    test = ev.file("tests/e2e/test_loop.py")
    if not test:
        return NOT_MET, "no end-to-end test in this checkout", "run the whole loop through Airflow in CI"
    return AUTOMATED, f"the whole loop through Airflow in CI ({test})", ""


def _validated(ev: Evidence) -> tuple[float, str, str]:
    if "gate.promote" not in ev.tags:
        return NOT_MET, "no gate decision recorded", "promote only through the training gate"
    return AUTOMATED, f"gate promote={ev.tags['gate.promote']}: {ev.tags.get('gate.reason', '')} " \
                      f"({ev.tag('gate.reason')})", ""


def _debuggable(ev: Evidence) -> tuple[float, str, str]:
    return (NOT_MET, "no per-example trace of features and output",
            "expose one request's model matrix and output step by step (a debug route)")


def _canary(ev: Evidence) -> tuple[float, str, str]:
    from flywheel.training import stages

    stage = ev.tags.get(stages.STAGE_TAG)
    if stage:  # the rollout step (flywheel rollout) judged it live as shadow and/or canary
        return AUTOMATED, (f"rollout stage {stage!r} on live traffic (tag {stages.STAGE_TAG}; each move in "
                           "`flywheel audit`)"), ""
    found = sorted(k for k in ev.tags if k.startswith(("canary.", "shadow.")))
    if not found:
        return NOT_MET, "no shadow or canary stage on the version", \
            "set `rollout: {mode: shadow}` (or canary) in the spec: the gate then rolls versions out gradually"
    return AUTOMATED, f"canary/shadow tags: {', '.join(found)}", ""


def _rollback(ev: Evidence) -> tuple[float, str, str]:
    record = evidence.loads(ev.tags, evidence.ROLLBACK_DRILL)
    if not record:
        return NOT_MET, "no rollback drill recorded", "run `flywheel drill` while this version is champion"
    found = f"drill {record.get('at', '?')}: v{record.get('champion')} → v{record.get('rolled_back_to')} → " \
            f"v{record.get('restored')}, audit {', '.join(record.get('audit', []))}"
    return (MANUAL if record.get("passed") else NOT_MET), found, "schedule the drill"


# ---- Monitoring (what training holds) ------------------------------------------------------------


def _numerics(ev: Evidence) -> tuple[float, str, str]:
    if ev.tags.get(evidence.FINITE) != "true":
        return NOT_MET, "holdout scores were not all finite, or not checked", "find the NaN/inf source"
    return MANUAL, f"every holdout score finite at training ({ev.tag(evidence.FINITE)})", \
        "alert on non-finite outputs in serving"


def _latency(ev: Evidence) -> tuple[float, str, str]:
    figures = {k: v for k, v in ev.tags.items() if k.startswith("latency.")}
    if not figures:
        return NOT_MET, "no latency measured", "train with this Flywheel (training.latency_budget)"
    return AUTOMATED, "gated p99 " + ", ".join(f"{k.removeprefix('latency.')}={v}" for k, v in sorted(figures.items())), ""


CHECKS: dict[str, Check] = {
    "data-1": _schema, "data-2": _beneficial, "data-3": _cost, "data-4": _meta, "data-5": _privacy,
    "data-6": _new_features, "data-7": _feature_code,
    "model-1": _reviewed, "model-3": _tuned, "model-5": _simpler, "model-6": _slices, "model-7": _inclusion,
    "infra-1": _reproducible, "infra-2": _unit_tested, "infra-3": _integration, "infra-4": _validated,
    "infra-5": _debuggable, "infra-6": _canary, "infra-7": _rollback,
    "monitoring-5": _numerics, "monitoring-6": _latency,
}
"""The tests training's evidence answers (model-2, model-4 and monitoring 1-4, 7 need serving)."""
