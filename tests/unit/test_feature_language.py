"""The spec's feature language, compiled: SQL aggregates, the one featurizer, and the proof that
models/fraud.yaml computes exactly the values of the hand-written fraud features it replaced."""

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from examples.fraud import handwritten_features as ref
from examples.fraud.generator import generate_day
from flywheel.core.spec import PipelineSpec, SpecError, load_spec_file
from flywheel.features.aggregates import entity_aggregates, feature_timestamp
from flywheel.features.featurizer import featurizer_for, label_values

pytestmark = pytest.mark.unit
DAY = date(2026, 1, 10)


@pytest.fixture(scope="module")
def window(spec_module) -> pd.DataFrame:
    days = [generate_day(DAY - timedelta(days=i), spec_module.generator, bad_records=False) for i in range(9)]
    return pd.concat(days, ignore_index=True)


@pytest.fixture(scope="module")
def spec_module() -> PipelineSpec:
    from pathlib import Path

    return load_spec_file(Path(__file__).resolve().parents[2] / "models" / "fraud.yaml")


def test_fraud_aggregates_equal_the_hand_written_sql(spec_module, window):
    users = entity_aggregates(spec_module, "user", window, DAY)
    merchants = entity_aggregates(spec_module, "merchant", window, DAY)
    pd.testing.assert_frame_equal(users, ref.user_aggregates(window, DAY)[users.columns], check_exact=True)
    old = ref.merchant_aggregates(window, DAY, label="is_fraud", label_lag_days=1)
    pd.testing.assert_frame_equal(merchants, old[merchants.columns], check_exact=True)
    assert set(users.columns) - {"user_id", "event_timestamp"} == set(ref.USER_FEATURES)
    assert set(merchants.columns) - {"merchant_id", "event_timestamp"} == set(ref.MERCHANT_FEATURES)


def test_fraud_model_matrix_equals_the_hand_written_featurizer(spec_module, window):
    rows = generate_day(DAY + timedelta(days=1), spec_module.generator, bad_records=False)
    users = entity_aggregates(spec_module, "user", window, DAY)
    merchants = entity_aggregates(spec_module, "merchant", window, DAY)
    joined = rows.merge(users.drop(columns="event_timestamp"), on="user_id", how="left") \
                 .merge(merchants.drop(columns="event_timestamp"), on="merchant_id", how="left")
    assert joined["user_txn_count_7d"].isna().any()  # some entities unseen: the defaults path runs too
    new = featurizer_for(spec_module).frame(joined)
    old = ref.model_matrix(joined, joined[[c for c in ref.ENTITY_DEFAULTS if c in joined.columns]])
    pd.testing.assert_frame_equal(new[ref.MODEL_FEATURES], old, check_exact=True)
    assert sorted(new.columns) == sorted(ref.MODEL_FEATURES)


def test_serving_columns_give_the_training_values(spec_module, window):
    """The serving call (lists of request values + aggregate arrays) equals the frame call."""
    rows = generate_day(DAY + timedelta(days=1), spec_module.generator, bad_records=False).head(50)
    users = entity_aggregates(spec_module, "user", window, DAY).set_index("user_id")
    fz = featurizer_for(spec_module)
    records = rows.to_dict("records")
    columns = {c: [r[c] for r in records] for c in fz.request_columns}
    columns["event_timestamp"] = [r["event_timestamp"].to_pydatetime() for r in records]
    aligned = users.reindex(rows["user_id"])
    entities = {c: aligned[c].to_numpy() for c in users.columns if c != "event_timestamp"}
    served = fz.transform(columns, entities).matrix
    trained = fz.frame(rows.assign(**{c: aligned[c].to_numpy() for c in entities})).to_numpy()
    np.testing.assert_array_equal(served, trained)


def test_unknown_categories_get_the_reserved_code_and_a_flag(spec_module):
    fz = featurizer_for(spec_module)
    columns = {"amount": [10.0, 10.0], "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-01"], utc=True),
               "merchant_category": ["grocery", "casino"], "device": ["mobile", None], "country": ["US", "US"],
               "user_id": [1, 2], "merchant_id": [1, 2]}
    out = fz.transform(columns, {})
    codes = out.frame()["merchant_category_code"].tolist()
    assert codes == [0.0, -1.0]
    assert out.unknown["merchant_category"].tolist() == [False, True]
    assert out.unknown["device"].tolist() == [False, False]  # null is missing, not unknown


def _spec(tmp_path, features: dict, **extra) -> PipelineSpec:
    import yaml

    body = {
        "name": "rides", "model_name": "rides", "owner": "t", "task": "regression",
        "label": {"expr": "minutes * 60", "name": "seconds"},
        "dataset": {"name": "rides", "source": "{home}/x/ds={ds}", "timestamp": "ts", "key": ["city", "n"],
                    "contract": {"columns": {"city": {"type": "string"}, "zone": {"type": "int"},
                                             "n": {"type": "int"}, "minutes": {"type": "float"},
                                             "kind": {"type": "string", "allowed": ["a", "b"]},
                                             "ts": {"type": "datetime"}}}},
        "features": features,
        "training": {"split": {"train": 0.7, "validation": 0.15, "holdout": 0.15}},
        "monitoring": {"features": []},
        **extra,
    }
    path = tmp_path / "rides.yaml"
    path.write_text(yaml.safe_dump(body))
    return load_spec_file(path)


def _rides() -> pd.DataFrame:
    ts = pd.to_datetime(["2026-01-10 23:00", "2026-01-10 01:00", "2026-01-08 12:00", "2026-01-09 12:00",
                         "2026-01-10 22:00"], utc=True)
    return pd.DataFrame({"city": ["x", "x", "x", "y", "x"], "zone": [1, 1, 2, 1, 1], "n": range(5),
                         "minutes": [10.0, 20.0, 30.0, None, 40.0], "kind": ["a", "b", "a", "a", "b"], "ts": ts})


def test_every_aggregation_kind_over_a_composite_key(tmp_path):
    spec = _spec(tmp_path, {"entities": {"area": {"keys": ["city", "zone"], "aggregations": {
        "n_24h": {"fn": "count", "window": "24h"}, "n_7d": {"fn": "count", "window": "7d"},
        "sum_7d": {"fn": "sum", "column": "minutes", "window": "7d"},
        "mean_7d": {"fn": "mean", "column": "minutes", "window": "7d"},
        "min_7d": {"fn": "min", "column": "minutes", "window": "7d"},
        "max_2h": {"fn": "max", "column": "minutes", "window": "2h"},
        "std_7d": {"fn": "std", "column": "minutes", "window": "7d"},
        "kinds_7d": {"fn": "distinct_count", "column": "kind", "window": "7d"},
        "last_kind": {"fn": "last", "column": "kind", "window": "7d"},
        "top_kind": {"fn": "mode", "column": "kind", "window": "7d"},
        "share_b": {"fn": "share", "where": "kind = 'b'", "window": "7d"},
        "share_b_late": {"fn": "share", "where": "kind = 'b'", "window": "7d", "delay": "12h"},
        "long_24h": {"fn": "count", "window": "24h", "where": "minutes > 15"},
        "since_last": {"fn": "seconds_since_last"},
        "p90": {"fn": "sql", "expr": "quantile_cont(minutes, 0.9)", "window": "7d"},
    }}}})
    out = entity_aggregates(spec, "area", _rides(), DAY).set_index(["city", "zone"])
    x1 = out.loc[("x", 1)]
    assert (x1.n_24h, x1.n_7d, x1.sum_7d, x1.min_7d, x1.max_2h, x1.kinds_7d) == (3, 3, 70.0, 10.0, 40.0, 2)
    assert x1.mean_7d == pytest.approx(70 / 3) and x1.std_7d == pytest.approx(np.std([10, 20, 40], ddof=1))
    assert x1.last_kind == "a" and x1.top_kind == "b" and x1.share_b == pytest.approx(2 / 3)
    assert x1.share_b_late == 1.0  # only the 01:00 ride is older than 12 h
    assert x1.long_24h == 2 and x1.since_last == 3600.0 and x1.p90 == pytest.approx(36.0)
    assert out.loc[("y", 1)].n_7d == 1 and pd.isna(out.loc[("y", 1)].mean_7d)
    assert (out["event_timestamp"] == pd.Timestamp(feature_timestamp(DAY))).all()
    assert str(out["n_7d"].dtype) == "int64"


def test_request_feature_kinds_and_a_label_expression(tmp_path):
    spec = _spec(tmp_path, {
        "entities": {"city": {"keys": ["city"], "aggregations": {"mean_7d": {"fn": "mean", "column": "minutes",
                                                                             "window": "7d"}}}},
        "request": {"m": {"fn": "value", "column": "minutes"}, "lm": {"fn": "log1p", "column": "minutes"},
                    "h": {"fn": "hour"}, "dow": {"fn": "day_of_week"}, "we": {"fn": "is_weekend"},
                    "k": {"fn": "category", "column": "kind"}, "r": {"fn": "ratio", "column": "minutes",
                                                                        "other": "mean_7d"},
                    "d": {"fn": "difference", "column": "minutes", "other": "mean_7d"},
                    "miss": {"fn": "missing", "column": "minutes"}}})
    rows = _rides().assign(mean_7d=[20.0, 20.0, 0.0, np.nan, 20.0])
    out = featurizer_for(spec).frame(rows)
    first = out.iloc[0]
    assert (first.m, first.h, first.dow, first.we, first.k, first.r, first.d) == (10.0, 23, 5, 1, 0, 0.5, -10.0)
    assert first.lm == pytest.approx(np.log1p(10.0))
    assert np.isnan(out.iloc[2].r) and out.iloc[3].miss == 1.0 and np.isnan(out.iloc[3].m)
    assert label_values(spec, rows).tolist()[:3] == [600.0, 1200.0, 1800.0]
    assert np.isnan(label_values(spec, rows).iloc[3])


def test_a_python_feature_from_the_use_case_folder(tmp_path):
    (tmp_path / "custom.py").write_text("def double(x):\n    return x * 2\n")
    spec = _spec(tmp_path, {"entities": {"city": {"keys": ["city"], "aggregations": {"n": {"fn": "count",
                                                                                          "window": "1d"}}}},
                            "request": {"twice": {"fn": "python", "function": "custom.py:double",
                                                  "inputs": ["minutes"]}}})
    assert featurizer_for(spec).frame(_rides().head(2))["twice"].tolist() == [20.0, 40.0]


@pytest.mark.parametrize(("features", "message"), [
    ({"entities": {"c": {"keys": ["nope"]}}}, "features.entities.c.keys: 'nope' is not in the dataset contract"),
    ({"entities": {"c": {"keys": ["city"], "aggregations": {"s": {"fn": "sum", "window": "7d"}}}}}, "needs 'column'"),
    ({"entities": {"c": {"keys": ["city"], "aggregations": {"s": {"fn": "count", "window": "7 days"}}}}},
     "window"),
    ({"entities": {"c": {"keys": ["city"]}}, "request": {"r": {"fn": "ratio", "column": "minutes",
                                                               "other": "typo"}}}, "other: 'typo'"),
    ({"entities": {"c": {"keys": ["city"]}}, "request": {"k": {"fn": "category", "column": "city"}}},
     "allowed"),
])
def test_a_wrong_feature_definition_is_a_spec_error_naming_the_field(tmp_path, features, message):
    with pytest.raises(SpecError, match="rides.yaml") as err:
        _spec(tmp_path, features)
    assert message in str(err.value)
