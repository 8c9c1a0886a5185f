"""Where the evidence of a model version lives: its MLflow version tags, one name each.

Training writes the overfit-one-batch results, the feature-group ablation and the latency
figures; ``flywheel reproduce`` and ``flywheel drill`` (:mod:`flywheel.training.drills`) write
theirs when they run. :mod:`flywheel.training.testscore` reads them all.
"""

from __future__ import annotations

import json
from typing import Any

OVERFIT = "evidence.overfit_batch"  # JSON list of flywheel.training.overfit.OverfitResult dicts
ABLATION = "evidence.ablation"  # JSON {feature group: metric drop when shuffled}
REPRODUCE = "evidence.reproduce"  # JSON: flywheel.training.drills.Reproduction
ROLLBACK_DRILL = "evidence.rollback_drill"  # JSON: flywheel.training.drills.Drill
PARAMS = "training.params"  # the selected family's hyperparameters (JSON): what a reproduction refits
FINITE = "evidence.finite_scores"  # "true" when every holdout score was finite
MAX_TAG = 5000  # MLflow's tag value limit


def dumps(value: Any) -> str:
    """A tag value: JSON, cut to MLflow's limit (a cut value no longer parses: :func:`loads` says so)."""
    return json.dumps(value, sort_keys=True, default=str)[:MAX_TAG]


def loads(tags: dict[str, str], name: str) -> Any | None:
    """The JSON value of tag ``name``; None when absent or unreadable."""
    try:
        return json.loads(tags[name])
    except (KeyError, ValueError):
        return None
