"""MLflow registry: one registered model per use case, promotion by alias.

Aliases: ``champion`` (served) and ``challenger`` (registered, not promoted).
A model version carries what serving needs as tags: its task type, classes (classification),
decision threshold (binary) and the ordered feature list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from flywheel.core.config import Settings, get_settings

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
    regressions: list[str] | None = None, metric: str = "pr_auc",
) -> GateDecision:
    """The promotion gate on ``metric`` (lower is better for log loss, RMSE, MAE): strictly beat
    the baseline, beat the champion by more than ``min_improvement``, and regress no slice
    beyond its tolerance (``regressions``). A NaN score never passes."""
    from flywheel.training.tasks import improves

    if not improves(metric, challenger, baseline):
        reason = f"challenger {challenger:.4f} does not beat the baseline {baseline:.4f}"
        return GateDecision(False, reason, challenger, baseline, champion)
    if champion is not None and not improves(metric, challenger, champion, by=min_improvement):
        reason = (f"challenger {challenger:.4f} does not beat the champion {champion:.4f} "
                  f"by {min_improvement}")
        return GateDecision(False, reason, challenger, baseline, champion)
    if regressions:
        reason = f"challenger {challenger:.4f} regresses slices: {'; '.join(regressions[:5])}"
        return GateDecision(False, reason, challenger, baseline, champion)
    against = "no champion yet" if champion is None else f"champion {champion:.4f}"
    reason = f"challenger {challenger:.4f} beats baseline {baseline:.4f} and {against}"
    return GateDecision(True, reason, challenger, baseline, champion)


def client(settings: Settings | None = None) -> Any:
    import mlflow
    from mlflow import MlflowClient

    settings = settings or get_settings()
    mlflow.set_tracking_uri(str(settings.mlflow_tracking_uri))
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def alias_version(model_name: str, alias: str, *, settings: Settings | None = None) -> Any | None:
    """The model version behind an alias, or None when the alias is not set."""
    from mlflow.exceptions import MlflowException

    try:
        return client(settings).get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def window_end(mv: Any) -> date | None:
    """The last day of a model version's training data (its ``data.window`` tag), if recorded."""
    window = mv.tags.get("data.window", "")
    return date.fromisoformat(window.split("..")[1]) if ".." in window else None


def set_alias(model_name: str, alias: str, version: str, *, settings: Settings | None = None) -> None:
    client(settings).set_registered_model_alias(model_name, alias, version)


@dataclass
class LoadedModel:
    """A registered version ready to score. ``predict`` returns the task's scores
    (:mod:`flywheel.training.tasks`): binary positive-class probabilities, multiclass
    ``n x k`` class probabilities (columns in ``classes`` order), regression values;
    ``decide`` turns them into the response's decision / class / value."""

    name: str
    version: str
    family: str
    model: Any
    threshold: float  # binary only (NaN otherwise)
    features: list[str]
    scorer: Any = field(repr=False)  # the family (flywheel.training.families), resolved once at load: request path
    task: str = "binary"
    classes: list[Any] = field(default_factory=lambda: [0, 1])

    _positions: dict[tuple[str, ...], Any] = field(default_factory=dict, repr=False)

    def predict(self, matrix: Any) -> Any:
        """The task's scores of a model matrix (a DataFrame holding the model's features)."""
        return self.scorer.predict(self.model, matrix[self.features])

    def predict_proba(self, matrix: Any) -> Any:
        """Binary name of :meth:`predict` (positive-class probabilities, 1-d)."""
        return self.predict(matrix)

    def decide(self, scores: Any) -> Any:
        """Binary: ``score >= threshold``; multiclass: the most probable class; regression: the value."""
        from flywheel.training.tasks import decisions

        return decisions(self.task, scores, classes=self.classes, threshold=self.threshold)

    def predict_proba_array(self, matrix: Any, columns: Sequence[str]) -> Any:
        """Binary name of :meth:`predict_array`."""
        return self.predict_array(matrix, columns)

    def predict_array(self, matrix: Any, columns: Sequence[str]) -> Any:
        """``predict`` of a float ndarray whose columns are ``columns`` (a superset of the
        model's features, any order): the request path, without a DataFrame."""
        key = tuple(columns)
        if key not in self._positions:  # once per column layout: the model's features, in its order
            index = {c: i for i, c in enumerate(key)}
            wanted = [index[f] for f in self.features]
            self._positions[key] = None if wanted == list(range(len(key))) else wanted
        positions = self._positions[key]
        x = matrix if positions is None else matrix[:, positions]
        return self.scorer.predict_array(self.model, x, self.features)


def load_version(model_name: str, version: str, *, settings: Settings | None = None) -> LoadedModel:
    """Load a registered version with its serving metadata (family, task, classes, threshold,
    features). Versions registered before task types are binary.

    PyTorch models load onto ``settings.torch_device`` (CUDA when configured and present).
    """
    from flywheel.training import families

    settings = settings or get_settings()
    mv = client(settings).get_model_version(model_name, version)
    family = mv.tags.get("family", "xgboost")  # versions before model families were XGBoost
    task = mv.tags.get("task", "binary")
    scorer = families.get(family, task)
    return LoadedModel(
        name=model_name,
        version=str(mv.version),
        family=family,
        model=scorer.load(f"models:/{model_name}/{version}", settings),
        scorer=scorer,
        threshold=float(mv.tags.get("threshold", "nan")),
        features=json.loads(mv.tags["features"]),
        task=task,
        classes=json.loads(mv.tags.get("classes", "[0, 1]" if task == "binary" else "[]")),
    )


def load_alias(model_name: str, alias: str = CHAMPION, *, settings: Settings | None = None) -> LoadedModel:
    """Load the version behind ``alias``; raises :class:`RegistryError` if it is not set."""
    mv = alias_version(model_name, alias, settings=settings)
    if mv is None:
        raise RegistryError(f"registered model {model_name!r} has no {alias!r} alias yet: train first")
    return load_version(model_name, str(mv.version), settings=settings)
