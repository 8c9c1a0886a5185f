"""The rollout stages of a version on its way to champion: the ``rollout`` alias and its stage tag.

A version under rollout is behind the ``rollout`` alias, its stage in the version tag
``rollout.stage`` (``shadow`` | ``canary``); the model server reads both in one registry call
(:mod:`flywheel.serving.challenger`). Every move here follows the rules of
:mod:`flywheel.training.promotion`: it holds the model's champion lease, checks the state it
``expected`` (compare-and-set: the version and stage it decided on, and the champion), writes its
audit record (actions ``shadow``, ``canary``, ``abort``; the last step is a ``promote``) as
``pending`` before the registry moves and ``done`` after, and a refusal is recorded too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Literal

from flywheel.core import layout, lease
from flywheel.core.config import Settings, get_settings
from flywheel.training import promotion, registry

ROLLOUT: Final = "rollout"  # the alias of the version under rollout
STAGE_TAG: Final = "rollout.stage"
Stage = Literal["shadow", "canary"]
STAGES: Final[tuple[Stage, ...]] = ("shadow", "canary")


@dataclass(frozen=True)
class Rollout:
    """The version under rollout, its stage, and the champion it is measured against."""

    version: str
    stage: Stage
    champion: str | None


class RolloutMoved(promotion.PromotionError):
    """The rollout or the champion is not what the move expected; ``record`` is the refusal."""

    def __init__(self, record: promotion.AuditRecord) -> None:
        super().__init__(record.reason)
        self.record = record


def current(model_name: str, *, settings: Settings | None = None) -> Rollout | None:
    """The version under rollout, or None (no ``rollout`` alias, or a version without a stage)."""
    settings = settings or get_settings()
    mv = registry.alias_version(model_name, ROLLOUT, settings=settings)
    stage = None if mv is None else mv.tags.get(STAGE_TAG)
    if mv is None or stage not in STAGES:
        return None
    champion = registry.alias_version(model_name, registry.CHAMPION, settings=settings)
    return Rollout(str(mv.version), stage, None if champion is None else str(champion.version))


def begin(model_name: str, version: str, stage: Stage, *, reason: str, actor: str,
          expected_champion: str | None | promotion._Any = promotion.ANY,
          settings: Settings | None = None) -> promotion.AuditRecord:
    """Put ``version`` behind the ``rollout`` alias at ``stage`` (replacing any version under
    rollout: the newer gate-passing version is the one to try). Raises :class:`RolloutMoved`
    when the champion is not ``expected_champion``."""
    settings = settings or get_settings()
    with lease.hold(layout.champion_lease_key(model_name), holder=actor, settings=settings):
        return _stage_locked(model_name, version, stage, reason=reason, actor=actor,
                             expected=None, expected_champion=expected_champion, settings=settings)


def advance(model_name: str, expected: Rollout, *, reason: str, actor: str,
            settings: Settings | None = None) -> promotion.AuditRecord:
    """Move the version under rollout one stage on: shadow → canary, canary → champion (the
    ``rollout`` alias is then removed). Raises :class:`RolloutMoved` when the rollout or the
    champion changed since ``expected`` was read."""
    settings = settings or get_settings()
    with lease.hold(layout.champion_lease_key(model_name), holder=actor, settings=settings):
        if expected.stage == "shadow":
            return _stage_locked(model_name, expected.version, "canary", reason=reason, actor=actor,
                                 expected=expected, expected_champion=expected.champion, settings=settings)
        _check(model_name, expected, action="promote", reason=reason, actor=actor, settings=settings)
        record = promotion._move_locked(model_name, expected.version, action="promote", actor=actor,
                                        reason=reason, expected=expected.champion, settings=settings)
        registry.client(settings).delete_registered_model_alias(model_name, ROLLOUT)
        return record


def abort(model_name: str, expected: Rollout, *, reason: str, actor: str,
          settings: Settings | None = None) -> promotion.AuditRecord:
    """Take the version under rollout out of traffic (the champion alone serves again): the
    automatic rollback of a failing stage. Raises :class:`RolloutMoved` as :func:`advance`."""
    settings = settings or get_settings()
    with lease.hold(layout.champion_lease_key(model_name), holder=actor, settings=settings):
        record = _check(model_name, expected, action="abort", reason=reason, actor=actor, settings=settings)
        client = registry.client(settings)

        def take_out() -> None:
            client.delete_registered_model_alias(model_name, ROLLOUT)
            client.set_model_version_tag(model_name, expected.version, STAGE_TAG, "aborted")

        return _audited(record, take_out, settings)


def _stage_locked(model_name: str, version: str, stage: Stage, *, reason: str, actor: str,
                  expected: Rollout | None, expected_champion: str | None | promotion._Any,
                  settings: Settings) -> promotion.AuditRecord:
    if expected is not None:
        record = _check(model_name, expected, action=stage, reason=reason, actor=actor, settings=settings)
    else:
        champion = _champion(model_name, settings)
        record = _record(model_name, stage, champion, version, reason=reason, actor=actor)
        if not isinstance(expected_champion, promotion._Any) and champion != expected_champion:
            _refuse(record, f"the champion is {_shown(champion)}, not {_shown(expected_champion)}", settings)

    def put_in() -> None:
        registry.client(settings).set_model_version_tag(model_name, version, STAGE_TAG, stage)
        registry.set_alias(model_name, ROLLOUT, version, settings=settings)

    return _audited(record, put_in, settings)


def _audited(record: promotion.AuditRecord, move: Callable[[], None], settings: Settings) -> promotion.AuditRecord:
    """``move`` the registry between the ``pending`` audit record and the ``done`` one (``failed``
    when the move raises, and the error goes on)."""
    key = _pending(record, settings)
    try:
        move()
    except Exception:
        promotion._write(replace(record, outcome="failed"), key, settings)
        raise
    done = replace(record, outcome="done")
    promotion._write(done, key, settings)
    return done


def _check(model_name: str, expected: Rollout, *, action: str, reason: str, actor: str,
           settings: Settings) -> promotion.AuditRecord:
    """The compare-and-set: the record of the move when the state is ``expected``; otherwise the
    refusal is recorded and :class:`RolloutMoved` raised."""
    now = current(model_name, settings=settings)
    champion = _champion(model_name, settings)
    record = _record(model_name, action, champion, expected.version, reason=reason, actor=actor)
    if now is None or (now.version, now.stage) != (expected.version, expected.stage) \
            or champion != expected.champion:
        seen = "no version under rollout" if now is None else f"v{now.version} at {now.stage}"
        _refuse(record, f"the rollout is {seen} with champion {_shown(champion)}, not v{expected.version} at "
                        f"{expected.stage} with champion {_shown(expected.champion)}", settings)
    return record


def _record(model_name: str, action: str, champion: str | None, version: str, *, reason: str,
            actor: str) -> promotion.AuditRecord:
    if not reason.strip():
        raise promotion.PromotionError("a reason is required to move a rollout stage")
    return promotion.AuditRecord(model=model_name, action=action, from_version=champion, to_version=str(version),
                                 actor=actor, reason=reason, at=promotion._now(), outcome="pending")


def _pending(record: promotion.AuditRecord, settings: Settings) -> str:
    key = promotion._key(record, uuid.uuid4().hex[:8])
    promotion._write(record, key, settings)  # the record first: no move goes unaudited
    return key


def _refuse(record: promotion.AuditRecord, why: str, settings: Settings) -> None:
    refused = replace(record, outcome="refused", reason=f"{record.reason} | refused: {why} (it moved meanwhile; "
                                                        "see `flywheel audit`)")
    promotion._write(refused, promotion._key(refused, uuid.uuid4().hex[:8]), settings)
    raise RolloutMoved(refused)


def _champion(model_name: str, settings: Settings) -> str | None:
    mv = registry.alias_version(model_name, registry.CHAMPION, settings=settings)
    return None if mv is None else str(mv.version)


def _shown(version: str | None | promotion._Any) -> str:
    return "none" if version is None else f"v{version}"
