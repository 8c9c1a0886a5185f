"""What every example's traffic needs from the model server: an authenticated client, and a wait
for the prediction log (it is flushed off the request path)."""

from __future__ import annotations

import time as clock
from datetime import date

import httpx

from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec


def http_client(settings: Settings) -> httpx.Client:
    """A client of the model server with the API key."""
    headers = {"X-API-Key": settings.api_key.get_secret_value() if settings.api_key else ""}
    return httpx.Client(base_url=str(settings.model_server_url), headers=headers, timeout=60)


def wait_for_logs(settings: Settings, spec: PipelineSpec, day: date, rows: int, *, timeout: float = 60) -> int:
    """Wait until ``rows`` predictions of ``day`` are in the use case's prediction log."""
    from flywheel.monitoring.drift import load_predictions

    deadline = clock.monotonic() + timeout
    logged = 0
    while clock.monotonic() < deadline:
        logged = len(load_predictions(spec, start=day, end=day, settings=settings))
        if logged >= rows:
            return logged
        clock.sleep(0.5)
    raise TimeoutError(f"{logged} of {rows} predictions of {spec.name} on {day} logged after {timeout:.0f} s")
