"""Incremental materialization into a real Redis (the production-like online store)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis

from flywheel.core import storage
from flywheel.features import store as features

from .conftest import DAYS, FIRST_DAY

pytestmark = pytest.mark.integration
REDIS_DB = 1  # this suite's own database on the shared Redis


@pytest.fixture(scope="module")
def redis_settings(services, loaded, spec):
    try:
        redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"a Redis server on 127.0.0.1:6379 is required by the production-like profile: {exc}")
    settings = services.model_copy(update={
        "online_store": {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"},
        "feast_project": "flywheel_datatest",
    })
    features.apply(spec, settings)
    features.reset_online_store(settings)
    yield settings
    features.reset_online_store(settings)


def test_each_interval_materializes_into_redis_and_records_freshness(redis_settings, spec):
    store = features.feature_store(redis_settings)
    for offset in (DAYS - 2, DAYS - 1):  # two successive intervals, in order
        day = FIRST_DAY + timedelta(days=offset)
        record = features.materialize(spec, day, settings=redis_settings)
        agg = storage.read_partition(zone="features", dataset="fraud/user", ds=day.isoformat(),
                                     settings=redis_settings)
        top = agg.sort_values("user_txn_count_7d", ascending=False).head(5)
        online = features.online_features(store, spec, [{"user_id": int(u), "merchant_id": 1} for u in top.user_id])
        assert online["user_txn_count_7d"].tolist() == top["user_txn_count_7d"].tolist()
        assert online["user_txn_count_24h"].tolist() == top["user_txn_count_24h"].tolist()
        assert record["online_store"] == "redis"
        saved = json.loads(storage.get_bytes("reports", f"feature-freshness/{spec.name}/ds={day}.json", settings=redis_settings))
        assert saved == record
        assert saved["views"]["fraud_user"]["feature_timestamp"].startswith((day + timedelta(days=1)).isoformat())
        assert saved["views"]["fraud_user"]["newest_event"] < saved["views"]["fraud_user"]["feature_timestamp"]
    keys = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).dbsize()
    assert keys > 0
