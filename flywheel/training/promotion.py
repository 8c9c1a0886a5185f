"""Moving the ``champion`` alias, with an audit record for every move.

Every promotion (by the training gate or by a person) and every rollback appends a
record (who, why, when, from → to) to ``s3://<prefix>-reports/audit/<model>/`` and
stamps the promoted version with who/why/when tags. A rollback restores the champion
that preceded the current one, in one call.
"""

from __future__ import annotations

import getpass
import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings
from flywheel.training import registry


class PromotionError(RuntimeError):
    """The alias cannot be moved as asked; the message says why."""


@dataclass(frozen=True)
class AuditRecord:
    model: str
    action: str  # "promote" | "rollback"
    from_version: str | None
    to_version: str
    actor: str
    reason: str
    at: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def _audit_prefix(model_name: str) -> str:
    return f"audit/{model_name}/"


def _write(record: AuditRecord, settings: Settings) -> None:
    key = f"{_audit_prefix(record.model)}{record.at}-{uuid.uuid4().hex[:8]}.json"
    storage.put_bytes("reports", key, json.dumps(record.to_dict(), sort_keys=True).encode(),
                      content_type="application/json", settings=settings)


def history(model_name: str, *, settings: Settings | None = None) -> list[AuditRecord]:
    """Every alias move of a model, oldest first."""
    settings = settings or get_settings()
    keys = sorted(storage.list_keys("reports", _audit_prefix(model_name), settings=settings))
    return [AuditRecord(**json.loads(storage.get_bytes("reports", k, settings=settings))) for k in keys]


def _move(model_name: str, version: str, *, action: str, actor: str | None, reason: str,
          settings: Settings) -> AuditRecord:
    if not reason.strip():
        raise PromotionError("a reason is required to move the champion alias")
    current = registry.alias_version(model_name, registry.CHAMPION, settings=settings)
    client = registry.client(settings)
    client.get_model_version(model_name, version)  # raises if the version does not exist
    record = AuditRecord(
        model=model_name,
        action=action,
        from_version=str(current.version) if current is not None else None,
        to_version=str(version),
        actor=actor or getpass.getuser(),
        reason=reason,
        at=datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ"),
    )
    registry.set_alias(model_name, registry.CHAMPION, version, settings=settings)
    for key, value in (("champion.by", record.actor), ("champion.reason", reason), ("champion.at", record.at)):
        client.set_model_version_tag(model_name, version, key, value)
    _write(record, settings)
    return record


def promote(model_name: str, version: str, *, reason: str, actor: str | None = None,
            settings: Settings | None = None) -> AuditRecord:
    """Make ``version`` the champion; raises :class:`PromotionError` without a reason."""
    return _move(model_name, version, action="promote", actor=actor, reason=reason,
                 settings=settings or get_settings())


def rollback(model_name: str, *, reason: str, actor: str | None = None,
             settings: Settings | None = None) -> AuditRecord:
    """Restore the champion that preceded the current one.

    Raises :class:`PromotionError` when the audit history has no earlier champion.
    """
    settings = settings or get_settings()
    current = registry.alias_version(model_name, registry.CHAMPION, settings=settings)
    if current is None:
        raise PromotionError(f"{model_name} has no champion to roll back")
    previous = _previous_champion(history(model_name, settings=settings), str(current.version))
    if previous is None:
        raise PromotionError(f"{model_name} v{current.version} has no earlier champion in the audit log")
    return _move(model_name, previous, action="rollback", actor=actor, reason=reason, settings=settings)


def _previous_champion(records: list[AuditRecord], current: str) -> str | None:
    """The version that was champion right before ``current`` last became champion."""
    for record in reversed(records):
        if record.to_version == current:
            return record.from_version
    return None
