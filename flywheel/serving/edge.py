"""Limits at the edge of the model server, checked before any parsing: the API key it must have
to start, the size of a request body and the time the body may take to arrive.

- **API key**: no key configured (``FLYWHEEL_API_KEY`` unset or empty, none in
  ``<home>/secrets.json``) stops the server at start (:func:`check_api_key`), unless serving
  without authentication is asked for explicitly (``--insecure``, ``serving_insecure``).
- **Body size**: a declared ``Content-Length`` over ``serving_max_body_bytes`` is a 413 before a
  byte is read (:func:`check_declared_length`); a body without one (chunked), or one longer than
  declared, is counted while it streams and refused at the limit (:meth:`BodyReader.read`).
- **Body time**: a body still arriving ``serving_body_timeout_s`` after the request reached the
  server is a 408. BentoML's ``traffic.timeout`` (``serving_request_timeout_s``) covers the whole
  request: it cancels one that has not started its answer in time with a 504 that blames the
  server; the body deadline ends first, so a slow client gets the status that names its fault.

The batch limit (``MAX_BATCH`` rows) is the request schema's (:mod:`flywheel.serving.schemas`):
a 422, like any other invalid body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from flywheel.core.config import Settings
from flywheel.serving.server import ServingError

log = logging.getLogger(__name__)
Receive = Callable[[], Awaitable[dict[str, Any]]]
TRUE = frozenset({"1", "true", "yes", "on"})
NO_KEY = ("no API key configured: set FLYWHEEL_API_KEY (or api_key in <FLYWHEEL_HOME>/secrets.json, which "
          "`flywheel up` generates), or start with --insecure (FLYWHEEL_SERVING_INSECURE=true, "
          "`bentoml serve ... --arg insecure=true`) to serve without authentication")
INSECURE = ("SERVING WITHOUT AUTHENTICATION (--insecure): no API key is configured and every prediction "
            "route answers anyone who can reach this port; set FLYWHEEL_API_KEY to close it")


class EdgeError(Exception):
    """A request refused at the edge: its HTTP ``status``, a one-line message and the facts a
    client needs (the limit), which :meth:`payload` turns into the JSON body."""

    status = 400

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.facts = facts

    def payload(self) -> bytes:
        from pydantic_core import to_json

        return to_json({"error": str(self), **self.facts})


class BodyTooLarge(EdgeError):
    status = 413


class BodyTimeout(EdgeError):
    status = 408


class ClientDisconnected(Exception):
    """The client went away before its body arrived: nothing to answer."""


def is_true(value: Any) -> bool:
    """A flag given on a command line or in the environment (``true``, ``1``, ``yes``, ``on``)."""
    return str(value).strip().lower() in TRUE


def configured_api_key(settings: Settings) -> bytes | None:
    """The key prediction requests must carry in ``X-API-Key``; None when none is configured
    (an empty value is none)."""
    key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    return key.encode() if key else None


def check_api_key(settings: Settings, *, insecure: bool = False) -> None:
    """Refuse to serve open unless asked to.

    ``insecure`` (or ``settings.serving_insecure``) allows serving without a key, with a loud
    warning; a configured key is always required, ``insecure`` or not. Raises
    :class:`ServingError` (one line saying how to set a key) when there is no key and serving
    insecure was not asked for.
    """
    insecure = insecure or settings.serving_insecure
    if configured_api_key(settings) is not None:
        if insecure:
            log.warning("--insecure ignored: an API key is configured and every prediction request needs it")
        return
    if not insecure:
        raise ServingError(NO_KEY)
    log.warning(INSECURE)


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The declared ``Content-Length`` of ASGI request headers (None when absent: chunked)."""
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def check_declared_length(length: int | None, limit: int) -> None:
    """Raises :class:`BodyTooLarge` when the declared length is over ``limit`` bytes: nothing has
    been read yet (a client that sent ``Expect: 100-continue`` never sends the body)."""
    if length is not None and length > limit:
        raise _too_large(limit, f"Content-Length {length}")


def _too_large(limit: int, what: str) -> BodyTooLarge:
    return BodyTooLarge(f"request body too large ({what}): at most {limit} bytes (serving_max_body_bytes)",
                        limit_bytes=limit)


class BodyReader:
    """Reads request bodies of one event loop, at most ``limit`` bytes each and within
    ``timeout_s`` of starting.

    A timer per request costs ~6 µs (asyncio's timer heap); instead, reads in flight are kept
    with their deadlines and one sweeper task on the loop, waking every tenth of the timeout,
    cancels those past it: a 408 comes between ``timeout_s`` and 1.1 × ``timeout_s``.
    """

    def __init__(self, *, limit: int, timeout_s: float) -> None:
        self.limit, self.timeout_s = limit, timeout_s
        self._reads: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def read(self, receive: Receive) -> bytes:
        """The whole body. Raises :class:`BodyTooLarge` once more than ``limit`` bytes arrived (the
        rest is never read), :class:`BodyTimeout` past the deadline and
        :class:`ClientDisconnected` when the client left."""
        task = asyncio.current_task()
        if task is None:  # not in a task (never under an ASGI server): read unbounded in time
            return await self._read(receive)
        self._reads[task] = time.monotonic() + self.timeout_s
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="flywheel-body-deadlines")
        try:
            return await self._read(receive)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            if task.uncancel() > 0:  # cancelled for another reason too: let that one win
                raise
            raise BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s "
                              "(serving_body_timeout_s)", timeout_s=self.timeout_s) from None
        finally:
            self._reads.pop(task, None)
            self._expired.discard(task)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise _too_large(self.limit, f"more than {self.limit} bytes arrived")
            chunks.append(chunk)
            if not message.get("more_body"):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.timeout_s / 10)
            now = time.monotonic()
            for task, deadline in list(self._reads.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
