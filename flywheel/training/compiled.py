"""Compiled inference: an ONNX copy of a registered model, checked against the model itself.

At packaging (:func:`package`, in the training run) the family exports its model to ONNX
(:meth:`Family.export_onnx`: onnxmltools for XGBoost, ``torch.onnx`` for the MLP); ONNX Runtime
scores the holdout and the copy is kept only if it agrees with the native model (max abs
difference <= ``TOLERANCE``, identical decisions). Then the batch size up to which ONNX Runtime
is faster than the native runtime is *measured* on the same holdout rows. The result is
recorded on the MLflow version as ``runtime.onnx.*`` tags (:data:`TAGS`) and the ``.onnx`` file
is logged with the run; a family that cannot export, or a copy that fails parity, is recorded
with the reason and the version serves on its native runtime.

At serving (:func:`load`) the file is downloaded, its digest checked against the tag, and an
ONNX Runtime session built with one thread (the serving worker's budget); the server then picks
the runtime per batch (:meth:`flywheel.training.registry.LoadedModel.runtime_for`).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TOLERANCE = 1e-5
ARTIFACT_DIR = "compiled"
ARTIFACT = f"{ARTIFACT_DIR}/model.onnx"
ONNX, NATIVE = "onnxruntime", "native"
# Batch sizes timed for the crossover; above the largest ONNX-faster one the native runtime serves.
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PARITY_ROWS = 20_000  # holdout rows compared (all of them when fewer)


class TAGS:
    """The ``runtime.onnx.*`` tags of a model version (their one spelling)."""

    status = "runtime.onnx"  # "ok" | "unavailable"
    reason = "runtime.onnx.reason"  # why not, when unavailable
    artifact = "runtime.onnx.artifact"  # runs:/<run>/compiled/model.onnx
    sha256 = "runtime.onnx.sha256"
    max_abs_diff = "runtime.onnx.max_abs_diff"
    decisions_differ = "runtime.onnx.decisions_differ"
    rows = "runtime.onnx.parity_rows"
    max_rows = "runtime.onnx.max_rows"  # ONNX Runtime serves batches of at most this many rows
    timings = "runtime.onnx.timings_us"  # {rows: [onnx µs, native µs]} behind max_rows


class ExportUnsupported(RuntimeError):
    """The family (or this model of it) has no ONNX export; the message says why."""


class CompiledModelError(RuntimeError):
    """A version's recorded ONNX copy cannot be used (missing artifact, digest mismatch)."""


@dataclass(frozen=True)
class Parity:
    rows: int
    max_abs_diff: float
    decisions_differ: int

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= TOLERANCE and self.decisions_differ == 0)


class OnnxScorer:
    """An ONNX Runtime session scoring float matrices in the model's feature order, returning the
    task's raw output like the family does (binary (n,), multiclass (n, k), regression (n,))."""

    def __init__(self, onnx_bytes: bytes, task: str, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.task = task
        self.input = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        # A tree classifier answers (label, probabilities): only the probabilities are computed on.
        self.output = "probabilities" if "probabilities" in names else names[0]

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output], {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]
        out = np.asarray(out, dtype="float64")
        if self.task == "binary" and out.ndim == 2:
            return out[:, -1]
        if self.task == "regression":
            return out.reshape(-1)
        return out


def parity(task: str, native: np.ndarray, onnx: np.ndarray, *, threshold: float) -> Parity:
    """Max abs difference of two score arrays and how many decisions differ (binary: at
    ``threshold``; multiclass: the argmax; regression has no decision)."""
    native, onnx = np.asarray(native, dtype="float64"), np.asarray(onnx, dtype="float64")
    if native.shape != onnx.shape:
        return Parity(len(native), float("inf"), len(native))
    diff = float(np.max(np.abs(native - onnx))) if native.size else 0.0
    if task == "binary":
        differ = int(np.count_nonzero((native >= threshold) != (onnx >= threshold)))
    elif task == "multiclass":
        differ = int(np.count_nonzero(native.argmax(axis=1) != onnx.argmax(axis=1)))
    else:
        differ = 0
    return Parity(len(native), diff if np.isfinite(diff) else float("inf"), differ)


def crossover(native: Any, onnx: Any, x: np.ndarray, *, rounds: int = 15) -> tuple[int, dict[str, list[float]]]:
    """The largest batch size up to which ``onnx(x)`` is faster than ``native(x)`` at every size
    (median of ``rounds`` alternating calls), and the timings (µs) behind it; 0 when ONNX is
    slower even on one row."""
    rows = np.resize(x, (max(SIZES), x.shape[1])) if len(x) < max(SIZES) else x
    best, timings = 0, {}
    for size in SIZES:
        batch = np.ascontiguousarray(rows[:size])
        a, b = [], []
        for _ in range(rounds):
            s = time.perf_counter()
            onnx(batch)
            m = time.perf_counter()
            native(batch)
            a.append(m - s)
            b.append(time.perf_counter() - m)
        t_onnx, t_native = float(np.median(a)), float(np.median(b))
        timings[str(size)] = [round(t_onnx * 1e6, 1), round(t_native * 1e6, 1)]
        if t_onnx >= t_native:
            break
        best = size
    return best, timings


def package(trained: Any, holdout: Any, features: list[str], *, threshold: float, model_uri: str | None = None,
            settings: Any = None) -> dict[str, str]:
    """Export ``trained`` (a :class:`~flywheel.training.families.base.Trained`), check parity on
    ``holdout`` (its model-matrix rows), measure the runtime crossover and log the ``.onnx`` file
    to the active MLflow run. Returns the ``runtime.onnx.*`` tags for the version: ``ok`` with
    the figures, or ``unavailable`` with the reason (never raises for a model that cannot be
    compiled: the version then serves natively).

    ``model_uri`` (the registered version) and ``settings``: the native model is loaded as the
    server loads it and both runtimes are timed with the server's thread budget
    (``serving_threads``), so the crossover is the server's, not the trainer's (a booster fitted
    with two threads spins OpenMP on a busy machine: 60 ms a row, against ~0.3 ms served)."""
    import mlflow

    x = np.ascontiguousarray(holdout[features].to_numpy(dtype="float64")[:PARITY_ROWS])
    threads = settings.serving_threads if settings is not None else 1
    try:
        onnx_bytes = trained.family.export_onnx(trained.model, features, task=trained.task)
        scorer = OnnxScorer(onnx_bytes, trained.task, threads=threads)
        native_model = trained.family.load(model_uri, settings) if model_uri else trained.model
        check = parity(trained.task, trained.family.predict(native_model, holdout[features].iloc[:PARITY_ROWS],
                                                            task=trained.task), scorer.scores(x),
                       threshold=threshold)
    except ExportUnsupported as exc:
        return {TAGS.status: "unavailable", TAGS.reason: str(exc)[:500]}
    except Exception as exc:  # a converter or runtime failure on this model: serve natively, say why
        log.warning("ONNX export of %s failed; serving it natively", trained.name, exc_info=True)
        return {TAGS.status: "unavailable", TAGS.reason: f"export failed: {type(exc).__name__}: {exc}"[:500]}
    figures = {TAGS.max_abs_diff: f"{check.max_abs_diff:.3g}", TAGS.decisions_differ: str(check.decisions_differ),
               TAGS.rows: str(check.rows)}
    if not check.ok:
        return {TAGS.status: "unavailable", **figures,
                TAGS.reason: f"parity failed on {check.rows} holdout rows: max abs diff {check.max_abs_diff:.3g} "
                             f"(tolerance {TOLERANCE:g}), {check.decisions_differ} decisions differ"}
    from threadpoolctl import threadpool_limits

    native = trained.family.predict_array
    with threadpool_limits(limits=threads):
        max_rows, timings = crossover(lambda b: native(native_model, b, features, task=trained.task),
                                      scorer.scores, x)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(ARTIFACT).name
        path.write_bytes(onnx_bytes)
        mlflow.log_artifact(str(path), ARTIFACT_DIR)
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    import json

    return {TAGS.status: "ok", **figures, TAGS.artifact: f"runs:/{run_id}/{ARTIFACT}",
            TAGS.sha256: hashlib.sha256(onnx_bytes).hexdigest(), TAGS.max_rows: str(max_rows),
            TAGS.timings: json.dumps(timings)}


def load(tags: dict[str, str], task: str, *, tracking_uri: str, threads: int = 1) -> OnnxScorer | None:
    """The ONNX Runtime scorer of a version whose tags say ``runtime.onnx=ok``; None otherwise.

    Raises :class:`CompiledModelError` when the recorded artifact is missing or its digest does
    not match the tag (a tampered or half-written copy is never served)."""
    if tags.get(TAGS.status) != "ok":
        return None
    from mlflow.artifacts import download_artifacts

    uri = tags.get(TAGS.artifact, "")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri)).read_bytes()
    except Exception as exc:
        raise CompiledModelError(f"ONNX copy {uri or '(no artifact tag)'} cannot be read: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != tags.get(TAGS.sha256):
        raise CompiledModelError(f"ONNX copy {uri}: sha256 does not match the version's {TAGS.sha256} tag")
    return OnnxScorer(data, task, threads=threads)
