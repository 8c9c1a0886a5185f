from datetime import date

import numpy as np
import pandas as pd
import pytest

from flywheel.datagen import BAD_KINDS, DriftKind, generate_day, write_landing
from flywheel.featurize import MODEL_FEATURES, feature_timestamp, model_matrix, user_aggregates

pytestmark = pytest.mark.unit
DAY = date(2026, 1, 5)


def test_generator_is_seeded_and_realistic(spec):
    a = generate_day(DAY, spec.generator)
    b = generate_day(DAY, spec.generator)
    pd.testing.assert_frame_equal(a, b)
    days = [generate_day(date(2026, 1, d), spec.generator, bad_records=False) for d in range(1, 11)]
    rate = pd.concat(days).is_fraud.mean()
    assert 0.01 <= rate <= 0.02
    assert a["event_timestamp"].dt.date.eq(DAY).mean() > 0.99


def test_bad_records_are_injected_of_every_kind(spec):
    df = generate_day(DAY, spec.generator)
    assert df["user_id"].isna().sum() >= 1
    assert (df["amount"] < 0).sum() >= 1
    assert df["transaction_id"].duplicated().sum() >= 1
    assert (~df["merchant_category"].isin(spec.dataset.contract.columns["merchant_category"].allowed)).sum() >= 1
    assert len(BAD_KINDS) == 5


def test_drift_shifts_amounts(spec):
    normal = generate_day(DAY, spec.generator, bad_records=False)
    drifted = generate_day(DAY, spec.generator, drift=DriftKind.AMOUNT_SHIFT, bad_records=False)
    assert drifted["amount"].median() > 2 * normal["amount"].median()


def test_write_landing_is_idempotent(tmp_path, spec):
    first = write_landing(tmp_path, DAY, 2, spec.generator)
    content = [p.read_bytes() for p in first]
    second = write_landing(tmp_path, DAY, 2, spec.generator)
    assert first == second and content == [p.read_bytes() for p in second]


def test_aggregates_are_stamped_when_the_day_closes(spec):
    df = generate_day(DAY, spec.generator, bad_records=False)
    agg = user_aggregates(df, DAY)
    assert (agg["event_timestamp"] == pd.Timestamp(feature_timestamp(DAY))).all()
    assert agg["user_txn_count_7d"].sum() == len(df)
    assert (agg["user_txn_count_1h"] <= agg["user_txn_count_24h"]).all()


def test_model_matrix_handles_unknown_entities(spec):
    df = generate_day(DAY, spec.generator, bad_records=False).head(3)
    online = pd.DataFrame({"user_txn_count_7d": [5, None, None], "user_amount_mean_7d": [10.0, None, None],
                           "user_top_country": ["US", None, None]})
    matrix = model_matrix(df, online)
    assert list(matrix.columns) == MODEL_FEATURES
    assert matrix["amount_to_user_mean"].iloc[0] == pytest.approx(df["amount"].iloc[0] / 10.0)
    assert np.isnan(matrix["amount_to_user_mean"].iloc[1])
    assert matrix["is_foreign"].iloc[1] == 0
