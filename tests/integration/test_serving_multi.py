"""Several use cases in one model server, in process, on the real stack (SeaweedFS, MLflow,
Feast on SQLite and Redis): a second spec on the fraud dataset whose entities are a composite key
(user_id + merchant_id in one view) and a string key (country). Its online reads equal Feast's
own, its routes carry its own generated schema next to fraud's, and which use cases a server
serves is configuration."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pandas as pd
import pytest
import yaml

from flywheel.core import storage
from flywheel.core.spec import load_spec_file
from flywheel.features import store as features
from flywheel.runs import feature_day
from flywheel.serving.online import OnlineFeatures
from flywheel.serving.server import ModelServer, ServingError
from flywheel.training import promotion
from flywheel.training.trainer import train

from .conftest import DAYS, FIRST_DAY
from .serving_support import END, champion_version, has_series, only, txn

pytestmark = pytest.mark.integration
REDIS_DB = int(os.environ.get("FLYWHEEL_TEST_REDIS_DB", "5"))

PAIRS = {
    "name": "pairs", "model_name": "pairs-model", "owner": "test", "task": "binary", "label": "is_fraud",
    "features": {
        "entities": {
            "pair": {"keys": ["user_id", "merchant_id"], "aggregations": {
                "pair_txn_count_7d": {"fn": "count", "window": "7d"},
                "pair_amount_mean_7d": {"fn": "mean", "column": "amount", "window": "7d"}}},
            "country": {"keys": ["country"], "aggregations": {
                "country_txn_count_24h": {"fn": "count", "window": "24h"},
                "country_fraud_rate_7d": {"fn": "share", "where": "is_fraud = 1", "window": "7d", "delay": "1d"}}},
            # (the trainer's slices still read this one by name: see the report)
            "user": {"keys": ["user_id"], "aggregations": {"user_txn_count_7d": {"fn": "count", "window": "7d"}}},
        },
        "request": {"amount": {"fn": "value", "column": "amount"},
                    "device_code": {"fn": "category", "column": "device"},
                    "amount_to_pair_mean": {"fn": "ratio", "column": "amount", "other": "pair_amount_mean_7d"}},
    },
    "training": {"split": {"train": 0.7, "validation": 0.15, "holdout": 0.15}, "baseline": "logistic_regression",
                 "metric": "pr_auc",
                 "candidates": {"xgboost": {"params": {"n_estimators": 30, "max_depth": 3}}}},
    "monitoring": {"features": ["amount", "pair_txn_count_7d"]},
}


@pytest.fixture(scope="module")
def two(services, loaded, spec, tmp_path_factory):
    """(settings whose specs_dir holds fraud + pairs, the pairs spec) with both champions trained."""
    folder = tmp_path_factory.mktemp("specs")
    (folder / "fraud.yaml").symlink_to(spec._path)  # its custom feature code is found next to the original
    raw = yaml.safe_load(spec._path.read_text())
    (folder / "pairs.yaml").write_text(yaml.safe_dump({**PAIRS, "dataset": raw["dataset"]}))
    pairs = load_spec_file(folder / "pairs.yaml")
    for offset in range(DAYS):
        feature_day(pairs, FIRST_DAY + timedelta(days=offset), settings=services)
    champion_version(spec, services)
    # The gate is not under test here: whatever the second use case's first model scores, it is
    # made champion through the real alias move.
    trained = train(only(pairs, "xgboost"), end=END, reason="serving multi test", settings=services)
    if not trained.promoted:
        promotion.promote(pairs.model_name, trained.version, reason="serving multi test", actor="test",
                          settings=services)
    return services.model_copy(update={"specs_dir": folder}), pairs


def _rows(settings, n: int = 40) -> list[dict]:
    """Real (user, merchant, country) rows of the last day, and one that no entity knows."""
    day = storage.read_partition(zone="curated", dataset="transactions", ds=END.isoformat(), settings=settings)
    rows = day[["user_id", "merchant_id", "country"]].head(n).astype({"user_id": int, "merchant_id": int})
    return rows.to_dict("records") + [{"user_id": 10**12, "merchant_id": 3, "country": "ZZ"}]


def _assert_same_as_feast(store, spec, rows) -> None:
    reader = OnlineFeatures(store, spec)
    assert sorted(reader.join_keys) == ["country", "merchant_id", "user_id"]
    assert {v.entity: v.join_keys for v, _ in reader.views}["pair"] == ("user_id", "merchant_id")
    ours, misses = reader.frame(rows)
    theirs = features.online_features(store, spec, rows)[reader.columns]
    pd.testing.assert_frame_equal(ours.astype(object).where(ours.notna(), None),
                                  theirs.astype(object).where(theirs.notna(), None), check_dtype=False)
    assert misses["pair"][-1] and misses["country"][-1] and misses["user"][-1] and not misses["country"][0]
    assert ours["pair_txn_count_7d"].notna().sum() > 10, "some pairs are known"


def test_composite_and_string_keys_read_like_feast_on_sqlite(two):
    settings, pairs = two
    _assert_same_as_feast(features.feature_store(settings), pairs, _rows(settings))


def test_composite_and_string_keys_read_like_feast_on_redis(two):
    redis = pytest.importorskip("redis")
    settings, pairs = two
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    on_redis = settings.model_copy(update={
        "online_store": {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"},
        "home": settings.home / "redis-multi"})
    try:
        features.apply(pairs, on_redis)
        features.materialize(pairs, END, settings=on_redis)
        store = features.feature_store(on_redis)
        reader = OnlineFeatures(store, pairs)
        assert reader.redis and all(c.encoder.native for c in reader._reader._commands)
        _assert_same_as_feast(store, pairs, _rows(settings))
    finally:
        client.flushdb()


def test_one_server_serves_every_use_case_with_a_champion(two):
    settings, pairs = two
    server = ModelServer(settings, watch=False, log_predictions=False)
    try:
        assert sorted(server.predictors) == ["fraud", "pairs"] and server.ready
        assert server.handler("/predict") is None, "no bare alias when two use cases are served"
        pairs_txn = {k: v for k, v in txn(device="toaster").items() if k != "merchant_category"}
        status, body = server.handler("/pairs/predict")(json.dumps(pairs_txn).encode())
        assert status == 200, body
        scored = json.loads(body)
        assert scored["unknown"] == ["device"] and 0 <= scored["probability"] <= 1
        assert scored["transaction_id"] == "t-1" and scored["model_name"] == pairs.model_name
        status, body = server.handler("/fraud/predict_batch")(json.dumps([txn(), txn(user_id=3)]).encode())
        assert status == 200 and len(json.loads(body)) == 2
        # Each use case validates against its own generated schema: pairs reads no merchant category.
        status, body = server.handler("/pairs/predict")(json.dumps(txn()).encode())
        assert status == 422 and json.loads(body)["fields"] == ["merchant_category"]
        status, body = server.handler("/pairs/predict")(json.dumps(pairs_txn | {"amount": None}).encode())
        assert status == 422 and json.loads(body)["fields"] == ["amount"]
        from prometheus_client import REGISTRY, generate_latest

        text = generate_latest(REGISTRY).decode()
        assert has_series(text, "flywheel_predictions_total", use_case="pairs")
        assert has_series(text, "flywheel_feature_lookups_total", use_case="pairs", entity="country")
        assert has_series(text, "flywheel_feature_lookups_total", use_case="fraud", entity="user")
    finally:
        server.close()


def test_which_use_cases_a_server_serves_is_configuration(two):
    settings, _ = two
    server = ModelServer(settings.model_copy(update={"serving_use_cases": ["pairs"]}), watch=False,
                         log_predictions=False)
    try:
        assert list(server.predictors) == ["pairs"]
        assert server.handler("/predict") is not None and server.handler("/fraud/predict") is None
    finally:
        server.close()
    with pytest.raises(ServingError, match="nope"):
        ModelServer(settings.model_copy(update={"serving_use_cases": ["nope"]}), watch=False)


def test_a_use_case_without_a_champion_is_left_out_not_fatal(two, tmp_path):
    settings, _ = two
    (tmp_path / "fraud.yaml").symlink_to(settings.specs_dir / "fraud.yaml")
    raw = yaml.safe_load((settings.specs_dir / "pairs.yaml").read_text())
    (tmp_path / "untrained.yaml").write_text(yaml.safe_dump({**raw, "name": "untrained",
                                                             "model_name": "untrained-model"}))
    (tmp_path / "broken.yaml").write_text("name: broken\n")
    server = ModelServer(settings.model_copy(update={"specs_dir": tmp_path}), watch=False, log_predictions=False)
    try:
        assert list(server.predictors) == ["fraud"]
    finally:
        server.close()
    with pytest.raises(ServingError, match="untrained.*no champion"):
        ModelServer(settings.model_copy(update={"specs_dir": tmp_path, "serving_use_cases": ["untrained"]}))

