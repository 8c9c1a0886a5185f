"""Lineage of a model version: code, environment, spec, features and data that produced it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from flywheel.core.config import PROJECT_ROOT, Settings
from flywheel.core.spec import PipelineSpec

PACKAGES = ("flywheel", "xgboost", "torch", "optuna", "scikit-learn", "pandas", "feast", "mlflow", "bentoml",
            "apache-airflow")


def code_version(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Git commit and dirty flag of the working tree ("unknown" outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no") or ""
    return {"commit": commit, "dirty": str(bool(status)).lower()}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def spec_digest(spec: PipelineSpec) -> str:
    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def feast_registry_digest(settings: Settings) -> str:
    """Content hash of the Feast registry the training set was read through."""
    path = settings.feast_dir / "registry.db"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def lineage_tags(spec: PipelineSpec, settings: Settings, *, seed: int) -> dict[str, str]:
    """Tags for a model version and its run (strings, MLflow's tag type)."""
    code = code_version()
    tags: dict[str, Any] = {
        "lineage.code.commit": code["commit"],
        "lineage.code.dirty": code["dirty"],
        "lineage.packages": json.dumps(package_versions(), sort_keys=True),
        "lineage.seed": str(seed),
        "lineage.spec.sha256": spec_digest(spec),
        "lineage.feast.registry.sha256": feast_registry_digest(settings),
        "lineage.feast.feature_service": spec.feature_service,
    }
    return {k: str(v) for k, v in tags.items()}
