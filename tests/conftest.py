"""Shared fixtures. Markers: unit, integration, e2e (see pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.core.config import get_settings
from flywheel.core.spec import PipelineSpec, load_spec_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spec() -> PipelineSpec:
    return load_spec_file(ROOT / "models" / "fraud.yaml")


@pytest.fixture(autouse=True)
def _fresh_settings_cache():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
