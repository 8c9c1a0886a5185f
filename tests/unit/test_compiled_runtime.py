"""Compiled inference (flywheel.training.compiled): every exportable family/task scores the same
through ONNX Runtime as natively (max abs diff <= 1e-5, identical decisions); a failed parity
check or a family without an export means no ONNX runtime, with the reason; the runtime is
chosen per batch size; the micro-batcher answers each concurrent request with its own row."""

from __future__ import annotations

import asyncio

import numpy as np
import pandas as pd
import pytest

from flywheel.core.config import Settings
from flywheel.serving.batching import MicroBatcher
from flywheel.training import compiled, families
from flywheel.training.families.base import FitData, Trained
from flywheel.training.registry import LoadedModel

pytestmark = pytest.mark.unit

FEATURES = ["a", "b", "c", "code"]
TASKS = ["binary", "multiclass", "regression"]


def frame(n: int, seed: int) -> tuple[pd.DataFrame, pd.Series, pd.Series, pd.Series]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({"a": rng.normal(size=n), "b": rng.lognormal(size=n), "c": rng.normal(size=n),
                      "code": rng.integers(-1, 4, size=n).astype("float64")})
    x.loc[rng.random(n) < 0.1, "a"] = np.nan  # missing values take the trees' default branch
    signal = x["a"].fillna(0) + 0.5 * np.log(x["b"]) - 0.3 * x["code"]
    binary = (signal + rng.normal(scale=0.5, size=n) > 0).astype(int)
    multi = pd.Series(np.digitize(signal, [-0.5, 0.5]), index=x.index)
    value = 3.0 * signal + rng.normal(scale=0.1, size=n)
    return x, binary, multi, value


@pytest.fixture(scope="module")
def data() -> dict[str, FitData]:
    x, yb, ym, yr = frame(1200, 1)
    xv, vb, vm, vr = frame(300, 2)
    return {"binary": FitData(x, yb, xv, vb, task="binary"),
            "multiclass": FitData(x, ym, xv, vm, task="multiclass", n_classes=3),
            "regression": FitData(x, yr, xv, vr, task="regression")}


@pytest.fixture(scope="module")
def holdout() -> pd.DataFrame:
    return frame(2000, 3)[0]


PARAMS = {"xgboost": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.2},
          "torch_mlp": {"epochs": 3, "hidden": [16, 8], "batch_size": 256}}


def fitted(family: str, data: FitData) -> Trained:
    fam = families.get(family)
    settings = Settings(torch_device="cpu")
    fit_data = data if family != "torch_mlp" else FitData(  # "code" as a categorical column
        data.x_train, data.y_train, data.x_val, data.y_val, task=data.task, n_classes=data.n_classes,
        categorical={"code": 4})
    return fam.train(fit_data, PARAMS[family], seed=7, settings=settings)


@pytest.mark.parametrize("family", ["xgboost", "torch_mlp"])
@pytest.mark.parametrize("task", TASKS)
def test_onnx_copy_scores_like_the_native_model(family, task, data, holdout):
    trained = fitted(family, data[task])
    scorer = compiled.OnnxScorer(trained.family.export_onnx(trained.model, FEATURES, task=task), task)
    native = trained.scores(holdout[FEATURES])
    onnx = scorer.scores(holdout[FEATURES].to_numpy())
    check = compiled.parity(task, native, onnx, threshold=0.5)
    assert onnx.shape == native.shape
    assert check.ok, check
    assert check.max_abs_diff <= compiled.TOLERANCE and check.decisions_differ == 0


def test_a_family_without_an_export_is_recorded_unavailable(data, holdout):
    trained = families.get("logistic_regression").train(data["binary"], {}, seed=7, settings=Settings())
    tags = compiled.package(trained, holdout, FEATURES, threshold=0.5)
    assert tags[compiled.TAGS.status] == "unavailable"
    assert "logistic_regression" in tags[compiled.TAGS.reason]


def test_a_copy_that_fails_parity_is_not_used_and_says_why(data, holdout):
    """A real mismatch: the exported graph is another model's (what a converter bug would give)."""
    trained, other = fitted("xgboost", data["binary"]), fitted("xgboost", data["regression"])

    class WrongExport(type(trained.family)):  # type: ignore[misc]
        def export_onnx(self, model, features, *, task):
            return super().export_onnx(other.model, features, task="regression")

    bad = Trained(WrongExport(), trained.model, trained.params, trained.seconds, task="binary")
    tags = compiled.package(bad, holdout, FEATURES, threshold=0.5)
    assert tags[compiled.TAGS.status] == "unavailable"
    assert "parity failed" in tags[compiled.TAGS.reason]
    assert float(tags[compiled.TAGS.max_abs_diff]) > compiled.TOLERANCE


def test_the_runtime_is_chosen_per_batch_size(data, holdout):
    trained = fitted("xgboost", data["binary"])
    scorer = compiled.OnnxScorer(trained.family.export_onnx(trained.model, FEATURES, task="binary"), "binary")
    model = LoadedModel(name="m", version="1", family="xgboost", model=trained.model, threshold=0.5,
                        features=FEATURES, scorer=trained.family, task="binary", compiled=scorer,
                        compiled_max_rows=8)
    x = holdout[FEATURES].to_numpy()
    assert model.runtime_for(1) == model.runtime_for(8) == compiled.ONNX
    assert model.runtime_for(9) == "xgboost"
    small, large = model.scores_array(x[:8], FEATURES), model.scores_array(x[:100], FEATURES)
    np.testing.assert_array_equal(small, scorer.scores(x[:8]))  # ONNX served the small batch
    np.testing.assert_array_equal(large, trained.family.predict_array(trained.model, x[:100], FEATURES,
                                                                      task="binary"))  # XGBoost the large one
    # The column layout is the model's whatever order the caller's matrix has.
    shuffled = ["code", "c", "a", "b"]
    np.testing.assert_allclose(model.scores_array(holdout[shuffled].to_numpy()[:8], shuffled), small)


def test_the_crossover_is_where_onnx_stops_being_faster(data, holdout):
    trained = fitted("xgboost", data["binary"])
    scorer = compiled.OnnxScorer(trained.family.export_onnx(trained.model, FEATURES, task="binary"), "binary")
    x = holdout[FEATURES].to_numpy()
    best, timings = compiled.crossover(
        lambda b: trained.family.predict_array(trained.model, b, FEATURES, task="binary"), scorer.scores, x,
        rounds=5)
    assert best == 0 or best in compiled.SIZES
    for size, (t_onnx, t_native) in timings.items():  # every size up to the limit was ONNX-faster
        if int(size) <= best:
            assert t_onnx < t_native


def test_concurrent_requests_get_their_own_rows_in_shared_batches(data, holdout):
    trained = fitted("xgboost", data["binary"])
    x = holdout[FEATURES].to_numpy()
    calls: list[int] = []

    def score(rows):
        calls.append(len(rows))
        return trained.family.predict_array(trained.model, x[list(rows)], FEATURES, task="binary").tolist()

    async def run() -> tuple[list[float], MicroBatcher]:
        batcher = MicroBatcher(score, max_rows=16)
        return await asyncio.gather(*(batcher.submit(i) for i in range(40))), batcher

    answers, batcher = asyncio.run(run())
    alone = [score([i])[0] for i in range(40)]
    assert answers == alone  # each request got its own row, as if scored alone
    assert max(calls[:batcher.batches]) == 16 and batcher.batches < 40  # shared, bounded batches


def test_a_held_open_batch_waits_for_more_and_a_failed_batch_fails_its_requests():
    async def run():
        batcher = MicroBatcher(lambda rows: [r * 2 for r in rows], max_rows=100, max_wait_s=0.02)

        async def late(v):
            await asyncio.sleep(0.005)
            return await batcher.submit(v)

        first = await asyncio.gather(batcher.submit(1), late(2))
        failing = MicroBatcher(lambda rows: 1 / 0, max_rows=4)
        results = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
        return first, batcher.batches, results

    first, batches, results = asyncio.run(run())
    assert first == [2, 4] and batches == 1  # the late request joined the open batch
    assert all(isinstance(r, ZeroDivisionError) for r in results)
