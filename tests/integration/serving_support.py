"""Shared pieces of the serving tests: a served bento of the current champion and a request body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

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


def start_source_server(env: dict[str, str], port: int, log: Path, *args: str):
    """``bentoml serve serving.service:ModelService`` from source on 127.0.0.1:``port`` with
    ``env``, its output appended to ``log``; returns the process (stop it with :func:`stop_server`)."""
    import subprocess

    from flywheel.core.config import PROJECT_ROOT
    from flywheel.training.packaging import bentoml_bin

    command = [bentoml_bin(), "serve", "serving.service:ModelService", "--host", "127.0.0.1", "--port", str(port),
               *args]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_ready(proc, url: str, log: Path, timeout: float = 300) -> None:
    """Until ``url``'s /readyz answers 200; fails with the log's tail when the server exits."""
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    assert proc.poll() is None, log.read_text()[-3000:]
    raise AssertionError(f"{url} not ready after {timeout:.0f} s: {log.read_text()[-3000:]}")


def stop_server(proc) -> None:
    """SIGTERM the server's process group (it drains its prediction-log spool), SIGKILL after 60 s."""
    import os
    import signal
    import subprocess

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def source_server(settings, folder: Path, *, port: int, **env: str) -> Iterator[httpx.Client]:
    """The model server from source, with the environment the stack gives it (its own secrets
    only) plus ``env``, its log ``folder/model-server.log``; yields an authenticated client."""
    full = source_server_env(settings, FLYWHEEL_PORTS__MODEL_SERVER=str(port),
                             BENTOML_HOME=str(folder / "bentoml"), **env)
    log = folder / "model-server.log"
    proc = start_source_server(full, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log)
        with httpx.Client(base_url=url, headers={"X-API-Key": full["FLYWHEEL_API_KEY"]}, timeout=60) as http:
            yield http
    finally:
        stop_server(proc)
