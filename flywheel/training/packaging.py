"""Package the served model with BentoML (``bentoml build`` of serving/bentofile.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flywheel.core.config import PROJECT_ROOT, Settings, get_settings
from flywheel.core.spec import PipelineSpec


class PackagingError(RuntimeError):
    """``bentoml build`` failed; the message carries its output."""


def bentoml_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings.component_env())
    env["BENTOML_HOME"] = str(settings.home / "bentoml")
    env["BENTOML_DO_NOT_TRACK"] = "True"
    return env


def bentoml_bin() -> str:
    return str(Path(sys.executable).parent / "bentoml")


def build_bento(spec: PipelineSpec, *, version: str, settings: Settings | None = None) -> str:
    """Build a bento labelled with the model version; returns its tag (``name:version``)."""
    settings = settings or get_settings()
    cmd = [
        bentoml_bin(), "build", "-f", "serving/bentofile.yaml", "--output", "tag",
        "--label", f"model_name={spec.model_name}", "--label", f"model_version={version}", ".",
    ]
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=bentoml_env(settings), capture_output=True,
                          text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise PackagingError(f"bentoml build failed ({proc.returncode}): {proc.stderr[-2000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("__tag__:"):
            return line.removeprefix("__tag__:").strip()
    raise PackagingError(f"bentoml build printed no tag: {proc.stdout[-500:]}")
