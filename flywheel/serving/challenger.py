"""The version under rollout, inside the model server: followed, compared, and (canary) served.

:class:`ChallengerHolder` follows the ``rollout`` alias and its stage
(:mod:`flywheel.training.stages`) as :class:`~flywheel.serving.predictor.ModelHolder` follows the
champion: a background check every ``champion_refresh_s`` (or at once on a registry event,
:mod:`flywheel.serving.registry_events`), a version loaded only once it verifies
(:mod:`flywheel.training.signing`), a swap that is one reference.

- ``shadow``: :class:`ShadowScorer` scores each request's feature matrix with the challenger on
  its own thread, after the response is built, and logs the row with both scores; nothing of the
  challenger reaches the caller. A full queue (:data:`SHADOW_QUEUE` requests) logs the row
  without the challenger's score rather than wait.
- ``canary``: the entities whose hash (salted with the version) falls under ``canary_share`` are
  answered by the challenger, the others by the champion; both score every row, so the log
  compares them on all traffic. A challenger that raises is answered for by the champion: the
  error is logged (``challenger_error``), the request never fails.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec
from flywheel.serving.metrics import ServingMetrics
from flywheel.serving.watch import AliasWatch
from flywheel.training import registry, signing, stages

log = logging.getLogger(__name__)
SHADOW_QUEUE = 1024  # requests waiting for their shadow score; past it, logged without one


@dataclass(frozen=True)
class Live:
    """The challenger as served now: its model and stage."""

    model: registry.LoadedModel
    stage: stages.Stage


class ChallengerHolder(AliasWatch):
    """Follows the ``rollout`` alias of one model; ``current`` is a :class:`Live` or None."""

    def __init__(self, use_case: str, model_name: str, settings: Settings, *,
                 metrics: ServingMetrics | None = None, watch: bool = True, warm: Any = None) -> None:
        self.use_case, self._name, self._settings, self._metrics = use_case, model_name, settings, metrics
        self._warm = warm
        self._lock = threading.Lock()
        self._refused: str | None = None
        self.current: Live | None = None
        try:
            self.refresh()
        except Exception:  # a registry hiccup at start: the champion serves, the watch retries
            log.warning("rollout check for %s failed at start", model_name, exc_info=True)
        self._start_watch("rollout-watch", watch=watch)

    def refresh(self) -> bool:
        """Follow the alias and stage; returns True when what is served changed."""
        with self._lock:
            mv = registry.alias_version(self._name, stages.ROLLOUT, settings=self._settings)
            stage = None if mv is None else mv.tags.get(stages.STAGE_TAG)
            live = self.current
            if mv is None or stage not in stages.STAGES:
                self.current = None
                if live is not None:
                    log.info("challenger v%s of %s is out of traffic", live.model.version, self._name)
                return live is not None
            version = str(mv.version)
            if live is not None and live.model.version == version:
                if live.stage != stage:
                    self.current = Live(live.model, stage)
                    log.info("challenger v%s of %s moved to %s", version, self._name, stage)
                return live.stage != stage
            if version == self._refused:
                return False
            try:
                model = registry.load_version(self._name, version, settings=self._settings, compiled=True,
                                              verify=self._settings.serving_verify_versions)
            except signing.VersionVerificationError as exc:
                self._refused = version
                if self._metrics:
                    self._metrics.refresh_errors.labels(self.use_case).inc()
                log.error("rollout of %s moved to v%s, which is refused: %s", self._name, version, exc)
                return False
            if self._warm is not None:
                self._warm(model)
            self.current = Live(model, stage)
            log.info("challenger v%s of %s serves at the %s stage", version, self._name, stage)
            return True

    def _refresh_failed(self) -> None:
        log.warning("rollout check for %s failed", self._name, exc_info=True)


# ---- comparing the challenger with the champion ---------------------------------------------------

def row_score(task: str, raw: np.ndarray) -> np.ndarray:
    """One number per row: the positive-class probability, the predicted class's, or the value."""
    if task == "multiclass":
        return raw.max(axis=1) if len(raw) else np.empty(0)
    return raw


def agreement(task: str, champion: dict[str, np.ndarray], challenger: dict[str, np.ndarray], *,
              tolerance: float) -> np.ndarray:
    """Per row, whether the two answers agree: the same decision (binary), the same class
    (multiclass), values within ``tolerance`` of each other relative to the larger (regression)."""
    if task == "binary":
        return np.asarray(champion["decision"] == challenger["decision"], dtype=bool)
    if task == "multiclass":
        return np.asarray(champion["predicted_class"] == challenger["predicted_class"], dtype=bool)
    a, b = champion["value"], challenger["value"]
    return np.abs(a - b) <= tolerance * np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)


@dataclass
class Comparison:
    """The challenger's scores of one request beside the champion's."""

    raw: np.ndarray | None  # None: the challenger raised
    outputs: dict[str, np.ndarray] | None
    columns: dict[str, np.ndarray]  # the prediction log's rollout columns (logschema.ROLLOUT_COLUMNS)


def compare(spec: PipelineSpec, live: Live, matrix: np.ndarray, names: Sequence[str], *,
            champion_raw: np.ndarray, champion_outputs: dict[str, np.ndarray], outputs_of: Any) -> Comparison:
    """Score ``matrix`` with the challenger and compare; a challenger that raises is recorded
    (``challenger_error``), never raised."""
    n = len(matrix)
    model = live.model
    started = time.perf_counter()
    columns: dict[str, np.ndarray] = {
        "rollout_stage": np.full(n, live.stage, dtype=object),
        "challenger_version": np.full(n, model.version, dtype=object),
        "champion_score": np.asarray(row_score(spec.task, champion_raw), dtype="float64")}
    try:
        raw = np.asarray(model.scores_array(matrix, names), dtype="float64")
        outputs = outputs_of(spec.task, model, raw)
    except Exception:  # a bad challenger must not fail the request: the champion answers
        log.warning("challenger v%s of %s failed to score %d rows", model.version, spec.name, n, exc_info=True)
        columns |= {"challenger_score": np.full(n, np.nan), "challenger_agrees": np.zeros(n, dtype=bool),
                    "challenger_error": np.ones(n, dtype=bool),
                    "challenger_ms": np.full(n, (time.perf_counter() - started) * 1000)}
        return Comparison(None, None, columns)
    columns |= {"challenger_score": np.asarray(row_score(spec.task, raw), dtype="float64"),
                "challenger_agrees": agreement(spec.task, champion_outputs, outputs,
                                               tolerance=spec.rollout.agreement_tolerance),
                "challenger_error": np.zeros(n, dtype=bool),
                "challenger_ms": np.full(n, (time.perf_counter() - started) * 1000)}
    return Comparison(raw, outputs, columns)


def canary_rows(keys: Sequence[Any], *, version: str, share: float) -> np.ndarray:
    """Which rows the challenger answers: those whose key hashes (salted with ``version``, so
    each challenger gets its own entities) under ``share``. The same entity always lands on the
    same side for one version: sticky."""
    limit = int(share * 2**64)
    return np.fromiter((int.from_bytes(hashlib.blake2b(f"{version}:{k}".encode(), digest_size=8).digest(), "big")
                        < limit for k in keys), dtype=bool, count=len(keys))


def merged(mask: np.ndarray, champion: np.ndarray, challenger: np.ndarray) -> np.ndarray:
    """Row-wise: the challenger's where ``mask``, else the champion's (1-D or 2-D)."""
    where = mask[:, None] if champion.ndim == 2 else mask
    return np.where(where, challenger, champion)


# ---- shadow scoring ---------------------------------------------------------------------------------

class ShadowScorer:
    """Scores requests with the shadow challenger on its own thread, then logs them
    (``log(scores)``); ``close`` drains what is queued."""

    def __init__(self, spec: PipelineSpec, log_scores: Any, outputs_of: Any) -> None:
        self._spec, self._log, self._outputs_of = spec, log_scores, outputs_of
        self._queue: queue.Queue[tuple[Any, Live] | None] = queue.Queue(maxsize=SHADOW_QUEUE)
        self.skipped = 0  # requests logged without a shadow score (queue full)
        self._thread = threading.Thread(target=self._run, name=f"shadow-{spec.name}", daemon=True)
        self._thread.start()

    def submit(self, scores: Any, live: Live) -> bool:
        """Queue the request for its shadow score; False when the queue is full (the caller logs
        it at once)."""
        try:
            self._queue.put_nowait((scores, live))
        except queue.Full:
            self.skipped += 1
            return False
        return True

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            scores, live = item
            try:
                scores.rollout = compare(self._spec, live, scores.matrix, scores.feature_names,
                                         champion_raw=scores.raw, champion_outputs=scores.outputs,
                                         outputs_of=self._outputs_of).columns
                self._log(scores)
            except Exception:  # the request was answered; its row is what the prediction log refused
                log.exception("shadow row of %s not logged", self._spec.name)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)
