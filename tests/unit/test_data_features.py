from datetime import date

import pandas as pd
import pytest

from flywheel.features.featurize import (
    ENTITY_DEFAULTS,
    MODEL_FEATURES,
    feature_timestamp,
    merchant_aggregates,
    user_aggregates,
)

pytestmark = pytest.mark.unit
DAY = date(2026, 1, 10)


def _rows(*rows: tuple[str, int, int, float, int]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"event_timestamp": pd.Timestamp(ts, tz="UTC"), "user_id": u, "merchant_id": m, "amount": a,
          "is_fraud": f, "country": "US"} for ts, u, m, a, f in rows])


def test_windows_are_relative_to_the_interval_end():
    frame = _rows(("2026-01-10 23:30", 1, 1, 10.0, 0), ("2026-01-10 12:00", 1, 1, 20.0, 0),
                  ("2026-01-05 08:00", 1, 1, 30.0, 0), ("2026-01-01 08:00", 1, 1, 999.0, 0),
                  ("2026-01-11 00:00", 1, 1, 5000.0, 0))  # after the interval: never counted
    user = user_aggregates(frame, DAY).iloc[0]
    assert (user.user_txn_count_1h, user.user_txn_count_24h, user.user_txn_count_7d) == (1, 2, 3)
    assert user.user_amount_sum_24h == 30.0 and user.user_amount_max_7d == 30.0
    assert user.user_seconds_since_last_txn == 1800.0
    assert user.event_timestamp == pd.Timestamp(feature_timestamp(DAY))


def test_merchant_fraud_rate_only_uses_labels_older_than_the_lag():
    frame = _rows(("2026-01-10 10:00", 1, 7, 10.0, 1), ("2026-01-10 11:00", 2, 7, 10.0, 1),  # within the lag
                  ("2026-01-08 10:00", 3, 7, 10.0, 0), ("2026-01-08 11:00", 4, 7, 10.0, 1))
    lagged = merchant_aggregates(frame, DAY, label="is_fraud", label_lag_days=1).iloc[0]
    assert lagged.merchant_fraud_rate_7d == 0.5 and lagged.merchant_txn_count_7d == 4
    immediate = merchant_aggregates(frame, DAY, label="is_fraud", label_lag_days=0).iloc[0]
    assert immediate.merchant_fraud_rate_7d == 0.75


def test_every_entity_feature_is_a_model_input_with_a_default():
    for name in ENTITY_DEFAULTS:
        assert name in MODEL_FEATURES or name == "user_top_country"
