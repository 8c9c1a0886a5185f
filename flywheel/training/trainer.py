"""Train a baseline and candidate families on a temporal split, track and gate in MLflow.

One path for every task type (binary, multiclass, regression): labels from the spec (rows
without one counted and left out), the one featurizer's model matrix, the task's metrics, the
gate on ``training.metric`` (or the task's default) in its direction, slices from the spec.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.features.featurizer import featurizer_for
from flywheel.training import (
    card,
    compiled,
    evaluation,
    evidence,
    families,
    latency,
    lineage,
    overfit,
    promotion,
    registry,
    signing,
    testscore,
    tuning,
)
from flywheel.training.families.base import FitData, Trained, permutation_importance
from flywheel.training.labels import LabelEncoding, drop_null

log = logging.getLogger(__name__)
REFERENCE_ROWS = 20_000
NO_CHAMPION = "none"  # the gate.champion_version tag of a version gated while no champion stood
PARTS = ("train", "validation", "holdout")


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    family: str
    metrics: dict[str, float]
    threshold: float
    promoted: bool
    awaiting_approval: bool
    reason: str
    reference_uri: str
    families: dict[str, dict[str, float]]
    task: str = "binary"
    metric: str = "pr_auc"
    champion_version: str | None = None  # the champion the gate compared with (None: none)
    card_url: str = ""  # the version's model card in MLflow's UI
    latency_ms: dict[str, float] = field(default_factory=dict)  # p99 by batch size ("1", "100")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the training task's XCom): a NaN (the threshold of a non-binary task, a
        metric a family could not compute) becomes None, as JSON has no NaN."""
        return _without_nan(asdict(self))


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    return value


def temporal_split(frame: pd.DataFrame, spec: PipelineSpec) -> Split:
    """Train / validation / holdout by time: no holdout row precedes a training row. Ties in
    time are ordered by the dataset's key columns, or by a hash of the row when the dataset has
    no key: the point-in-time join does not return rows in a fixed order (STACK-NOTES), so the
    split must not depend on it."""
    frame = frame.reset_index(drop=True)
    keys = [c for c in spec.dataset.key_columns if c in frame.columns]
    order = pd.DataFrame({"_ts": frame[spec.dataset.timestamp]})
    for i, key in enumerate(keys):
        order[f"_k{i}"] = frame[key]
    if not keys:
        order["_k0"] = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    ordered = frame.iloc[order.sort_values(list(order.columns), kind="stable").index].reset_index(drop=True)
    n = len(ordered)
    a = int(n * spec.training.split.train)
    b = int(n * (spec.training.split.train + spec.training.split.validation))
    return Split(ordered.iloc[:a], ordered.iloc[a:b], ordered.iloc[b:])


def asdict_split(split: Split) -> dict[str, pd.DataFrame]:
    return {"train": split.train, "validation": split.validation, "holdout": split.holdout}


def features_of(frame: pd.DataFrame, spec: PipelineSpec) -> pd.DataFrame:
    """The model matrix of a training frame: the spec's one featurizer."""
    return featurizer_for(spec).frame(frame)


@dataclass(frozen=True)
class Prepared:
    """A training frame made ready to fit: split by time, model matrices, encoded labels."""

    split: Split
    x: dict[str, pd.DataFrame]
    y: dict[str, pd.Series]
    encoding: LabelEncoding
    counts: dict[str, float] = field(default_factory=dict)

    def fit_data(self, spec: PipelineSpec, categorical: dict[str, int]) -> FitData:
        return FitData(self.x["train"], self.y["train"], self.x["validation"], self.y["validation"],
                       task=spec.task, n_classes=self.encoding.n_classes, categorical=dict(categorical),
                       metric=evaluation.metric_of(spec))


def prepare(spec: PipelineSpec, frame: pd.DataFrame, featurize: Callable[[pd.DataFrame], pd.DataFrame]) -> Prepared:
    """Leave out rows without a label (counted: ``rows_label_null``), split by time, encode labels
    (multiclass: classes of the training split; later rows of a class unseen in training are left
    out, counted: ``rows_label_unseen_class``) and build each part's model matrix with ``featurize``."""
    labelled, nulls = drop_null(spec, frame)
    split = temporal_split(labelled, spec)
    encoding = LabelEncoding.fit(spec, split.train[spec.target])
    parts, y, unseen = {}, {}, 0
    for name, part in asdict_split(split).items():
        codes = encoding.encode(part[spec.target], name=spec.name).reset_index(drop=True)
        known = codes.notna().to_numpy()
        unseen += int((~known).sum())
        parts[name] = part.reset_index(drop=True).loc[known].reset_index(drop=True)
        y[name] = codes[known].reset_index(drop=True).astype("int64" if spec.task != "regression" else "float64")
    if unseen:
        log.warning("%s: %d validation/holdout rows have a class unseen in training: left out", spec.name, unseen)
    split = Split(parts["train"], parts["validation"], parts["holdout"])
    x = {name: featurize(part).reset_index(drop=True) for name, part in parts.items()}
    counts = {"rows_label_null": float(nulls), "rows_label_unseen_class": float(unseen),
              **{f"rows_{name}": float(len(part)) for name, part in parts.items()}}
    return Prepared(split, x, y, encoding, counts)


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    candidate: dict[str, float]
    baseline: dict[str, float]
    champion: dict[str, float] | None
    slices: pd.DataFrame
    regressions: list[str]
    holdout_scores: np.ndarray
    baseline_scores: np.ndarray
    # The champion when the gate evaluated (None: there was none): what its promotion expects.
    champion_version: str | None = None

    def logged_metrics(self) -> dict[str, float]:
        out = {f"holdout_{k}": v for k, v in self.candidate.items()}
        out |= {f"baseline_{k}": v for k, v in self.baseline.items()}
        out |= {f"champion_{k}": v for k, v in (self.champion or {}).items()}
        return out


def _costs(spec: PipelineSpec) -> evaluation.Costs:
    return evaluation.Costs(spec.training.costs.false_positive, spec.training.costs.false_negative)


@dataclass(frozen=True)
class Scored:
    """A model's decision threshold (binary: cost-minimising on validation; NaN otherwise),
    holdout metrics and holdout scores."""

    threshold: float
    metrics: dict[str, float]
    holdout_scores: np.ndarray


def measure(spec: PipelineSpec, y: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The task's holdout metrics of ``scores`` (binary: decided at ``threshold``)."""
    binary = spec.task == "binary"
    return evaluation.metrics(y, scores, task=spec.task, threshold=threshold if binary else 0.5,
                              costs=_costs(spec) if binary else None,
                              precision_target=spec.training.precision_target)


def score(spec: PipelineSpec, prepared: Prepared, model: Trained) -> Scored:
    x, y = prepared.x, prepared.y
    threshold = float("nan")
    if spec.task == "binary":
        threshold = evaluation.cost_threshold(y["validation"].to_numpy(), model.scores(x["validation"]),
                                              _costs(spec))
    scores = model.scores(x["holdout"])
    return Scored(threshold, measure(spec, y["holdout"].to_numpy(), scores, threshold), scores)


def align_classes(scores: np.ndarray, have: list[Any], want: list[Any]) -> np.ndarray:
    """Class probabilities whose columns are ``have`` reordered to ``want`` (absent classes: 0)."""
    where = {_key(c): i for i, c in enumerate(have)}
    out = np.zeros((len(scores), len(want)))
    for j, c in enumerate(want):
        if _key(c) in where:
            out[:, j] = scores[:, where[_key(c)]]
    return out


def _key(value: Any) -> str:
    return json.dumps(value)


def champion_scores(spec: PipelineSpec, prepared: Prepared, settings: Settings,
                    mv: Any | None = None) -> tuple[np.ndarray, float] | None:
    """The champion's (``mv``, else the current one) holdout scores and threshold, comparable
    with the challenger's; None without a champion, or when it was trained for another task
    (then only the baseline gates)."""
    mv = mv if mv is not None else registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if mv is None:
        return None
    current = registry.load_version(spec.model_name, str(mv.version), settings=settings)
    if current.task != spec.task:
        log.warning("%s: the champion v%s is a %s model, the spec a %s one: it is not compared",
                    spec.name, current.version, current.task, spec.task)
        return None
    scores = np.asarray(current.scores(prepared.x["holdout"]), dtype="float64")
    if spec.task == "multiclass":
        scores = align_classes(scores, current.classes, list(prepared.encoding.classes))
    return scores, current.threshold


def evaluate(spec: PipelineSpec, prepared: Prepared, scored: Scored, baseline: Trained,
             settings: Settings) -> Evaluation:
    """The selected model's holdout scores (threshold from validation) against the baseline and
    the current champion on the same holdout, overall and per slice (the task's metric). The
    champion read here is the one the gate's promotion expects (``champion_version``)."""
    metric = evaluation.metric_of(spec)
    yh = prepared.y["holdout"].to_numpy()
    base = baseline.scores(prepared.x["holdout"])
    slices = evaluation.slice_columns(prepared.split.holdout, evaluation.slice_names(spec),
                                      features=prepared.x["holdout"])
    cand_slices = evaluation.slice_metrics(slices, yh, scored.holdout_scores, metric=metric)
    champion, regressions = None, []
    mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    current = champion_scores(spec, prepared, settings, mv)
    if current is not None:
        champ, champ_threshold = current
        champion = measure(spec, yh, champ, champ_threshold)
        regressions = evaluation.slice_regressions(
            cand_slices, evaluation.slice_metrics(slices, yh, champ, metric=metric),
            tolerance=spec.training.slice_tolerance, metric=metric)
    return Evaluation(threshold=scored.threshold, candidate=scored.metrics,
                      baseline=measure(spec, yh, base, scored.threshold), champion=champion,
                      slices=cand_slices, regressions=regressions, holdout_scores=scored.holdout_scores,
                      baseline_scores=base, champion_version=None if mv is None else str(mv.version))


def train_candidates(
    spec: PipelineSpec, data: FitData, prepared: Prepared, settings: Settings,
) -> tuple[dict[str, Trained], dict[str, Scored], dict[str, dict[str, float]]]:
    """Each candidate family in its own child run (trials nested below it, curves as step
    metrics); returns the families' best models, their holdout scores (for comparison, not for
    selection) and the logged per-family report."""
    import mlflow

    metric = evaluation.metric_of(spec)
    trained: dict[str, Trained] = {}
    scores: dict[str, Scored] = {}
    report: dict[str, dict[str, float]] = {}
    for name, candidate in spec.training.candidates.items():
        family = families.get(name)
        with registry.child_run(name):
            started = time.perf_counter()
            best = tuning.tune(family, candidate, data, spec=spec, settings=settings)
            search_seconds = time.perf_counter() - started
            scores[name] = scored = score(spec, prepared, best)
            report[name] = {f"val_{metric}": best.val_score, "train_seconds": best.seconds,
                            "search_seconds": search_seconds, "trials": float(best.trials),
                            **{f"holdout_{k}": v for k, v in scored.metrics.items()}}
            mlflow.set_tags({"family": name, "task": spec.task, "search.cut_by_timeout": str(best.extra.get(
                "search_cut_by_timeout", False)).lower()})
            mlflow.log_params({k: tuning.loggable(v) for k, v in best.params.items()}
                              | {"threshold": scored.threshold})
            mlflow.log_metrics(report[name])
        log.info("%s: val %s %.4f, holdout %s %.4f, %d trial(s) in %.1f s", name, metric, best.val_score,
                 metric, scored.metrics[metric], best.trials, search_seconds)
        trained[name] = best
    return trained, scores, report


def select(candidates: dict[str, Trained], *, metric: str = "pr_auc") -> Trained:
    """The family with the best validation score on ``metric`` (spec order breaks ties): the
    holdout stays untouched by selection, so the gate's comparison on it is fair."""
    sign = -1.0 if evaluation.lower_is_better(metric) else 1.0
    return max(candidates.values(), key=lambda t: sign * t.val_score)


def train(spec: PipelineSpec, *, end: date, reason: str = "scheduled",
          settings: Settings | None = None) -> TrainResult:
    """Train the baseline and every candidate family; register the best; gate it.

    Raises ``FamilyTaskError`` (before reading data) when a family cannot learn the spec's task,
    ``LabelError`` when the labels do not fit the task."""
    import mlflow

    from flywheel.features import store as features

    families.check(spec)
    settings = settings or get_settings()
    fz = featurizer_for(spec)
    frame, identity = features.training_frame(spec, end=end, settings=settings)
    prepared = prepare(spec, frame, fz.frame)
    metric, seed = evaluation.metric_of(spec), spec.training.seed
    data = prepared.fit_data(spec, fz.categorical)
    experiment = registry.experiment_id(spec.model_name, settings)
    with mlflow.start_run(experiment_id=experiment, run_name=f"train-{end.isoformat()}") as run:
        mlflow.log_metrics(prepared.counts)
        overfits = overfit_all(spec, data, settings)
        baseline = families.get(spec.training.baseline).train(data, {}, seed=seed, settings=settings)
        candidates, scores, per_family = train_candidates(spec, data, prepared, settings)
        best = select(candidates, metric=metric)
        measured = latency.measure(best, prepared.x["holdout"], spec.training.latency_budget, seed=seed)
        mlflow.log_metrics(measured.metrics())
        ev = evaluate(spec, prepared, scores[best.name], baseline, settings)
        decision = registry.decide(
            challenger=ev.candidate[metric], baseline=ev.baseline[metric],
            champion=ev.champion[metric] if ev.champion else None,
            min_improvement=spec.training.min_improvement, regressions=ev.regressions, metric=metric,
            over_budget=measured.over_budget(),
        )
        version = log_run(spec, end=end, reason=reason, frame=frame, identity=identity, model=best,
                          ev=ev, prepared=prepared, per_family=per_family, decision=decision, settings=settings)
        groups = card.feature_groups(spec, list(fz.names))
        ablation = card.group_ablation(best, prepared.x["holdout"], prepared.y["holdout"].to_numpy(), groups,
                                       metric=metric, seed=seed)
        runtime = compiled.package(best, prepared.x["holdout"], list(fz.names), threshold=ev.threshold,
                                   model_uri=f"models:/{spec.model_name}/{version}", settings=settings)
        signing.sign_version(spec.model_name, version, settings, registry.client(settings), runtime)
    run_id = run.info.run_id
    awaiting = decision.promote and spec.training.approval.required
    tag_version(spec, version, settings, threshold=ev.threshold, run_id=run_id, family=best.name,
                decision=decision, identity=identity, awaiting_approval=awaiting, features=fz.names,
                classes=list(prepared.encoding.classes), champion_version=ev.champion_version,
                extra=runtime | evidence_tags(best, ev, measured, overfits, ablation))
    card_url = write_card(spec, version, run_id, best, ev, prepared, measured=measured, overfits=overfits,
                          ablation=ablation, groups=groups, settings=settings)
    labelled = pd.concat(list(asdict_split(prepared.split).values()), ignore_index=True)
    reference_uri = write_reference(spec, version, recent_days(labelled, spec), best, settings,
                                    featurize=fz.frame, classes=list(prepared.encoding.classes))
    promoted, reason = decision.promote and not awaiting, decision.reason
    if promoted:
        promoted, reason = gate_promote(spec, version, decision, expected=ev.champion_version,
                                        actor=f"training-gate:{run_id}", settings=settings)
    if not promoted:
        registry.set_alias(spec.model_name, registry.CHALLENGER, version, settings=settings)
    outcome = "awaiting approval" if awaiting else ("promoted" if promoted else "not promoted")
    log.info("model %s v%s (%s, %s): %s (%s)", spec.model_name, version, best.name, spec.task,
             reason, outcome)
    return TrainResult(run_id=run_id, model_name=spec.model_name, version=version, family=best.name,
                       metrics=ev.logged_metrics(), threshold=ev.threshold,
                       promoted=promoted, awaiting_approval=awaiting,
                       reason=reason, reference_uri=reference_uri, families=per_family,
                       task=spec.task, metric=metric, champion_version=ev.champion_version,
                       card_url=card_url, latency_ms={str(b): v for b, v in measured.p99_ms.items()})


def overfit_all(spec: PipelineSpec, data: FitData, settings: Settings) -> list[overfit.OverfitResult]:
    """Overfit one small batch with the baseline and every candidate family before real training
    (logged to the active run as ``evidence/overfit_batch.json``); raises
    :class:`flywheel.training.overfit.OverfitError` for a family that cannot."""
    import mlflow

    results = []
    for name in dict.fromkeys([spec.training.baseline, *spec.training.candidates]):
        try:
            results.append(overfit.check(families.get(name), data, seed=spec.training.seed, settings=settings))
        finally:
            mlflow.log_dict({"families": [r.to_dict() for r in results]}, "evidence/overfit_batch.json")
    return results


def evidence_tags(best: Trained, ev: Evaluation, measured: latency.Latency, overfits: list[overfit.OverfitResult],
                  ablation: dict[str, float]) -> dict[str, str]:
    """The version's evidence for the ML Test Score (:mod:`flywheel.training.evidence`)."""
    return measured.tags() | {
        evidence.OVERFIT: evidence.dumps([r.to_dict() for r in overfits]),
        evidence.ABLATION: evidence.dumps(ablation),
        evidence.FINITE: str(bool(np.isfinite(ev.holdout_scores).all())).lower(),
        evidence.PARAMS: evidence.dumps(best.params),
    }


def write_card(spec: PipelineSpec, version: str, run_id: str, best: Trained, ev: Evaluation, prepared: Prepared, *,
               measured: latency.Latency, overfits: list[overfit.OverfitResult], ablation: dict[str, float],
               groups: dict[str, list[str]], settings: Settings) -> str:
    """Render the version's model card with the rubric as training knows it, attach it; its URL."""
    proof = testscore.gather(spec, version, settings=settings)
    facts = card.facts(spec, version=version, trained=best, metric=evaluation.metric_of(spec),
                       y=prepared.y["holdout"].to_numpy(), scores=ev.holdout_scores, candidate=ev.candidate,
                       baseline=ev.baseline, slices=ev.slices, tags=proof.tags, ablation=ablation, groups=groups,
                       latency=measured, overfit=[r.to_dict() for r in overfits])
    text = card.with_rubric(card.render(facts), testscore.evaluate(proof, testscore.CHECKS).markdown())
    return card.attach(spec.model_name, version, run_id, text, facts=facts, settings=settings)


def gate_promote(spec: PipelineSpec, version: str, decision: registry.GateDecision, *,
                 expected: str | None, actor: str, settings: Settings) -> tuple[bool, str]:
    """Promote a gate-passing version if the champion is still ``expected`` (the one the gate
    evaluated against); otherwise the refusal is in the audit log and the version stays a
    challenger. Returns (promoted, reason).

    Under ``rollout.mode: shadow | canary`` a version that has a champion to be compared with
    enters that stage of the rollout instead (:mod:`flywheel.training.stages`): ``flywheel
    rollout`` takes it on from there."""
    if spec.rollout.mode != "champion_only" and expected is not None:
        return _gate_rollout(spec, version, decision, expected=expected, actor=actor, settings=settings)
    try:
        promotion.promote(spec.model_name, version, reason=decision.reason, actor=actor,
                          expected=expected, settings=settings)
    except promotion.ChampionMoved as exc:
        log.warning("%s v%s not promoted: %s", spec.model_name, version, exc)
        return False, exc.record.reason
    return True, decision.reason


def _gate_rollout(spec: PipelineSpec, version: str, decision: registry.GateDecision, *, expected: str,
                  actor: str, settings: Settings) -> tuple[bool, str]:
    from flywheel.training import stages

    stage = spec.rollout.mode
    assert stage != "champion_only"
    try:
        stages.begin(spec.model_name, version, stage, reason=decision.reason, actor=actor,
                     expected_champion=expected, settings=settings)
    except stages.RolloutMoved as exc:
        log.warning("%s v%s not put into rollout: %s", spec.model_name, version, exc)
        return False, exc.record.reason
    return False, f"{decision.reason}; entered the {stage} stage of its rollout"


def log_run(spec: PipelineSpec, *, end: date, reason: str, frame: pd.DataFrame, identity: dict[str, Any],
            model: Trained, ev: Evaluation, prepared: Prepared, per_family: dict[str, dict[str, float]],
            decision: registry.GateDecision, settings: Settings) -> str:
    """Into the active run: params, metrics, data, evaluation report; registers the model."""
    import tempfile
    from pathlib import Path

    import mlflow

    metric = evaluation.metric_of(spec)
    mlflow.set_tags({"trigger": reason, "data.end": end.isoformat(), "family": model.name, "task": spec.task,
                     "data.feature_service": spec.feature_service, "gate.metric": metric,
                     "gate.promote": str(decision.promote).lower(), "gate.reason": decision.reason})
    mlflow.log_params({"family": model.name, "seed": spec.training.seed, "rows": len(frame), "task": spec.task,
                       "metric": metric, "threshold": round(ev.threshold, 6), "baseline": spec.training.baseline,
                       **{k: tuning.loggable(v) for k, v in model.params.items()}})
    mlflow.log_metrics(ev.logged_metrics() | {f"{name}_{k}": v for name, metrics in per_family.items()
                                              for k, v in metrics.items()})
    mlflow.log_dict(identity, "data_identity.json")
    mlflow.log_dict(per_family, "evaluation/families.json")
    mlflow.log_input(_dataset(frame, spec, identity, bucket=settings.bucket("curated")), context="training")
    importance = permutation_importance(model, prepared.x["validation"], prepared.y["validation"],
                                        metric=metric, seed=spec.training.seed)
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.write_report(
            Path(tmp), y=prepared.y["holdout"].to_numpy(), pred=ev.holdout_scores, baseline=ev.baseline_scores,
            metrics_={"candidate": ev.candidate, "baseline": ev.baseline, **(
                {"champion": ev.champion} if ev.champion else {})},
            slices=ev.slices, importance=importance, threshold=ev.threshold, families=per_family,
            task=spec.task, metric=metric, classes=[str(c) for c in prepared.encoding.classes])
        mlflow.log_artifacts(tmp, "evaluation")
    info = model.family.log_model(model.model, registered_model_name=spec.model_name,
                                  example=prepared.x["holdout"].head(3))
    return str(info.registered_model_version)


def _dataset(frame: pd.DataFrame, spec: PipelineSpec, identity: dict[str, Any], *, bucket: str) -> Any:
    """The training set as an MLflow dataset (shown in the run's Datasets), sourced from curated S3."""
    from mlflow.data.pandas_dataset import from_pandas

    source = f"s3://{bucket}/{spec.dataset.name}/ds={identity['start']}..{identity['end']}"
    targets = spec.target if spec.target in frame.columns else None
    return from_pandas(frame, source=source, name=f"{spec.dataset.name}-{identity['end']}", targets=targets)


def tag_version(spec: PipelineSpec, version: str, settings: Settings, *, threshold: float, run_id: str,
                family: str, decision: registry.GateDecision, identity: dict[str, Any], features: list[str],
                classes: list[Any], awaiting_approval: bool = False,
                champion_version: str | None = None, extra: dict[str, str] | None = None) -> None:
    """What serving needs (task, classes, threshold, features, the compiled runtime's ``extra``
    tags) and the version's lineage, as tags."""
    mlflow_client = registry.client(settings)
    tags = {
        "family": family,
        "task": spec.task,
        "gate.awaiting_approval": str(awaiting_approval).lower(),
        "threshold": str(threshold),
        "features": json.dumps(list(features)),
        "run_id": run_id,
        "gate.metric": evaluation.metric_of(spec),
        "gate.promote": str(decision.promote).lower(),
        "gate.reason": decision.reason,
        "gate.champion_version": champion_version or NO_CHAMPION,
        "data.window": f"{identity['start']}..{identity['end']}",
        "data.partitions": json.dumps(identity["partitions"])[:5000],
        **({"classes": json.dumps(classes)} if spec.task == "multiclass" else {}),
        **lineage.lineage_tags(spec, settings, seed=spec.training.seed),
        **(extra or {}),
    }
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(spec.model_name, version, key, value)


def recent_days(frame: pd.DataFrame, spec: PipelineSpec, *, share: float = 0.3) -> pd.DataFrame:
    """Rows of the last whole days of the window (about ``share`` of its days, at least one)."""
    days = frame[spec.dataset.timestamp].dt.date
    keep = sorted(days.unique())[-max(1, round(days.nunique() * share)):]
    return frame[days.isin(keep)]


def reference_frame(spec: PipelineSpec, sample: pd.DataFrame, model: Trained,
                    featurize: Callable[[pd.DataFrame], pd.DataFrame], classes: list[Any]) -> pd.DataFrame:
    """Model matrix of ``sample`` with the model's 1-d outputs (binary: ``probability``;
    multiclass: ``predicted_class`` and its ``probability``; regression: ``value``) and the label,
    named as the prediction log names them (``flywheel.serving.logschema.OUTPUTS``)."""
    matrix = featurize(sample).reset_index(drop=True)
    out = registry.outputs(spec.task, model.scores(matrix), threshold=0.5, classes=classes)
    kept = {k: v for k, v in out.items() if np.ndim(v) == 1 and k != "decision"}
    if "class" in kept:
        kept["predicted_class"] = np.asarray([str(c) for c in kept.pop("class")], dtype=object)
    return matrix.assign(**kept, **{spec.target: sample[spec.target].to_numpy()})


def write_reference(spec: PipelineSpec, version: str, frame: pd.DataFrame, model: Trained,
                    settings: Settings, *, featurize: Callable[[pd.DataFrame], pd.DataFrame],
                    classes: list[Any] | None = None) -> str:
    """The reference monitoring compares serving traffic with.

    Built from the most recent whole days of the training window: early days have
    half-filled aggregates (a 7-day count after 2 days) and partial days skew the
    hour of day, either of which would make steady traffic look drifted.
    """
    sample = frame.sample(n=min(REFERENCE_ROWS, len(frame)), random_state=spec.training.seed)
    reference = reference_frame(spec, sample, model, featurize, classes or [])
    key = f"reference/{spec.model_name}/v{version}.parquet"
    return storage.put_bytes("features", key, storage.df_to_parquet_bytes(reference), settings=settings)
