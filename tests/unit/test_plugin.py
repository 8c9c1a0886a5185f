import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_plugin_links_follow_settings(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    from flywheel.core.config import get_settings

    get_settings.cache_clear()
    module = runpy.run_path(str(Path(__file__).resolve().parents[2] / "plugins" / "flywheel_links.py"))
    views = module["FlywheelLinks"].external_views
    assert {"MLflow (experiments, registry)", "Model API (Swagger)"} == {v["name"] for v in views}
    assert views[0]["href"] == "http://mlflow.internal:5000"
