"""Moving the ``champion`` alias: compare-and-set, audited before the move.

Every promotion (by the training gate, an approval or a person) and every rollback:

1. takes the model's champion lease (:mod:`flywheel.core.lease`, an object in the store);
2. reads the champion; a move that says which champion it ``expected`` (the gate: the one it
   evaluated against) is refused when another stands there now: a ``refused`` audit record
   says why, and :class:`ChampionMoved` is raised; nothing moves;
3. writes the audit record (who, why, when, from → to) as ``pending``, *then* moves the alias
   and stamps the version with who/why/when tags, then marks the record ``done`` (``failed``
   if the registry refused the move). An alias never moves without its record; a crash between
   the two leaves a ``pending`` record whose ``to_version`` is not the champion: it never landed.

What this guarantees, and against whom: moves made through this module (the training gate,
``flywheel promote``/``rollback``/``approve``, the registry and training DAGs) are serialized
per model and each sees the champion it checks; a gate whose evaluation was overtaken by a
manual promotion or rollback stops instead of overwriting it. A move made behind Flywheel's back
(the MLflow UI or API setting the alias directly) takes no lease: it is not prevented, only
detected by the next gate (the champion differs from the one it evaluated).

Records live under ``s3://<prefix>-reports/audit/<model>/``. A rollback restores the champion
that preceded the current one, in one call.
"""

from __future__ import annotations

import getpass
import json
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Final

from flywheel.core import layout, lease, storage
from flywheel.core.config import Settings, get_settings
from flywheel.training import registry


class PromotionError(RuntimeError):
    """The alias cannot be moved as asked; the message says why."""


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Final = _Any()
"""``expected=ANY``: move whatever the champion is now (a person's explicit promotion)."""

# What a record's outcome says about the alias.
MOVED = frozenset({"done", "pending"})  # pending: the record of a move whose end was not seen


@dataclass(frozen=True)
class AuditRecord:
    model: str
    action: str  # "promote" | "rollback"
    from_version: str | None
    to_version: str
    actor: str
    reason: str
    at: str
    outcome: str = "done"  # "pending" → "done" | "failed"; "refused": a compare-and-set that lost

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


class ChampionMoved(PromotionError):
    """The champion is no longer the one the move expected; ``record`` is the refusal's audit record."""

    def __init__(self, record: AuditRecord) -> None:
        super().__init__(record.reason)
        self.record = record


def _key(record: AuditRecord, suffix: str) -> str:
    return f"{layout.audit_prefix(record.model)}{record.at}-{suffix}.json"


def _write(record: AuditRecord, key: str, settings: Settings) -> None:
    storage.put_bytes("reports", key, json.dumps(record.to_dict(), sort_keys=True).encode(),
                      content_type="application/json", settings=settings)


def history(model_name: str, *, settings: Settings | None = None) -> list[AuditRecord]:
    """Every audit record of a model (moves, refusals, failures), oldest first."""
    settings = settings or get_settings()
    keys = sorted(storage.list_keys("reports", layout.audit_prefix(model_name), settings=settings))
    return [AuditRecord(**json.loads(storage.get_bytes("reports", k, settings=settings))) for k in keys]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def _version_of(mv: object | None) -> str | None:
    return None if mv is None else str(mv.version)  # type: ignore[attr-defined]


def _move_locked(model_name: str, version: str, *, action: str, actor: str, reason: str,
                 expected: str | None | _Any, settings: Settings) -> AuditRecord:
    """The compare-and-set, audited first; the caller holds the champion lease."""
    current = _version_of(registry.alias_version(model_name, registry.CHAMPION, settings=settings))
    record = AuditRecord(model=model_name, action=action, from_version=current, to_version=str(version),
                         actor=actor, reason=reason, at=_now(), outcome="pending")
    suffix = uuid.uuid4().hex[:8]
    if not isinstance(expected, _Any) and current != expected:
        refused = replace(record, outcome="refused", reason=(
            f"{reason} | refused: the champion is {_shown(current)}, not {_shown(expected)} as this "
            f"move expected (it moved meanwhile; see `flywheel audit`)"))
        _write(refused, _key(refused, suffix), settings)
        raise ChampionMoved(refused)
    _write(record, _key(record, suffix), settings)  # the record first: no move goes unaudited
    client = registry.client(settings)
    try:
        registry.set_alias(model_name, registry.CHAMPION, version, settings=settings)
        for tag, value in (("champion.by", actor), ("champion.reason", reason), ("champion.at", record.at)):
            client.set_model_version_tag(model_name, version, tag, value)
    except Exception:
        _write(replace(record, outcome="failed"), _key(record, suffix), settings)
        raise
    done = replace(record, outcome="done")
    _write(done, _key(done, suffix), settings)
    return done


def _shown(version: str | None | _Any) -> str:
    return "none" if version is None else f"v{version}"


def _checked(model_name: str, version: str, reason: str, settings: Settings) -> None:
    if not reason.strip():
        raise PromotionError("a reason is required to move the champion alias")
    from mlflow.exceptions import MlflowException

    try:
        registry.client(settings).get_model_version(model_name, version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            raise PromotionError(f"{model_name} has no version {version!r} (see `flywheel audit` and MLflow)") \
                from exc
        if exc.get_http_status_code() in (401, 403):  # MLflow's auth app: also its answer for no such model
            raise PromotionError(f"MLflow refused to read {model_name} v{version} as {settings.mlflow_username!r}: "
                                 "no such model, or this identity may not read it") from exc
        raise


def promote(model_name: str, version: str, *, reason: str, actor: str | None = None,
            expected: str | None | _Any = ANY, settings: Settings | None = None) -> AuditRecord:
    """Make ``version`` the champion, if the champion is ``expected`` (a version, or None for
    "no champion yet"; :data:`ANY` skips the check).

    Raises :class:`PromotionError` without a reason, :class:`ChampionMoved` (after recording the
    refusal) when the champion is not ``expected``, ``LeaseBusy`` when another move holds the
    lease for longer than 30 s.
    """
    settings = settings or get_settings()
    _checked(model_name, version, reason, settings)
    actor = actor or getpass.getuser()
    with lease.hold(layout.champion_lease_key(model_name), holder=actor, settings=settings):
        return _move_locked(model_name, version, action="promote", actor=actor, reason=reason,
                            expected=expected, settings=settings)


def rollback(model_name: str, *, reason: str, actor: str | None = None,
             settings: Settings | None = None) -> AuditRecord:
    """Restore the champion that preceded the current one (read and moved under the lease).

    Raises :class:`PromotionError` when there is no champion or no earlier one in the audit log.
    """
    settings = settings or get_settings()
    if not reason.strip():
        raise PromotionError("a reason is required to move the champion alias")
    actor = actor or getpass.getuser()
    with lease.hold(layout.champion_lease_key(model_name), holder=actor, settings=settings):
        current = _version_of(registry.alias_version(model_name, registry.CHAMPION, settings=settings))
        if current is None:
            raise PromotionError(f"{model_name} has no champion to roll back")
        previous = _previous_champion(history(model_name, settings=settings), current)
        if previous is None:
            raise PromotionError(f"{model_name} v{current} has no earlier champion in the audit log")
        return _move_locked(model_name, previous, action="rollback", actor=actor, reason=reason,
                            expected=current, settings=settings)


def refuse(model_name: str, version: str, *, reason: str, actor: str,
           settings: Settings | None = None) -> AuditRecord:
    """Record a promotion that was asked for and not made (e.g. an approval whose re-checked
    gate failed): the audit log shows every request, not only the moves."""
    settings = settings or get_settings()
    current = _version_of(registry.alias_version(model_name, registry.CHAMPION, settings=settings))
    record = AuditRecord(model=model_name, action="promote", from_version=current, to_version=str(version),
                         actor=actor, reason=reason, at=_now(), outcome="refused")
    _write(record, _key(record, uuid.uuid4().hex[:8]), settings)
    return record


def _previous_champion(records: list[AuditRecord], current: str) -> str | None:
    """The version that was champion right before ``current`` last became champion (refused and
    failed moves did not move it)."""
    for record in reversed(records):
        if record.outcome in MOVED and record.to_version == current:
            return record.from_version
    return None
