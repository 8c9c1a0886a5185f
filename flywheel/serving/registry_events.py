"""Reload on push: MLflow registry webhooks on alias and tag events, verified, then a refresh.

MLflow 3.x (SQL backend) POSTs a JSON event to a webhook when an alias is set or removed, or a
version tag is set. With ``serving_registry_webhook_secret`` set, the model server registers one
webhook (:func:`register`, idempotent by name) for ``model_version_alias.created|deleted`` and
``model_version_tag.set`` pointing at its ``POST /registry/events``, and answers an event whose
HMAC signature (``X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">``)
checks and whose timestamp is at most :data:`MAX_AGE_S` old: it refreshes the champion and the
rollout of the event's model at once, instead of at the next poll. Polling
(``champion_refresh_s``) stays on: a lost or late event (MLflow caches its webhook list for
``MLFLOW_WEBHOOK_CACHE_TTL`` s, retries a failed delivery a few times, then gives up) costs one
refresh interval, never a wrong model. Without the secret the route answers 404: closed by default.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, Final

from flywheel.core.config import Settings

log = logging.getLogger(__name__)
PATH: Final = "/registry/events"
EVENTS: Final = ("model_version_alias.created", "model_version_alias.deleted", "model_version_tag.set")
MAX_AGE_S: Final = 300.0
SIGNATURE, TIMESTAMP, DELIVERY = "x-mlflow-signature", "x-mlflow-timestamp", "x-mlflow-delivery-id"


class RegistryEventRejected(ValueError):
    """A registry event that is not answered: unsigned, wrongly signed, stale or unreadable."""


def verified_model(body: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None) -> str:
    """The registered model an event names, once its signature and age check.

    ``headers``: lower-case names. Raises :class:`RegistryEventRejected` naming what failed."""
    signature, stamp, delivery = (headers.get(h, "") for h in (SIGNATURE, TIMESTAMP, DELIVERY))
    if not signature or not stamp or not delivery:
        raise RegistryEventRejected(f"missing {SIGNATURE}, {TIMESTAMP} or {DELIVERY} header")
    expected = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256).digest()
    given = signature.removeprefix("v1,")
    if not hmac.compare_digest(given.encode(), base64.b64encode(expected)):
        raise RegistryEventRejected("wrong signature")
    try:
        age = (time.time() if now is None else now) - float(stamp)
    except ValueError as exc:
        raise RegistryEventRejected(f"{TIMESTAMP} {stamp!r} is not a Unix time") from exc
    if abs(age) > MAX_AGE_S:
        raise RegistryEventRejected(f"event is {age:.0f} s old (limit {MAX_AGE_S:.0f} s)")
    try:
        event = json.loads(body)
        return str(event["data"]["name"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryEventRejected("body is not an MLflow registry event") from exc


def webhook_url(settings: Settings) -> str:
    """Where MLflow sends events: this model server's own route."""
    base = (settings.model_server_url or f"http://{settings.host}:{settings.ports.model_server}").rstrip("/")
    return base + PATH


def register(settings: Settings, *, client: Any = None) -> str | None:
    """Create (or update) the model server's webhook; returns its id, None without a secret.

    Raises what MLflow raises (a file backend has no webhooks: an ``MlflowException``)."""
    secret = settings.serving_registry_webhook_secret
    if secret is None:
        return None
    if client is None:
        from flywheel.training import registry

        client = registry.client(settings)
    url = webhook_url(settings)
    name = f"flywheel-model-server-{settings.ports.model_server}"
    existing = next((w for w in client.list_webhooks() if w.name == name), None)
    if existing is not None:
        hook = client.update_webhook(existing.webhook_id, url=url, events=list(EVENTS),
                                     secret=secret.get_secret_value(), status="ACTIVE")
    else:
        hook = client.create_webhook(name=name, url=url, events=list(EVENTS), secret=secret.get_secret_value(),
                                     description="Flywheel model server: reload on alias and tag events")
    log.info("registry webhook %s → %s (%s)", hook.webhook_id, url, ", ".join(EVENTS))
    return str(hook.webhook_id)
