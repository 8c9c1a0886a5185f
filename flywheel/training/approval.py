"""A human approval of a gated version, days after the gate: the gate is checked again first.

The gate compared the version with the champion of its day (tag ``gate.champion_version``). When
that champion still stands, its decision holds and the promotion is a compare-and-set on it. When
the champion moved meanwhile (a later promotion, a rollback), the gate runs again against the
current champion on the version's own training window and holdout, and promotes only if it
passes. A refusal is in the audit log either way (``flywheel audit``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import numpy as np

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import evaluation, families, promotion, registry, trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApprovalResult:
    version: str
    promoted: bool
    rechecked: bool  # the champion had moved: the gate ran again
    reason: str
    champion: str | None  # the champion after the approval

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluated_champion(mv: Any) -> str | None:
    """The champion a version's gate compared it with (None: there was none)."""
    tag = mv.tags.get("gate.champion_version", trainer.NO_CHAMPION)
    return None if tag == trainer.NO_CHAMPION else str(tag)


def regate(spec: PipelineSpec, version: str, *, settings: Settings) -> registry.GateDecision:
    """The gate of ``version`` against the current champion, on the version's training window
    (tag ``data.window``) split as at training: the same holdout, the baseline retrained (seeded)."""
    from flywheel.features import store as features
    from flywheel.features.featurizer import featurizer_for

    mv = registry.client(settings).get_model_version(spec.model_name, version)
    start, end = (date.fromisoformat(d) for d in mv.tags["data.window"].split(".."))
    windowed = spec.model_copy(update={"training": spec.training.with_lookback((end - start).days + 1)})
    frame, _ = features.training_frame(windowed, end=end, settings=settings)
    fz = featurizer_for(spec)
    prepared = trainer.prepare(spec, frame, fz.frame)
    challenger = registry.load_version(spec.model_name, version, settings=settings)
    scores = np.asarray(challenger.scores(prepared.x["holdout"]), dtype="float64")
    if spec.task == "multiclass":
        scores = trainer.align_classes(scores, challenger.classes, list(prepared.encoding.classes))
    yh = prepared.y["holdout"].to_numpy()
    scored = trainer.Scored(challenger.threshold, trainer.measure(spec, yh, scores, challenger.threshold), scores)
    baseline = families.get(spec.training.baseline).train(
        prepared.fit_data(spec, fz.categorical), {}, seed=spec.training.seed, settings=settings)
    ev = trainer.evaluate(spec, prepared, scored, baseline, settings)
    metric = evaluation.metric_of(spec)
    return registry.decide(challenger=ev.candidate[metric], baseline=ev.baseline[metric],
                           champion=ev.champion[metric] if ev.champion else None,
                           min_improvement=spec.training.min_improvement, regressions=ev.regressions,
                           metric=metric)


def approve(spec: PipelineSpec, version: str, *, actor: str, settings: Settings | None = None) -> ApprovalResult:
    """Promote an approved ``version`` if its gate still holds against the current champion.

    Never raises for a gate that no longer holds or a champion that moved during the check: the
    result says ``promoted=False`` and why, and the audit log has the refusal.
    """
    settings = settings or get_settings()
    mv = registry.client(settings).get_model_version(spec.model_name, version)
    evaluated = evaluated_champion(mv)
    current_mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    current = None if current_mv is None else str(current_mv.version)
    reason = f"human approval; gate: {mv.tags.get('gate.reason', '')}"
    rechecked = current != evaluated
    if rechecked:
        decision = regate(spec, version, settings=settings)
        shown = "no champion" if current is None else f"champion v{current}"
        reason = (f"human approval; gate re-checked against {shown} (it was "
                  f"{'none' if evaluated is None else 'v' + evaluated} at training): {decision.reason}")
        if not decision.promote:
            promotion.refuse(spec.model_name, version, reason=reason, actor=actor, settings=settings)
            log.warning("%s v%s approved but not promoted: %s", spec.model_name, version, reason)
            return ApprovalResult(version, False, True, reason, current)
    try:
        promotion.promote(spec.model_name, version, reason=reason, actor=actor, expected=current,
                          settings=settings)
    except promotion.ChampionMoved as exc:
        return ApprovalResult(version, False, rechecked, exc.record.reason, exc.record.from_version)
    return ApprovalResult(version, True, rechecked, reason, str(version))
