"""Online features as served: the one-round-trip reader agrees with Feast's own
``get_online_features`` on SQLite and on Redis (DB 5), and the prediction log survives
an object store that is down (rows retried, losses counted, requests unaffected)."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from flywheel.core import layout, storage
from flywheel.features import store as features
from flywheel.serving.online import OnlineFeatures
from flywheel.serving.predictor import Predictor

from .serving_support import END, champion_version, txn

pytestmark = pytest.mark.integration
REDIS_DB = int(os.environ.get("FLYWHEEL_TEST_REDIS_DB", "5"))


def _rows(n: int = 60) -> list[dict[str, int]]:
    rows = [{"user_id": u, "merchant_id": u % 40} for u in range(n)]
    return rows + [{"user_id": 10**12, "merchant_id": 3}, {"user_id": 12, "merchant_id": 2**62}]


def _assert_same_as_feast(store, spec, rows) -> None:
    reader = OnlineFeatures(store, spec)
    ours, misses = reader.frame(rows)
    theirs = features.online_features(store, spec, rows)[reader.columns]
    pd.testing.assert_frame_equal(ours.astype(object).where(ours.notna(), None),
                                  theirs.astype(object).where(theirs.notna(), None), check_dtype=False)
    assert misses["user"].tolist() == theirs["user_txn_count_7d"].isna().tolist()
    assert misses["user"][-2] and not misses["user"][-1] and misses["merchant"][-1]
    assert ours["user_txn_count_7d"].notna().sum() > 10, "some users are known"


def test_reader_matches_feast_on_sqlite(services, loaded, spec):
    _assert_same_as_feast(features.feature_store(services), spec, _rows())


@pytest.fixture(scope="module")
def redis_settings(services, loaded, spec):
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis on 127.0.0.1:6379 is part of the production-like profile and is not running: {exc}")
    client.flushdb()  # DB reserved for these tests
    settings = services.model_copy(update={
        "online_store": {"type": "redis", "connection_string": f"127.0.0.1:6379,db={REDIS_DB}"},
        "home": services.home / "redis-profile"})
    features.apply(spec, settings)
    features.materialize(spec, END, settings=settings)
    yield settings
    client.flushdb()


def test_reader_matches_feast_on_redis_in_one_round_trip(redis_settings, spec):
    store = features.feature_store(redis_settings)
    _assert_same_as_feast(store, spec, _rows())
    reader = OnlineFeatures(store, spec)
    assert reader.redis
    client = reader.online._get_client(reader.config.online_store)
    before = client.info("stats")["total_commands_processed"]
    rows = _rows(200)
    reader.fetch(rows)
    after = client.info("stats")["total_commands_processed"]
    # One pipeline over two views, each distinct entity once (202 rows: 201 users, 41 merchants):
    # 242 HMGETs + the INFO call, sent in one round trip.
    distinct = len({r["user_id"] for r in rows}) + len({r["merchant_id"] for r in rows})
    assert distinct == 242 and after - before == distinct + 1


def test_redis_reader_reconnects_when_its_pooled_connection_was_dropped(redis_settings, spec):
    import redis

    reader = OnlineFeatures(features.feature_store(redis_settings), spec)
    before, _ = reader.frame(_rows(5))
    pool = reader.online._get_client(reader.config.online_store).connection_pool
    conn = pool.get_connection()
    conn.send_command("CLIENT", "ID")
    own_id = conn.read_response()
    pool.release(conn)
    # Kill only this reader's own connection (the Redis server is shared with other suites).
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).execute_command("CLIENT", "KILL", "ID", own_id)
    after, _ = reader.frame(_rows(5))  # the stale connection is replaced, the read retried once
    pd.testing.assert_frame_equal(before, after)


def _predictor_with_store_down(services, spec, tmp_path, **settings):
    """A predictor whose prediction log writes to a closed port: the object store is down."""
    champion_version(spec, services)
    quiet = services.model_copy(update={"prediction_flush_s": 3600, "prediction_spool_dir": tmp_path / "spool",
                                        **settings})
    predictor = Predictor(spec, quiet, watch=False)
    down = quiet.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:9"})
    return predictor, down


def test_predictions_survive_a_down_object_store_and_logs_are_retried(services, loaded, spec, tmp_path):
    predictor, down = _predictor_with_store_down(services, spec, tmp_path)
    logger = predictor.logger
    logger._settings = down
    try:
        batch = [predictor.schemas.request(**txn(transaction_id=f"down-{i}", user_id=i)) for i in range(30)]
        scored = predictor.score(batch).records()  # the request path never touches the store
        assert len(scored) == 30
        assert logger.flush() == 0
        assert logger.failed_flushes == 1 and logger.written == 0
        assert len([p for p in (tmp_path / "spool").rglob("*.seg") if p.stat().st_size]) == 1, \
            "the rows wait in one closed segment on disk"
        logger._settings = services  # the store is back
        assert logger.flush() == 30
        assert logger.flush() == 0, "uploaded once: the segment is gone"
        assert logger.rejected == logger.dropped == 0 and logger.spool.disk_bytes == 0
    finally:
        predictor.close()
    keys = storage.list_keys("predictions", layout.prediction_prefix(spec.name, END), settings=services)
    assert keys
    from flywheel.monitoring.drift import load_predictions

    logged = load_predictions(spec, start=END, end=END, settings=services).set_index("request_id")
    ours = logged.loc[[p["request_id"] for p in scored]]
    assert ours["probability"].tolist() == [p["probability"] for p in scored]
    assert ours["transaction_id"].tolist() == [f"down-{i}" for i in range(30)]
    assert ours["user_id"].tolist() == list(range(30)) and ours["amount"].eq(42.5).all()
    assert str(ours["event_timestamp"].iloc[0].date()) == END.isoformat()


@pytest.mark.parametrize("when_full", ["reject", "drop"])
def test_a_full_spool_refuses_requests_or_counts_them_never_silent(services, loaded, spec, tmp_path, when_full):
    from flywheel.serving.prediction_log import PredictionLogUnavailable

    predictor, down = _predictor_with_store_down(services, spec, tmp_path, prediction_spool_max_bytes=1 << 20,
                                                 prediction_spool_full=when_full)
    logger = predictor.logger
    logger._settings = down
    rows = [predictor.schemas.request(**txn(transaction_id=f"full-{i}", user_id=i)) for i in range(50)]
    try:
        accepted = 0
        for _ in range(200):  # ~30 KiB a request: the 1 MiB spool fills within ~35
            try:
                predictor.score(rows)
            except PredictionLogUnavailable as exc:
                assert when_full == "reject" and "cannot keep this request" in str(exc)
                break
            if logger.dropped:
                break
            accepted += len(rows)
        refused = logger.rejected if when_full == "reject" else logger.dropped
        assert refused == len(rows) and accepted > 0
        assert logger.flush() == 0 and logger.failed_flushes == 1  # the store is still down
        logger._settings = services
        assert logger.flush() == accepted, "every row the spool took is uploaded"
        predictor.score(rows)  # room again
    finally:
        predictor.close()
