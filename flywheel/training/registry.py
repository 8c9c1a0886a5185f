"""MLflow registry: one registered model per use case, promotion by alias.

Aliases: ``champion`` (served) and ``challenger`` (registered, not promoted).
A model version carries what serving needs as tags: ``task``, ``classes`` (multiclass),
the decision ``threshold`` (binary) and the ordered ``features`` list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np

from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import LOWER_IS_BETTER

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    """The registry has no usable model for the request; the message says which."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    challenger: float
    baseline: float
    champion: float | None


def decide(
    *, challenger: float, baseline: float, champion: float | None, min_improvement: float = 0.0,
    regressions: list[str] | None = None, metric: str = "pr_auc", over_budget: list[str] | None = None,
) -> GateDecision:
    """The promotion gate on ``metric`` (lower is better for those in ``LOWER_IS_BETTER``):
    strictly beat the baseline, beat the champion by more than ``min_improvement``, regress
    no slice beyond its tolerance (``regressions``) and fit the latency budget (``over_budget``:
    :meth:`flywheel.training.latency.Latency.over_budget`). A NaN score never promotes."""
    lower = metric in LOWER_IS_BETTER
    sign = -1.0 if lower else 1.0

    def beats(a: float, b: float, margin: float = 0.0) -> bool:
        return bool(sign * a > sign * b + margin)

    if not beats(challenger, baseline):
        reason = f"challenger {metric} {challenger:.4f} does not beat the baseline {baseline:.4f}"
        return GateDecision(False, reason, challenger, baseline, champion)
    if champion is not None and not beats(challenger, champion, min_improvement):
        reason = (f"challenger {metric} {challenger:.4f} does not beat the champion {champion:.4f} "
                  f"by {min_improvement}")
        return GateDecision(False, reason, challenger, baseline, champion)
    if regressions:
        reason = f"challenger {metric} {challenger:.4f} regresses slices: {'; '.join(regressions[:5])}"
        return GateDecision(False, reason, challenger, baseline, champion)
    if over_budget:
        reason = f"challenger is over its latency budget: {'; '.join(over_budget)}"
        return GateDecision(False, reason, challenger, baseline, champion)
    against = "no champion yet" if champion is None else f"champion {champion:.4f}"
    reason = f"challenger {metric} {challenger:.4f} beats baseline {baseline:.4f} and {against}"
    return GateDecision(True, reason, challenger, baseline, champion)


def client(settings: Settings | None = None) -> Any:
    import mlflow
    from mlflow import MlflowClient

    settings = settings or get_settings()
    use_identity(settings)
    mlflow.set_tracking_uri(str(settings.mlflow_tracking_uri))
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def experiment_id(name: str, settings: Settings | None = None) -> str:
    """The id of MLflow experiment ``name``, created when missing.

    Unlike ``mlflow.set_experiment`` this leaves no process-wide state behind (that call sets
    ``MLFLOW_EXPERIMENT_ID`` in the environment, which then outlives a change of tracking store
    and is inherited by every child process)."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(mlflow_client.create_experiment(name))
    except MlflowException:  # created meanwhile by a concurrent run
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def child_run(name: str) -> Any:
    """``mlflow.start_run`` of a nested run in its parent's experiment.

    MLflow's fluent API puts a nested run in the *active* experiment (``set_experiment``'s), not
    its parent's; training never sets one (see :func:`experiment_id`), so without this the child
    would land in the Default experiment, where the trainer's identity may not write."""
    import mlflow

    parent = mlflow.active_run()
    return mlflow.start_run(run_name=name, nested=True,
                            experiment_id=parent.info.experiment_id if parent is not None else None)


def use_identity(settings: Settings) -> None:
    """Make ``settings``' MLflow identity the one this process's MLflow client sends.

    MLflow's client reads basic-auth credentials only from ``MLFLOW_TRACKING_USERNAME`` /
    ``MLFLOW_TRACKING_PASSWORD``; a process without them gets 401 from the tracking server.
    """
    import os

    os.environ.update(settings.mlflow_env())


def alias_version(model_name: str, alias: str, *, settings: Settings | None = None) -> Any | None:
    """The model version behind an alias, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(settings)
    try:
        return mlflow_client.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        # MLflow's auth app answers 403 for a model that does not exist yet (no permission row
        # to grant READ from): a model no search finds has no alias either.
        if exc.get_http_status_code() == 403 and not mlflow_client.search_registered_models(
                filter_string=f"name = '{model_name}'"):
            return None
        raise


def window_end(mv: Any) -> date | None:
    """The last day of a model version's training data (its ``data.window`` tag), if recorded."""
    window = mv.tags.get("data.window", "")
    return date.fromisoformat(window.split("..")[1]) if ".." in window else None


def set_alias(model_name: str, alias: str, version: str, *, settings: Settings | None = None) -> None:
    client(settings).set_registered_model_alias(model_name, alias, version)


class TaskError(TypeError):
    """A prediction was asked of a model whose task does not produce it."""


def outputs(task: str, scores: Any, *, threshold: float, classes: Sequence[Any]) -> dict[str, Any]:
    """What a model returns, from its raw scores, per task:

    - binary: ``probability`` (n,) of the positive class, ``decision`` (n,) bool
      (``probability >= threshold``);
    - multiclass: ``probabilities`` (n, k) in ``classes`` order, ``class`` (n,) the most probable
      class's label, ``probability`` (n,) its probability;
    - regression: ``value`` (n,).
    """
    scores = np.asarray(scores, dtype="float64")
    if task == "binary":
        return {"probability": scores, "decision": scores >= threshold}
    if task == "multiclass":
        best = scores.argmax(axis=1) if len(scores) else np.empty(0, dtype="int64")
        labels = np.asarray(list(classes), dtype=object)
        return {"probabilities": scores, "class": labels[best] if len(labels) else best,
                "probability": scores[np.arange(len(scores)), best]}
    return {"value": scores}


@dataclass
class LoadedModel:
    """A registered version ready to score. ``task`` (binary|multiclass|regression), ``classes``
    (multiclass: labels in probability-column order), ``threshold`` (binary; NaN otherwise).

    ``predict(matrix)`` / ``predict_array(matrix, columns)``: the task's outputs (:func:`outputs`);
    ``scores`` / ``scores_array``: the raw array (binary (n,), multiclass (n, k), regression (n,)).
    """

    name: str
    version: str
    family: str
    model: Any
    threshold: float
    features: list[str]
    scorer: Any = field(repr=False)  # the family (flywheel.training.families), resolved once at load: request path
    task: str = "binary"
    classes: list[Any] = field(default_factory=list)
    # Compiled inference (flywheel.training.compiled): an ONNX Runtime scorer that serves batches
    # of at most ``compiled_max_rows`` rows; None = the native runtime serves every batch.
    compiled: Any = field(default=None, repr=False)
    compiled_max_rows: int = 0
    runtime_note: str = ""  # why the compiled runtime is not used, when it is not

    _positions: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    def scores(self, matrix: Any) -> Any:
        """The task's raw output for a model-matrix DataFrame (extra columns are ignored)."""
        return self.scorer.predict(self.model, matrix[self.features], task=self.task)

    def scores_array(self, matrix: Any, columns: Sequence[str]) -> Any:
        """``scores`` of a float ndarray whose columns are ``columns`` (a superset of the
        model's features, any order): the request path, without a DataFrame."""
        key = tuple(columns)
        if key not in self._positions:  # once per column layout: the model's features, in its order
            index = {c: i for i, c in enumerate(key)}
            wanted = [index[f] for f in self.features]
            self._positions[key] = None if wanted == list(range(len(key))) else wanted
        positions = self._positions[key]
        x = matrix if positions is None else matrix[:, positions]
        if self.compiled is not None and len(x) <= self.compiled_max_rows:
            return self.compiled.scores(x)
        return self.scorer.predict_array(self.model, x, self.features, task=self.task)

    def runtime_for(self, rows: int) -> str:
        """Which runtime scores a batch of ``rows`` rows: ``onnxruntime`` or the family's name."""
        from flywheel.training.compiled import ONNX

        return ONNX if self.compiled is not None and rows <= self.compiled_max_rows else self.family

    def predict(self, matrix: Any) -> dict[str, Any]:
        """The task's outputs (:func:`outputs`) for a model-matrix DataFrame."""
        return outputs(self.task, self.scores(matrix), threshold=self.threshold, classes=self.classes)

    def predict_array(self, matrix: Any, columns: Sequence[str]) -> dict[str, Any]:
        """The task's outputs (:func:`outputs`) for a float ndarray whose columns are ``columns``."""
        return outputs(self.task, self.scores_array(matrix, columns), threshold=self.threshold,
                       classes=self.classes)

    def predict_proba(self, matrix: Any) -> Any:
        """Class probabilities: binary (n,) of the positive class, multiclass (n, k)."""
        self._classification()
        return self.scores(matrix)

    def predict_proba_array(self, matrix: Any, columns: Sequence[str]) -> Any:
        """``predict_proba`` of a float ndarray whose columns are ``columns``."""
        self._classification()
        return self.scores_array(matrix, columns)

    def _classification(self) -> None:
        if self.task == "regression":
            raise TaskError(f"{self.name} v{self.version} is a regression model: it has no class "
                            "probabilities (use predict or scores)")


def load_version(model_name: str, version: str, *, settings: Settings | None = None,
                 compiled: bool = False, verify: bool = False) -> LoadedModel:
    """Load a registered version with its serving metadata (family, task, classes, threshold,
    features). PyTorch models load onto ``settings.torch_device`` (CUDA when configured and present).

    ``compiled``: also load the version's ONNX copy when it has one that passed parity, per
    ``settings.serving_runtime`` (the model server asks; everyone else gets the native model).
    Raises :class:`flywheel.training.compiled.CompiledModelError` when that copy is corrupt.

    ``verify``: load only a version training signed, whose artifacts are unchanged since
    (:mod:`flywheel.training.signing`; the model server asks); raises
    :class:`flywheel.training.signing.VersionVerificationError` otherwise.
    """
    from flywheel.training import families

    settings = settings or get_settings()
    mv = client(settings).get_model_version(model_name, version)
    family = mv.tags.get("family", "xgboost")  # versions before model families were XGBoost
    scorer = families.get(family)
    loaded = LoadedModel(
        name=model_name,
        version=str(mv.version),
        family=family,
        model=_load_model(scorer, model_name, str(mv.version), dict(mv.tags), settings, verify=verify),
        scorer=scorer,
        threshold=float(mv.tags.get("threshold", "nan")),
        features=json.loads(mv.tags["features"]),
        task=mv.tags.get("task", "binary"),  # versions before task types were binary
        classes=json.loads(mv.tags.get("classes", "[]")),
    )
    if compiled:
        attach_compiled(loaded, dict(mv.tags), settings)
    return loaded


def _load_model(scorer: Any, model_name: str, version: str, tags: dict[str, str], settings: Settings, *,
                verify: bool) -> Any:
    if not verify:
        return scorer.load(f"models:/{model_name}/{version}", settings)
    from flywheel.training import signing

    return signing.verified_load(model_name, version, tags, settings, lambda path: scorer.load(path, settings))


def attach_compiled(loaded: LoadedModel, tags: dict[str, str], settings: Settings) -> None:
    """Give ``loaded`` its ONNX Runtime scorer and batch-size limit, as the version's tags and
    ``settings.serving_runtime`` / ``serving_onnx_max_rows`` say; record why not otherwise."""
    from flywheel.training import compiled

    mode = settings.serving_runtime
    if mode == "native":
        loaded.runtime_note = "serving_runtime=native"
        return
    if tags.get(compiled.TAGS.status) != "ok":
        loaded.runtime_note = tags.get(compiled.TAGS.reason, "no ONNX copy recorded on the version")
        return
    weights = next(iter(loaded.model.parameters()), None) if hasattr(loaded.model, "parameters") else None
    if weights is not None and str(weights.device) != "cpu":  # a GPU model: ONNX Runtime here is CPU-only
        loaded.runtime_note = f"the native model runs on {weights.device}"
        return
    loaded.compiled = compiled.load(tags, loaded.task, tracking_uri=str(settings.mlflow_tracking_uri),
                                    threads=settings.serving_threads)
    measured = int(tags.get(compiled.TAGS.max_rows, "0"))
    limit = settings.serving_onnx_max_rows if settings.serving_onnx_max_rows is not None else measured
    loaded.compiled_max_rows = 10**9 if mode == "onnx" else limit


def load_alias(model_name: str, alias: str = CHAMPION, *, settings: Settings | None = None,
               compiled: bool = False, verify: bool = False) -> LoadedModel:
    """Load the version behind ``alias``; raises :class:`RegistryError` if it is not set."""
    mv = alias_version(model_name, alias, settings=settings)
    if mv is None:
        raise RegistryError(f"registered model {model_name!r} has no {alias!r} alias yet: train first")
    return load_version(model_name, str(mv.version), settings=settings, compiled=compiled, verify=verify)
