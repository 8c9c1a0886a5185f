"""Evidence that takes a deliberate act: reproduce a version, drill a rollback.

``flywheel reproduce``: retrain a version's family with its recorded parameters and seed on
the same data window, score the same holdout, and compare with the registered model (scores
and the gate metric within a tolerance). ``flywheel drill``: roll the champion back to the one
before it, then restore it, both through :mod:`flywheel.training.promotion` (leased, audited).
Each records its outcome on the version (:mod:`flywheel.training.evidence`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import evaluation, evidence, families, promotion, registry

log = logging.getLogger(__name__)
TOLERANCE = 1e-6


class ReproductionError(RuntimeError):
    """A version lacks what a reproduction needs (its window, family or parameters)."""


@dataclass(frozen=True)
class Reproduction:
    at: str
    window: str
    seed: int
    family: str
    rows: int
    max_abs_diff: float
    metric: str
    logged: float
    reproduced: float
    tolerance: float
    spec_changed: bool
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Drill:
    at: str
    champion: str
    rolled_back_to: str
    restored: str
    audit: list[str]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _window(tags: dict[str, str], where: str) -> tuple[date, date]:
    start, _, end = tags.get("data.window", "").partition("..")
    if not end:
        raise ReproductionError(f"{where} has no data.window tag: it cannot be reproduced")
    return date.fromisoformat(start), date.fromisoformat(end)


def reproduce(spec: PipelineSpec, version: str, *, tolerance: float = TOLERANCE,
              settings: Settings | None = None) -> Reproduction:
    """Retrain ``version`` (same window, family, parameters, seed) and compare it with the
    registered model on the same holdout; records :data:`evidence.REPRODUCE` on the version.

    Raises :class:`ReproductionError` when the version lacks its window or parameters."""
    from flywheel.features import store as features
    from flywheel.features.featurizer import featurizer_for
    from flywheel.training import lineage, trainer

    settings = settings or get_settings()
    client = registry.client(settings)
    mv = client.get_model_version(spec.model_name, version)
    tags, where = dict(mv.tags), f"{spec.model_name} v{version}"
    start, end = _window(tags, where)
    if evidence.PARAMS not in tags:
        raise ReproductionError(f"{where} has no {evidence.PARAMS} tag (trained before reproductions)")
    seed = int(tags.get("lineage.seed", spec.training.seed))
    spec_changed = tags.get("lineage.spec.sha256") != lineage.spec_digest(spec)
    window_spec = spec.model_copy(update={"training": spec.training.model_copy(
        update={"lookback_days": (end - start).days + 1, "seed": seed})})
    fz = featurizer_for(window_spec)
    frame, _ = features.training_frame(window_spec, end=end, settings=settings)
    prepared = trainer.prepare(window_spec, frame, fz.frame)
    data = prepared.fit_data(window_spec, fz.categorical)
    family = families.get(tags["family"])
    retrained = family.train(data, json.loads(tags[evidence.PARAMS]), seed=seed, settings=settings)
    holdout = prepared.x["holdout"]
    registered = registry.load_version(spec.model_name, version, settings=settings)
    new, old = retrained.scores(holdout), np.asarray(registered.scores(holdout), dtype="float64")
    metric = tags.get("gate.metric") or evaluation.metric_of(spec)
    logged = float(client.get_run(tags.get("run_id") or mv.run_id).data.metrics.get(f"holdout_{metric}", "nan"))
    again = trainer.score(window_spec, prepared, retrained).metrics[metric]
    diff = float(np.max(np.abs(new - old))) if len(new) else 0.0
    passed = diff <= tolerance and bool(abs(again - logged) <= max(tolerance, 1e-9) or
                                        (np.isnan(again) and np.isnan(logged)))
    result = Reproduction(_now(), f"{start}..{end}", seed, family.name, len(holdout), diff, metric, logged,
                          float(again), tolerance, spec_changed, passed)
    client.set_model_version_tag(spec.model_name, version, evidence.REPRODUCE, evidence.dumps(result.to_dict()))
    log.info("%s reproduced: max |Δscore| %.3g, %s %.6g vs %.6g logged: %s", where, diff, metric, again, logged,
             "passed" if passed else "FAILED")
    return result


def rollback_drill(spec: PipelineSpec, *, actor: str | None = None,
                   settings: Settings | None = None) -> Drill:
    """Roll the champion back to the one before it, then restore it (both audited); records
    :data:`evidence.ROLLBACK_DRILL` on the champion. Serving follows the alias, so for a
    refresh interval or so the previous champion answers.

    Raises :class:`flywheel.training.promotion.PromotionError` when there is no champion or no
    earlier one to roll back to."""
    settings = settings or get_settings()
    model = spec.model_name
    current = registry.alias_version(model, registry.CHAMPION, settings=settings)
    if current is None:
        raise promotion.PromotionError(f"{model} has no champion: nothing to drill")
    champion = str(current.version)
    back = promotion.rollback(model, reason="rollback drill: roll back", actor=actor, settings=settings)
    restored = promotion.promote(model, champion, reason="rollback drill: restore", actor=actor,
                                 expected=back.to_version, settings=settings)
    now = registry.alias_version(model, registry.CHAMPION, settings=settings)
    drill = Drill(_now(), champion, back.to_version, restored.to_version, [back.at, restored.at],
                  passed=now is not None and str(now.version) == champion)
    registry.client(settings).set_model_version_tag(model, champion, evidence.ROLLBACK_DRILL,
                                                    evidence.dumps(drill.to_dict()))
    return drill
