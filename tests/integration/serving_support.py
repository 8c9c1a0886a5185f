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


def raw_post(url: str, path: str, headers: dict[str, str], parts=()) -> tuple[int, dict, bytes]:
    """POST over a bare socket: the request line and ``headers`` as given (so a body can be
    declared and never sent, or sent chunked and never finished), then ``parts``; returns the
    status, headers and body of the answer, read until its Content-Length (or the close)."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(url)
    head = f"POST {path} HTTP/1.1\r\nHost: {where.hostname}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection((where.hostname, where.port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n")
        for part in parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = top.decode().split("\r\n")
    answer = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), answer, body


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 62  # unknown: read until the server closes


def chunked(total: int, *, size: int = 65536) -> list[bytes]:
    """``total`` bytes of a chunked body in ``size`` chunks, with no terminating chunk (the body
    never ends) and no CRLF after the last chunk's data (every byte sent is one the server reads)."""
    parts, left = [], total
    while left:
        n = min(size, left)
        left -= n
        parts.append(b"%x\r\n" % n + b"x" * n + (b"\r\n" if left else b""))
    return parts


def source_server_env(settings, **overrides: str) -> dict[str, str]:
    """The environment the stack gives its model server (its settings and only its own secrets),
    for one started from source with ``bentoml serve serving.service:ModelService``; pass it its
    own ``BENTOML_HOME``: BentoML clears the metrics folder of the home it starts in."""
    return stack._model_server_env(settings) | overrides
