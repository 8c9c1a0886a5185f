"""Scoring one use case: the champion-following model holder, the column-wise scores of a
request (the task's outputs) and the predictor that joins online features, the one featurizer
and the model.

Nothing here names a column: the request columns, entity keys, features and outputs all come
from the use case's spec (:mod:`flywheel.serving.schemas`, :mod:`flywheel.features.featurizer`).
The BentoML service in ``serving/`` is a thin shell around :class:`flywheel.serving.server.ModelServer`;
the benchmark's FastAPI floor uses the same pieces, so the two differ only in framework.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from flywheel.core import pii
from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec
from flywheel.serving import challenger
from flywheel.serving.metrics import ServingMetrics
from flywheel.serving.online import OnlineFeatures
from flywheel.serving.prediction_log import LogSchema, PredictionLogger, log_schema
from flywheel.serving.schemas import RouteSchemas, route_schemas
from flywheel.serving.watch import AliasWatch
from flywheel.training import registry, signing

log = logging.getLogger(__name__)


# ---- model holder -------------------------------------------------------------------------------

class ModelHolder(AliasWatch):
    """Holds a use case's champion; a background thread swaps it when the alias moves.

    Requests only read ``current`` (one reference): a swap never blocks or fails a request
    in flight, which keeps the model object it started with. If the registry is
    unreachable the current model keeps serving and the failure is counted.
    Raises :class:`registry.RegistryError` when the use case has no champion.
    """

    def __init__(self, use_case: str, model_name: str, settings: Settings, *,
                 metrics: ServingMetrics | None = None, watch: bool = True) -> None:
        self.use_case = use_case
        self._name, self._settings, self._metrics = model_name, settings, metrics
        self._lock = threading.Lock()
        self._refused: str | None = None
        self.current = registry.load_alias(model_name, settings=settings, compiled=True,
                                           verify=settings.serving_verify_versions)
        _warm(self.current)  # as every later swap is: the first request pays no lazy start-up
        self._publish(None, self.current)
        self._start_watch("champion-watch", watch=watch)

    def get(self) -> registry.LoadedModel:
        return self.current

    def refresh(self) -> bool:
        """Load the champion if the alias moved; returns True when the model changed.

        A version that fails verification (:mod:`flywheel.training.signing`) is refused: logged,
        counted, not downloaded again until the alias moves on, and the current model serves on."""
        with self._lock:
            mv = registry.alias_version(self._name, registry.CHAMPION, settings=self._settings)
            if mv is None or str(mv.version) in (self.current.version, self._refused):
                return False
            try:
                loaded = registry.load_version(self._name, str(mv.version), settings=self._settings,
                                               compiled=True, verify=self._settings.serving_verify_versions)
            except signing.VersionVerificationError as exc:
                self._refused = str(mv.version)
                if self._metrics:
                    self._metrics.refresh_errors.labels(self.use_case).inc()
                log.error("champion of %s moved to v%s, which is refused: %s; serving v%s", self._name,
                          mv.version, exc, self.current.version)
                return False
            _warm(loaded)
            old, self.current = self.current, loaded  # one reference swap
            self._publish(old, loaded)
            log.info("champion of %s moved from v%s to v%s", self._name, old.version, loaded.version)
            return True

    def _refresh_failed(self) -> None:
        log.warning("champion check for %s failed; serving v%s", self._name, self.current.version, exc_info=True)

    def _publish(self, old: registry.LoadedModel | None, new: registry.LoadedModel) -> None:
        if self._metrics is None:
            return
        info = self._metrics.model_info
        if old is not None:
            info.labels(self.use_case, old.name, old.version, model_device(old)).set(0)
            self._metrics.swaps.labels(self.use_case).inc()
        info.labels(self.use_case, new.name, new.version, model_device(new)).set(1)


def model_device(model: registry.LoadedModel) -> str:
    """Where the model computes ("cpu", "cuda:0"); models without a device run on the CPU."""
    device = getattr(model, "device", None) or getattr(model.model, "device", None)
    if device is None and hasattr(model.model, "parameters"):  # a torch.nn.Module: where its weights are
        first = next(iter(model.model.parameters()), None)
        device = getattr(first, "device", None)
    return str(device) if device is not None else "cpu"


def predict_array(model: registry.LoadedModel, matrix: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """The task's raw scores of a float matrix whose columns are ``names``: binary positive-class
    probabilities, multiclass ``n x k`` class probabilities, regression values."""
    return np.asarray(model.scores_array(matrix, names), dtype="float64")


def _warm(model: registry.LoadedModel) -> None:
    """Score all-zero rows on each runtime the model serves with, so the first real request
    pays no lazy initialisation."""
    predict_array(model, np.zeros((1, len(model.features))), model.features)
    if model.compiled is not None:
        rows = min(model.compiled_max_rows + 1, 10_000)
        predict_array(model, np.zeros((rows, len(model.features))), model.features)
    if model.runtime_note:
        log.info("%s v%s serves on %s: %s", model.name, model.version, model.family, model.runtime_note)


# ---- scores of one request ---------------------------------------------------------------------

def task_outputs(task: str, model: registry.LoadedModel, raw: np.ndarray) -> dict[str, np.ndarray]:
    """The task's output columns (what the response and the prediction log carry) of raw scores:
    the registry's own decision (:func:`registry.outputs`), multiclass labels as text."""
    out = registry.outputs(task, raw, threshold=model.threshold, classes=model.classes)
    if task == "multiclass":
        out["predicted_class"] = np.array([str(c) for c in out.pop("class")], dtype=object)
        out.pop("probabilities")  # the raw scores: kept once, in Scores.raw
    return out


@dataclass
class Scores:
    """The predictions of one request, column-wise: nothing is built per row on the request
    path except the response itself (:meth:`to_json`)."""

    task: str
    columns: dict[str, list[Any]]  # the validated request (and caller id) columns
    id_columns: tuple[str, ...]  # echoed back
    feature_names: tuple[str, ...]
    matrix: np.ndarray  # rows x feature_names
    raw: np.ndarray  # the model's scores
    outputs: dict[str, np.ndarray]
    misses: dict[str, np.ndarray]  # entity -> which rows had no online features
    unknown: dict[str, np.ndarray]  # column -> which rows had a value outside the allowed set
    request_ids: list[str]
    model: registry.LoadedModel
    runtime: str = ""  # which runtime scored (onnxruntime, or the family's native one)
    # column -> which rows had a value outside the contract's min/max (only flagged columns)
    out_of_range: dict[str, np.ndarray] = field(default_factory=dict)
    # The caller's ids as sent, where ``columns`` holds their PII hashes (None: ``columns``).
    echo: dict[str, list[Any]] | None = None
    # The rollout (flywheel.serving.challenger): the prediction log's rollout columns, and on a
    # canary, which rows the challenger answered (``outputs``/``raw`` hold its answers there).
    rollout: dict[str, np.ndarray] | None = None
    answered: np.ndarray | None = None
    challenger: registry.LoadedModel | None = None

    def __len__(self) -> int:
        return len(self.raw)

    @cached_property
    def any_miss(self) -> np.ndarray:
        flags = list(self.misses.values())
        return np.logical_or.reduce(flags) if flags else np.zeros(len(self), dtype=bool)

    @cached_property
    def any_unknown(self) -> np.ndarray:
        flags = list(self.unknown.values())
        return np.logical_or.reduce(flags) if flags else np.zeros(len(self), dtype=bool)

    @cached_property
    def any_out_of_range(self) -> np.ndarray:
        flags = list(self.out_of_range.values())
        return np.logical_or.reduce(flags) if flags else np.zeros(len(self), dtype=bool)

    def unknown_columns(self) -> list[list[str]]:
        """Per row, the columns whose value was outside the contract's allowed set."""
        return _flagged(self.unknown, len(self))

    def unknown_entities(self) -> list[list[str]]:
        return _flagged(self.misses, len(self))

    def records(self) -> list[dict[str, Any]]:
        """Response fields per row, as plain dicts in request order."""
        m = self.model
        sent = self.echo if self.echo is not None else self.columns
        ids = [dict(zip(self.id_columns, row, strict=True)) for row in
               zip(*(sent[c] for c in self.id_columns), strict=True)] if self.id_columns \
            else [{} for _ in range(len(self))]
        outputs = self._task_records()
        unknown, entities = self.unknown_columns(), self.unknown_entities()
        outside = _flagged(self.out_of_range, len(self))
        versions = self._answered_by(m.version, self.challenger.version if self.challenger else "")
        return [{**key, "request_id": rid, **out, "model_name": m.name, "model_version": v,
                 "unknown": u, "out_of_range": r, "unknown_entities": e, "defaults_used": bool(e)}
                for key, rid, out, v, u, r, e in zip(ids, self.request_ids, outputs, versions, unknown, outside,
                                                     entities, strict=True)]

    def _answered_by(self, champion: Any, challenger: Any) -> list[Any]:
        """Per row, the champion's or (canary rows it answered) the challenger's ``champion``/``challenger``."""
        if self.answered is None:
            return [champion] * len(self)
        return [challenger if a else champion for a in self.answered.tolist()]

    def _task_records(self) -> list[dict[str, Any]]:
        o = self.outputs
        if self.task == "binary":
            ts = self._answered_by(self.model.threshold, self.challenger.threshold if self.challenger else 0.0)
            return [{"probability": p, "decision": d, "threshold": t}
                    for p, d, t in zip(o["probability"].tolist(), o["decision"].tolist(), ts, strict=True)]
        if self.task == "multiclass":
            names = [str(c) for c in self.model.classes]
            return [{"probabilities": dict(zip(names, row, strict=True)), "class": c}
                    for row, c in zip(self.raw.tolist(), o["predicted_class"].tolist(), strict=True)]
        return [{"value": v} for v in o["value"].tolist()]

    def to_json(self, *, single: bool = False) -> bytes:
        """The response body: one prediction (``single``) or a list, serialized in Rust."""
        from pydantic_core import to_json

        records = self.records()
        return to_json(records[0] if single else records)

    def to_json_rows(self) -> list[bytes]:
        """One single-prediction response body per row (a micro-batch's answers)."""
        from pydantic_core import to_json

        return [to_json(record) for record in self.records()]


def _flagged(flags: dict[str, np.ndarray], n: int) -> list[list[str]]:
    """Per row, the names whose flag is set (in ``flags`` order)."""
    out: list[list[str]] = [[] for _ in range(n)]
    for name, mask in flags.items():
        if mask.any():
            for row in np.flatnonzero(mask).tolist():
                out[row].append(name)
    return out


def outside_ranges(columns: dict[str, list[Any]],
                   ranges: dict[str, tuple[float | None, float | None]]) -> dict[str, np.ndarray]:
    """Per column of ``ranges`` holding a value outside its (min, max), which rows do (None and
    missing values are inside). Columns with no such value are left out: nothing is built for
    the common request."""
    out: dict[str, np.ndarray] = {}
    for column, (low, high) in ranges.items():
        values = columns[column]
        flags = [v is not None and ((low is not None and v < low) or (high is not None and v > high))
                 for v in values]
        if any(flags):
            out[column] = np.array(flags, dtype=bool)
    return out


def request_ids(n: int) -> list[str]:
    """``n`` random 128-bit ids as 32 hex characters (one ``os.urandom`` call for all)."""
    import os

    raw = os.urandom(16 * n).hex()
    return [raw[i:i + 32] for i in range(0, 32 * n, 32)]


# ---- predictor ----------------------------------------------------------------------------------

class Predictor:
    """Scores one use case's requests with its champion and its entities' online features.

    Raises :class:`registry.RegistryError` when the use case has no champion, and what Feast
    raises when its feature service is not applied.
    """

    def __init__(self, spec: PipelineSpec, settings: Settings, *, watch: bool = True,
                 log_predictions: bool = True, store: Any = None) -> None:
        from flywheel.features.featurizer import featurizer_for
        from flywheel.features.store import feature_store

        self.spec, self.settings = spec, settings
        self.use_case = spec.name
        limit_threads(settings.serving_threads)  # before the model loads
        self.metrics = ServingMetrics.get()
        self.featurizer = featurizer_for(spec)
        self.names = tuple(self.featurizer.names)
        self.schemas: RouteSchemas = route_schemas(spec, list(self.featurizer.request_columns))
        self.features = OnlineFeatures(store if store is not None else feature_store(settings), spec,
                                       timeout_s=settings.serving_online_timeout_s)
        self.join_keys = self.features.join_keys
        self.models = ModelHolder(spec.name, spec.model_name, settings, metrics=self.metrics, watch=watch)
        self.log_schema: LogSchema = log_schema(spec)
        self.logger = PredictionLogger(self.log_schema, settings, metrics=self.metrics) if log_predictions else None
        self.challengers: challenger.ChallengerHolder | None = None
        self.shadow: challenger.ShadowScorer | None = None
        if spec.rollout.mode != "champion_only":
            self.challengers = challenger.ChallengerHolder(spec.name, spec.model_name, settings, metrics=self.metrics,
                                                           watch=watch, warm=_warm)
            self.shadow = challenger.ShadowScorer(spec, self._log, task_outputs)
        # Canary rows are sticky per entity: the spec's first entity's first key (the request id
        # without an entity).
        first = next(iter(spec.features.entities.values()), None)
        self._canary_key = first.keys[0] if first is not None else None
        self._fields = tuple(dict.fromkeys((*self.schemas.id_columns, *self.schemas.columns)))
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._numeric = frozenset(a for a, kind in self.featurizer.aggregates.items() if kind in ("int", "float"))
        # PII columns of the request (hashed join and row keys): hashed before the online lookup
        # and the prediction log, echoed to the caller as sent (flywheel.core.pii).
        self._pii = tuple(c for c in self._fields if c in pii.policies(spec.dataset))
        self._pii_key = pii.key_bytes(settings, spec.dataset) if self._pii else None

    @property
    def ready(self) -> bool:
        return self.models.current is not None

    def score(self, rows: Sequence[Any], *, endpoint: str = "predict", timed: bool = True) -> Scores:
        """Score validated requests (instances of ``schemas.request``) column-wise.

        Unknown entities are scored with the training defaults and flagged, values outside a
        contract's allowed set with the reserved code and flagged, numbers outside its min/max
        (under ``serving.out_of_contract: flag``) as given and flagged; none is an error.
        ``timed=False`` leaves the request-latency metric to the caller (a micro-batch observes
        each request's own latency, queueing included). Raises whatever the online store raises
        when it is unreachable.
        """
        started = time.perf_counter()
        model = self.models.get()  # this request keeps this model even if the champion moves
        columns = {name: [getattr(r, name) for r in rows] for name in self._fields}
        echo = None
        if self._pii:
            assert self._pii_key is not None
            echo = {c: columns[c] for c in self.schemas.id_columns}
            columns.update({c: pii.hash_values(columns[c], self._pii_key) for c in self._pii})
        online, misses = self.features.fetch_keys({key: columns[key] for key in self.join_keys})
        features = self.featurizer.transform(columns, self._arrays(online))
        raw = predict_array(model, features.matrix, self.names)
        scores = Scores(self.spec.task, columns, self.schemas.id_columns, self.names, features.matrix, raw,
                        task_outputs(self.spec.task, model, raw), misses, dict(features.unknown),
                        request_ids(len(rows)), model, model.runtime_for(len(rows)),
                        outside_ranges(columns, self.schemas.ranges), echo)
        live = self.challengers.current if self.challengers is not None else None
        if live is None or live.stage == "canary" or self.shadow is None or not self.shadow.submit(scores, live):
            if live is not None and live.stage == "canary":
                self._canary(scores, live)
            self._log(scores)
        self._observe(endpoint, scores, time.perf_counter() - started if timed else None)
        return scores

    def _log(self, scores: Scores) -> None:
        if self.logger is not None:
            self.logger.log(scores)

    def _canary(self, scores: Scores, live: challenger.Live) -> None:
        """Answer the canary's share of entities with the challenger (the champion answers a row
        the challenger failed to score)."""
        compared = challenger.compare(self.spec, live, scores.matrix, self.names, champion_raw=scores.raw,
                                      champion_outputs=scores.outputs, outputs_of=task_outputs)
        scores.rollout = compared.columns
        if compared.raw is None or compared.outputs is None:
            return
        keys = scores.columns[self._canary_key] if self._canary_key else scores.request_ids
        mask = challenger.canary_rows(keys, version=live.model.version, share=self.spec.rollout.canary_share)
        if not mask.any():
            return
        scores.answered, scores.challenger = mask, live.model
        scores.raw = challenger.merged(mask, scores.raw, compared.raw)
        scores.outputs = {k: challenger.merged(mask, v, compared.outputs[k]) for k, v in scores.outputs.items()}
        scores.rollout["model_version"] = np.array(scores._answered_by(scores.model.version, live.model.version),
                                                   dtype=object)

    def _arrays(self, online: dict[str, Any]) -> dict[str, Any]:
        """Numeric aggregates as float64 arrays (NaN = missing), what the featurizer computes on
        without a pandas conversion per column; others stay lists."""
        for name, values in online.items():
            if isinstance(values, list) and name in self._numeric:
                online[name] = np.array([np.nan if v is None else v for v in values], dtype="float64")
        return online

    def observe_latency(self, endpoint: str, seconds: float) -> None:
        self._series(self.metrics.latency, endpoint).observe(seconds)

    def _observe(self, endpoint: str, scores: Scores, seconds: float | None) -> None:
        series = self._series
        if seconds is not None:
            series(self.metrics.latency, endpoint).observe(seconds)
        series(self.metrics.batch_rows, endpoint, scores.runtime).observe(len(scores))
        version = scores.model.version
        for outcome, count in _outcomes(scores).items():
            series(self.metrics.predictions, version, outcome).inc(count)
        for entity, flags in scores.misses.items():
            series(self.metrics.lookups, entity).inc(len(flags))
            missed = int(flags.sum())
            if missed:
                series(self.metrics.misses, entity).inc(missed)
        for counter, flagged in ((self.metrics.unknown_values, scores.unknown),
                                 (self.metrics.out_of_range_values, scores.out_of_range)):
            for column, flags in flagged.items():
                n = int(np.count_nonzero(flags))
                if n:
                    series(counter, column).inc(n)

    def _series(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(use_case, *labels)``, remembered (prometheus_client's lookup takes a lock
        and builds a tuple per call: ~10 µs a request for four series)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.use_case, *labels)
        return child

    def refresh_now(self) -> None:
        """Follow the champion and rollout aliases now (a registry event), not at the next poll;
        a failure is logged and left to the poll."""
        for holder in (self.models, self.challengers):
            try:
                if holder is not None:
                    holder.refresh()
            except Exception:  # the poll retries within champion_refresh_s
                log.warning("refresh of %s on a registry event failed", self.use_case, exc_info=True)

    def close(self) -> None:
        self.models.close()
        if self.challengers is not None:
            self.challengers.close()
        if self.shadow is not None:
            self.shadow.close()  # drains the queued shadow rows into the log before it closes
        if self.logger is not None:
            self.logger.close()


def _outcomes(scores: Scores) -> dict[str, int]:
    """Prediction counts by outcome label: the decision, the class, or ``value``."""
    if scores.task == "binary":
        positive = int(np.count_nonzero(scores.outputs["decision"]))
        return {k: v for k, v in (("positive", positive), ("negative", len(scores) - positive)) if v}
    if scores.task == "multiclass":
        classes, counts = np.unique(scores.outputs["predicted_class"].astype(str), return_counts=True)
        return dict(zip(classes.tolist(), counts.tolist(), strict=True))
    return {"value": len(scores)}


# ---- process tuning -----------------------------------------------------------------------------

def limit_threads(threads: int) -> None:
    """Cap the native thread pools (OpenMP, BLAS) at ``threads`` per worker process.

    One-row scoring gains nothing from parallelism, and an OpenMP pool that spins for more
    cores than the worker owns costs milliseconds per call on a busy machine (XGBoost's
    one-row predict: 48 ms → 1.5 ms in benchmarks/serving.py). Call it before the model loads.
    """
    import os

    from threadpoolctl import threadpool_limits

    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    threadpool_limits(limits=threads)


def tune_gc() -> None:
    """Keep collector and background threads out of request latency.

    Everything allocated so far (libraries, the models) is frozen out of the collector's view,
    so a young collection only walks request garbage: the default 700-allocation threshold
    keeps each one in the tens of microseconds. (A 50 000 threshold, tried earlier, made each
    collection ~1-2 ms: the p99 at concurrency 1 once a request took < 1 ms.) Older
    generations are collected rarely. The GIL is handed over every 1 ms instead of 5 ms, so a
    background thread (prediction-log flush, champion check) delays a request by ~1 ms per turn
    at most.
    """
    import sys

    gc.collect()
    gc.freeze()
    gc.set_threshold(700, 50, 100)
    sys.setswitchinterval(0.001)
