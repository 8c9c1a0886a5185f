"""Latency gate, overfit-one-batch, model-card statistics and the ML Test Score's logic."""

import numpy as np
import pandas as pd
import pytest

from flywheel.core.config import get_settings
from flywheel.core.spec import NOT_STATED, LatencyBudgetSpec, SpecError, load_spec_file
from flywheel.training import card, evidence, families, latency, overfit, testscore
from flywheel.training.families.base import FitData
from flywheel.training.families.baseline import LinearFamily
from flywheel.training.registry import decide

pytestmark = pytest.mark.unit
TASKS = {"binary": 2, "multiclass": 3, "regression": 2}


def _data(task: str, n: int = 600, seed: int = 0) -> FitData:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 6)), columns=list("abcdef"))
    x.loc[rng.random(n) < 0.1, "b"] = np.nan
    x["cat_code"] = rng.integers(0, 4, n).astype("float64")
    if task == "regression":
        y = pd.Series(2 * x["a"] - x["c"] + rng.normal(size=n))
    elif task == "multiclass":
        y = pd.Series(np.digitize(x["a"] + 0.3 * rng.normal(size=n), [-0.5, 0.5]).astype("int64"))
    else:
        y = pd.Series((rng.random(n) < 1 / (1 + np.exp(-(2 * x["a"] - 3)))).astype("int64"))
    return FitData(x, y, x, y, task=task, n_classes=TASKS[task], categorical={"cat_code": 4})


@pytest.fixture(scope="module")
def fitted():
    data = _data("binary")
    return families.get("logistic_regression").train(data, {}, seed=0, settings=get_settings()), data


def test_a_budget_that_cannot_be_met_refuses_the_candidate_and_a_generous_one_passes(fitted):
    model, data = fitted
    tight = latency.measure(model, data.x_val, LatencyBudgetSpec(p99_ms_batch_1=1e-6, p99_ms_batch_100=1e-6,
                                                                  repeats=5))
    assert set(tight.p99_ms) == {1, 100} and all(v > 0 for v in tight.p99_ms.values())
    refused = decide(challenger=0.5, baseline=0.3, champion=None, over_budget=tight.over_budget())
    assert not refused.promote
    assert "latency budget" in refused.reason and "batch 1 " in refused.reason and "batch 100" in refused.reason
    generous = latency.measure(model, data.x_val, LatencyBudgetSpec(p99_ms_batch_1=1e6, p99_ms_batch_100=1e6,
                                                                     repeats=5))
    assert generous.over_budget() == []
    assert decide(challenger=0.5, baseline=0.3, champion=None, over_budget=generous.over_budget()).promote
    assert generous.tags()["latency.budget_ms.batch_100"] == "1e+06"
    assert float(generous.tags()["latency.p99_ms.batch_1"]) == pytest.approx(generous.p99_ms[1], rel=1e-5)


def test_the_latency_budget_and_card_have_defaults_and_reject_nonsense(spec):
    assert spec.training.latency_budget.p99_ms_batch_1 > 0 and spec.card.intended_use == NOT_STATED
    raw = spec.model_dump(mode="json", exclude_none=True)
    raw["training"]["latency_budget"] = {"p99_ms_batch_1": -1}
    with pytest.raises(SpecError, match="latency_budget.p99_ms_batch_1"):
        _load(raw)


def _load(raw, tmp=None):
    import tempfile
    from pathlib import Path

    import yaml

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_spec_file(path)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_family_overfits_one_batch_of_every_task_it_supports(task):
    data = _data(task)
    for name in families.registered():
        family = families.get(name)
        if task not in family.tasks:
            continue
        result = overfit.check(family, data, seed=3, settings=get_settings())
        assert result.passed, result
        if family.constant:
            assert "nothing to overfit" in result.note
        else:
            assert 0 < result.rows <= 32 and result.loss < overfit.MAX_LOSS_RATIO * result.constant_loss


class _LabelBlindLinear(LinearFamily):
    """A family with a bug: it fits on shuffled labels, so it cannot learn its rows."""

    name = "label_blind"

    def fit(self, data, params, *, seed, settings):
        shuffled = pd.Series(np.random.default_rng(seed).permutation(data.y_train.to_numpy()))
        return super().fit(FitData(data.x_train, shuffled, data.x_val, data.y_val, task=data.task), params,
                           seed=seed, settings=settings)


def test_a_family_that_cannot_overfit_fails_with_a_clear_error():
    with pytest.raises(overfit.OverfitError, match="'label_blind' cannot overfit one batch of .* training rows"):
        overfit.check(_LabelBlindLinear(), _data("regression"), seed=0, settings=get_settings())


def test_the_card_statistics():
    rng = np.random.default_rng(1)
    p = rng.random(5000)
    y = (rng.random(5000) < p).astype("int64")  # calibrated by construction
    table, ece = card.reliability("binary", y, p)
    assert ece < 0.05 and table["rows"].sum() == 5000
    _, bad = card.reliability("binary", y, np.clip(p + 0.3, 0, 1))
    assert bad > 0.2
    low, high = card.bootstrap_ci("roc_auc", y, p, seed=0, rounds=50)
    from flywheel.training.evaluation import score

    assert low < score("roc_auc", y, p) < high
    values = rng.normal(size=500)
    res = card.residuals(values + 1.0, values)
    assert res["rows"].sum() == 500 and np.allclose(res["mean_residual"], 1.0)


def test_ablation_credits_the_group_the_model_uses(fitted, spec):
    model, data = fitted
    groups = {"used": ["a"], "noise": ["e", "f"]}
    drop = card.group_ablation(model, data.x_val, data.y_val.to_numpy(), groups, metric="roc_auc", seed=0)
    assert drop["used"] > 0.1 and abs(drop["noise"]) < 0.05
    names = list(spec.features.model or [])
    by_group = card.feature_groups(spec, names or [n for e in spec.features.entities.values()
                                                    for n in e.aggregations] + list(spec.features.request))
    assert any(g.startswith(f"{spec.name}_") for g in by_group) and card.REQUEST_GROUP in by_group


def _evidence(spec, **tags):
    base = {"family": "xgboost", "gate.metric": "pr_auc", "gate.promote": "true", "gate.reason": "beats",
            "data.partitions": '["a", "b"]', "lineage.code.commit": "abc", "lineage.code.dirty": "false"}
    return testscore.Evidence(spec, "3", base | tags, {"holdout_pr_auc": 0.6, "baseline_pr_auc": 0.4,
                                                       "xgboost_trials": 1.0})


def test_the_rubric_scores_28_tests_and_says_what_would_meet_a_missing_one(spec):
    rubric = testscore.evaluate(_evidence(spec), testscore.CHECKS)
    assert len(rubric.results) == 28 and set(rubric.sections()) == set(testscore.SECTIONS)
    assert all(sum(r.test.section == s for r in rubric.results) == 7 for s in testscore.SECTIONS)
    by_id = {r.test.id: r for r in rubric.results}
    assert by_id["infra-1"].status == "not met" and "flywheel reproduce" in by_id["infra-1"].to_meet
    assert by_id["monitoring-7"].status == "not met" and "flywheel report" in by_id["monitoring-7"].to_meet
    assert by_id["infra-4"].points == 1 and by_id["model-5"].points == 1 and by_id["model-1"].points == 0.5
    assert rubric.final == min(rubric.sections().values())
    proven = _evidence(spec, **{evidence.REPRODUCE: evidence.dumps({"passed": True, "max_abs_diff": 0.0}),
                                evidence.OVERFIT: evidence.dumps([{"family": "xgboost", "ratio": 0.01,
                                                                   "passed": True}])})
    again = {r.test.id: r for r in testscore.evaluate(proven, testscore.CHECKS).results}
    assert again["infra-1"].points == 0.5 and again["infra-2"].points == 1
    assert "xgboost" in again["infra-2"].evidence
    card_text = card.with_rubric(card.RUBRIC_MARK + "\nold rubric", rubric.markdown())
    assert "old rubric" not in card_text and "ML Test Score" in card_text
