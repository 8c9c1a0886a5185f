"""The background thread that follows a registry alias: one loop for the champion and the rollout."""

from __future__ import annotations

import threading

from flywheel.core.config import Settings
from flywheel.serving.metrics import ServingMetrics


class AliasWatch:
    """Calls ``refresh()`` every ``champion_refresh_s`` on a daemon thread until ``close()``; a
    failed refresh keeps what is served, is counted (``refresh_errors``) and logged by
    ``_refresh_failed``. Subclasses set ``use_case``, ``_settings`` and ``_metrics`` first."""

    use_case: str
    _settings: Settings
    _metrics: ServingMetrics | None

    def refresh(self) -> bool:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _refresh_failed(self) -> None:  # pragma: no cover - every subclass has its own
        raise NotImplementedError

    def _start_watch(self, name: str, *, watch: bool) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if watch:
            self._thread = threading.Thread(target=self._watch, name=f"{name}-{self.use_case}", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self._settings.champion_refresh_s):
            try:
                self.refresh()
            except Exception:  # registry down: keep what is served, count it
                if self._metrics:
                    self._metrics.refresh_errors.labels(self.use_case).inc()
                self._refresh_failed()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
