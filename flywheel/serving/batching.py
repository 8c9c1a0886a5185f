"""Adaptive micro-batching of concurrent single requests, on the server's event loop.

Each ``/predict`` request is validated on its own (a bad body is its own 422) and then queued;
the queue is scored as one batch (one online-feature read, one featurizer pass, one model call,
one prediction-log append) and every request gets its own row back. The batch is *adaptive*: a
request arriving at an idle server is scored on the next turn of the event loop, alone (no added
wait: what waits is what arrived while the previous batch was being scored), so batches grow
with concurrency and stay at one row at concurrency 1. Bounds, by configuration: at most
``max_rows`` rows per batch, and ``max_wait_s`` (0 by default) to hold a batch open for more.

Scoring runs on the event loop itself, as the unbatched route does: on a one-CPU worker a
thread hop would cost more than it overlaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

ScoreBatch = Callable[[Sequence[Any]], Sequence[Any]]


class MicroBatcher:
    """Collects rows submitted concurrently and scores them together with ``score_batch``
    (rows -> one result per row, in order). ``await submit(row)`` returns that row's result, or
    raises what ``score_batch`` raised for its batch."""

    def __init__(self, score_batch: ScoreBatch, *, max_rows: int, max_wait_s: float = 0.0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._score, self.max_rows, self.max_wait_s = score_batch, max_rows, max_wait_s
        self._rows: list[Any] = []
        self._waiters: list[asyncio.Future[Any]] = []
        self._scheduled: asyncio.Handle | None = None
        self.batches = 0  # how many batches were scored (tests, metrics)

    async def submit(self, row: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._rows.append(row)
        self._waiters.append(future)
        if len(self._rows) >= self.max_rows:
            self._flush()
        elif self._scheduled is None:
            self._scheduled = (loop.call_later(self.max_wait_s, self._flush) if self.max_wait_s
                               else loop.call_soon(self._flush))
        return await future

    def _flush(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        while self._rows:
            rows, waiters = self._rows[:self.max_rows], self._waiters[:self.max_rows]
            del self._rows[:self.max_rows], self._waiters[:self.max_rows]
            self.batches += 1
            try:
                results = self._score(rows)
            except Exception as exc:  # every request of the batch fails as it would alone
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for waiter, result in zip(waiters, results, strict=True):
                if not waiter.done():  # a cancelled request (client gone) takes nothing
                    waiter.set_result(result)
