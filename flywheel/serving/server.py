"""One model server, several use cases: which it serves, and the route table.

Every served use case gets ``/<use case>/predict`` and ``/<use case>/predict_batch``; when the
server serves exactly one, ``/predict`` and ``/predict_batch`` answer for it too. Which use
cases: ``settings.serving_use_cases`` when set (each must load and have a champion, or the
server does not start), else every use-case spec in ``specs_dir`` whose model has a champion
(a spec that does not load, or has no champion yet, is left out and logged: it never takes
the others down). See docs/serving.md for one server for all vs one per use case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec, SpecError, load_any_spec_file
from flywheel.serving.predictor import Predictor, limit_threads
from flywheel.serving.routes import ScoringRoutes
from flywheel.training import registry

log = logging.getLogger(__name__)
ENDPOINTS = ("predict", "predict_batch")


class ServingError(RuntimeError):
    """The model server cannot serve what it was configured to; the message names the use case."""


def served_specs(settings: Settings) -> list[PipelineSpec]:
    """The use cases this server serves (see the module docstring).

    Raises :class:`ServingError` when a configured use case does not load or has no champion,
    or when no use case has one.
    """
    wanted = list(settings.serving_use_cases)
    specs: list[PipelineSpec] = []
    problems: list[str] = []
    for path in sorted(Path(settings.specs_dir).glob("*.yaml")):
        try:
            spec = load_any_spec_file(path)
        except SpecError as exc:
            problems.append(str(exc))
            continue
        if not isinstance(spec, PipelineSpec) or (wanted and spec.name not in wanted):
            continue
        if registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings) is None:
            problems.append(f"use case {spec.name}: model {spec.model_name} has no champion yet")
            continue
        specs.append(spec)
    missing = [name for name in wanted if name not in {s.name for s in specs}]
    if missing:
        raise ServingError(f"cannot serve {', '.join(missing)} (serving_use_cases): "
                           + ("; ".join(problems) or f"no such spec in {settings.specs_dir}"))
    for problem in problems:
        log.error("not served: %s", problem)
    if not specs:
        raise ServingError(f"no use case in {settings.specs_dir} has a champion: train one first"
                           + (f" ({'; '.join(problems)})" if problems else ""))
    return specs


@dataclass(frozen=True)
class Route:
    path: str
    use_case: str
    endpoint: str  # "predict" | "predict_batch"
    alias: bool = False  # /predict for the only use case


def route_table(use_cases: list[str]) -> list[Route]:
    """Every prediction route of ``use_cases`` (plus the bare aliases when there is one)."""
    routes = [Route(f"/{uc}/{ep}", uc, ep) for uc in use_cases for ep in ENDPOINTS]
    if len(use_cases) == 1:
        routes += [Route(f"/{ep}", use_cases[0], ep, alias=True) for ep in ENDPOINTS]
    return routes


class ModelServer:
    """The predictors and routes of every served use case, in one process.

    Use cases share the process's Prometheus registry, Redis connection pool and libraries;
    each has its own champion watch, featurizer and prediction log.
    """

    def __init__(self, settings: Settings, *, specs: list[PipelineSpec] | None = None, watch: bool = True,
                 log_predictions: bool = True) -> None:
        from flywheel.features.store import feature_store

        limit_threads(settings.serving_threads)  # before any model loads
        self.settings = settings
        specs = specs if specs is not None else served_specs(settings)
        store = feature_store(settings)  # one Feast store (and online-store client) for all
        self.predictors: dict[str, Predictor] = {}
        try:
            for spec in specs:
                self.predictors[spec.name] = Predictor(spec, settings, watch=watch, log_predictions=log_predictions,
                                                       store=store)
        except BaseException:
            self.close()
            raise
        self.routes = {name: ScoringRoutes(p) for name, p in self.predictors.items()}
        self.table = route_table(list(self.predictors))
        self._handlers = {r.path: getattr(self.routes[r.use_case], r.endpoint) for r in self.table}
        self._async = {r.path: getattr(self.routes[r.use_case], f"{r.endpoint}_async") for r in self.table}

    @property
    def ready(self) -> bool:
        return bool(self.predictors) and all(p.ready for p in self.predictors.values())

    def handler(self, path: str) -> Any:
        """The ``bytes -> (status, bytes)`` handler of a prediction route (scoring the request
        alone), or None."""
        return self._handlers.get(path)

    def async_handler(self, path: str) -> Any:
        """The ``async bytes -> (status, bytes, runtime)`` handler of a prediction route, what the
        web server calls (``/predict`` micro-batched), or None."""
        return self._async.get(path)

    def registry_event(self, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """Answer an MLflow registry webhook (:mod:`flywheel.serving.registry_events`): 404 without
        ``serving_registry_webhook_secret``, 401 when it does not verify, else 202 and the champion
        and rollout of the event's model are refreshed at once (on a thread: the answer does not
        wait for a model download)."""
        import threading

        from flywheel.serving import registry_events

        secret = self.settings.serving_registry_webhook_secret
        if secret is None:
            return 404, b'{"error": "registry events are not enabled (serving_registry_webhook_secret)"}'
        try:
            model = registry_events.verified_model(body, headers, secret.get_secret_value())
        except registry_events.RegistryEventRejected as exc:
            log.warning("registry event refused: %s", exc)
            return 401, b'{"error": "registry event refused"}'
        for predictor in self.predictors.values():
            if predictor.spec.model_name == model:
                threading.Thread(target=predictor.refresh_now, name=f"registry-event-{predictor.use_case}",
                                 daemon=True).start()
        return 202, b'{"status": "accepted"}'

    def close(self) -> None:
        for predictor in self.predictors.values():
            predictor.close()
