"""Shared pieces of the serving tests: a served bento of the current champion and a request body."""

from __future__ import annotations

from datetime import timedelta

import httpx

from flywheel.stack import launcher as stack
from flywheel.training import registry
from flywheel.training.packaging import build_bento
from flywheel.training.trainer import train

from .conftest import DAYS, FIRST_DAY

END = FIRST_DAY + timedelta(days=DAYS - 1)


def txn(**overrides):
    body = {"transaction_id": "t-1", "user_id": 12, "merchant_id": 7, "amount": 42.5,
            "event_timestamp": f"{END.isoformat()}T13:05:00Z", "merchant_category": "grocery",
            "country": "US", "device": "pos"}
    return body | overrides


def has_series(metrics: str, name: str, **labels: str) -> bool:
    """Whether the Prometheus text has a ``name`` series carrying at least ``labels`` (any order)."""
    import re

    for line in metrics.splitlines():
        match = re.match(rf"{name}{{(.*)}} ", line)
        if match and all(f'{k}="{v}"' in re.findall(r'\w+="[^"]*"', match.group(1)) for k, v in labels.items()):
            return True
    return False


def champion_version(spec, settings) -> str:
    """The champion, training one first when the session has none yet (test modules run in any order)."""
    mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if mv is None:
        result = train(only(spec, "xgboost"), end=END, reason="serving test", settings=settings)
        assert result.promoted, result.reason
        return result.version
    return str(mv.version)


def serve(spec, settings, version: str):
    """Build the bento and start the model server; returns (settings, authenticated client)."""
    tag = build_bento(spec, version=version, settings=settings)
    served = stack.up(settings, services=["model-server"], bento=tag)
    key = served.api_key.get_secret_value()
    http = httpx.Client(base_url=str(served.model_server_url), headers={"X-API-Key": key}, timeout=30)
    return served, http, key


def only(spec, family: str, **params):
    """The spec with one candidate family, fixed ``params`` merged in, and no search (fast)."""
    t = spec.training
    candidate = t.candidates[family].model_copy(update={"search": {}, "params": {**t.candidates[family].params,
                                                                                  **params}})
    return spec.model_copy(update={"training": t.model_copy(update={
        "candidates": {family: candidate}, "search": t.search.model_copy(update={"trials": 0})})})
