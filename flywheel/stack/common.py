"""What the launcher and :mod:`flywheel.stack.security` share: the stack's error, reading a
secret, writing a private file. Its own module so neither imports the other."""

from __future__ import annotations

import os
from pathlib import Path

from flywheel.core.config import SECRETS_FILE, Settings, read_secrets

__all__ = ["SECRETS_FILE", "StackError", "_secret", "_write_private"]


class StackError(RuntimeError):
    """The embedded stack could not be started, stopped or inspected."""


def _write_private(path: Path, text: str) -> None:
    """Atomically write a file only the owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _secret(settings: Settings, key: str) -> str:
    value = getattr(settings, key, None)
    if value is not None:
        return str(value.get_secret_value() if hasattr(value, "get_secret_value") else value)
    stored = read_secrets(settings.home).get(key)
    if not stored:
        raise StackError(f"secret {key!r} missing: run ensure_secrets() / `flywheel up` first")
    return stored
