"""Feast definitions of the Flywheel feature repository, generated from the use-case specs.

Nothing here names a feature: every use-case spec in ``models/`` (``kind: pipeline``) is compiled
by :func:`flywheel.features.repo.build` into its entities, feature views and feature service,
namespaced by the use case so several share one registry and online store. ``flywheel
features-apply`` renders ``feature_store.yaml`` for the active profile, so the ``feast`` CLI
(``feast plan``, ``feast feature-views list``) reads this repo too.
"""

from flywheel.core.config import get_settings
from flywheel.core.spec import use_case_specs
from flywheel.features.repo import build

if __name__ != "flywheel_feature_repo":  # imported by the feast CLI: expose the objects
    _settings = get_settings()
    for _spec in use_case_specs(settings=_settings):
        for _obj in build(_settings, _spec):
            globals()[_obj.name] = _obj
