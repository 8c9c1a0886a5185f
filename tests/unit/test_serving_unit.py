"""Serving pieces that need no services: request validation, the 422 body, value decoding, the
column-wise response, array scoring equal to DataFrame scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from flywheel.serving.predictor import MAX_BATCH, Transaction, TransactionBatch, field_paths, unprocessable

pytestmark = pytest.mark.unit

GOOD = {"user_id": 1, "merchant_id": 2, "amount": 10.0, "event_timestamp": "2026-01-09T10:00:00Z",
        "merchant_category": "grocery", "country": "US"}


def test_naive_timestamps_are_utc_and_out_of_range_ones_are_rejected_by_name():
    assert Transaction(**GOOD | {"event_timestamp": "2026-01-09T10:00:00"}).event_timestamp.tzinfo is not None
    for bad in ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z"):
        with pytest.raises(ValidationError, match="event_timestamp"):
            Transaction(**GOOD | {"event_timestamp": bad})


@pytest.mark.parametrize(("field", "value"), [("amount", 0), ("amount", 2e6), ("country", "U"),
                                              ("device", "fridge"), ("user_id", -1), ("extra", 1)])
def test_invalid_fields_are_named(field, value):
    with pytest.raises(ValidationError) as info:
        Transaction(**GOOD | {field: value})
    assert field_paths(info.value.errors(include_context=False, include_input=False)) == [field]


def test_batch_is_bounded():
    adapter = TypeAdapter(TransactionBatch)
    assert len(adapter.validate_python([GOOD] * 3)) == 3
    with pytest.raises(ValidationError):
        adapter.validate_python([])
    with pytest.raises(ValidationError):
        adapter.validate_python([GOOD] * (MAX_BATCH + 1))


def test_validation_errors_become_a_422_body_naming_row_and_field():
    rows = [GOOD, GOOD, GOOD, GOOD | {"amount": 0}, {k: v for k, v in GOOD.items() if k != "user_id"}]
    with pytest.raises(ValidationError) as info:
        TypeAdapter(TransactionBatch).validate_json(json.dumps(rows))
    body = json.loads(unprocessable(info.value))
    assert body["fields"] == ["3.amount", "4.user_id"]
    assert body["error"] == "invalid field(s): 3.amount, 4.user_id"
    assert [d["loc"] for d in body["detail"]] == [[3, "amount"], [4, "user_id"]]
    # Broken JSON names no field: the parser's message is kept.
    with pytest.raises(ValidationError) as info:
        Transaction.model_validate_json(b"{not json")
    broken = json.loads(unprocessable(info.value))
    assert broken["fields"] == [] and "JSON" in broken["error"]


def test_online_values_decode_like_feast_protobuf():
    from feast.protos.feast.types.Value_pb2 import Value

    from flywheel.serving.predictor import _decode_values, _python

    protos = [Value(double_val=1.5), Value(double_val=0.0), Value(double_val=-3e300), Value(int64_val=0),
              Value(int64_val=127), Value(int64_val=128), Value(int64_val=-5), Value(int64_val=2**62),
              Value(string_val="US"), Value(string_val=""), Value(bool_val=True), Value()]
    raw = [p.SerializeToString() for p in protos] + [None, b""]
    assert _decode_values(raw) == [_python(p) for p in protos] + [None, None]
    assert _decode_values(raw) == [_python(p) for p in protos] + [None, None]  # remembered values
    doubles = [Value(double_val=float(i) / 3).SerializeToString() for i in range(20)] + [None, b""]
    many = _decode_values(doubles)  # a double column: decoded in one numpy call
    assert many[:20].tolist() == [i / 3 for i in range(20)] and np.isnan(many[20:]).all()


def test_scores_serialize_like_the_prediction_model():
    from flywheel.serving.predictor import Prediction, Scores, request_ids
    from flywheel.training.registry import LoadedModel

    model = LoadedModel(name="m", version="3", family="xgboost", model=None, threshold=0.5, features=[],
                        scorer=None)
    txns = [Transaction(**GOOD | {"transaction_id": f"t{i}"}) for i in range(3)]
    misses = {"user": np.array([False, True, True]), "merchant": np.array([False, False, True])}
    ids = request_ids(3)
    assert len(set(ids)) == 3 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    scores = Scores(txns, np.zeros((3, 1)), np.array([0.1, 0.5, 0.9]), misses, ids, model)
    expected = [Prediction(transaction_id=f"t{i}", request_id=ids[i], fraud_probability=p, is_fraud=p >= 0.5,
                           threshold=0.5, model_name="m", model_version="3", unknown_entities=u,
                           defaults_used=bool(u))
                for i, (p, u) in enumerate(zip([0.1, 0.5, 0.9], [[], ["user"], ["user", "merchant"]], strict=True))]
    assert json.loads(scores.to_json()) == [json.loads(p.model_dump_json()) for p in expected]
    assert json.loads(scores.to_json(single=True)) == json.loads(expected[0].model_dump_json())
    assert scores.predictions() == expected


def test_xgboost_array_scoring_equals_dataframe_scoring():
    import pandas as pd
    from xgboost import XGBClassifier

    from flywheel.training.families import get
    from flywheel.training.registry import LoadedModel

    rng = np.random.default_rng(5)
    columns = ["a", "b", "c", "d"]
    x = pd.DataFrame(rng.normal(size=(400, 4)), columns=columns)
    x.loc[rng.random(400) < 0.1, "b"] = np.nan
    y = (x["a"] + rng.normal(size=400) > 0).astype(int)
    model = XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)
    family = get("xgboost")
    loaded = LoadedModel(name="m", version="1", family="xgboost", model=model, threshold=0.5,
                         features=columns, scorer=family)
    # The request matrix has more columns, in another order: the model still gets its own.
    wide = pd.concat([x, pd.DataFrame({"z": rng.normal(size=400)})], axis=1)[["z", "d", "a", "b", "c"]]
    expected = loaded.predict_proba(wide.rename(columns=str))
    got = loaded.predict_proba_array(wide.to_numpy(), list(wide.columns))
    np.testing.assert_array_equal(got, np.asarray(expected))


def test_serving_matrix_equals_the_training_featurisation():
    """The request path's numpy featurisation must stay identical to featurize.model_matrix."""
    import numpy as np
    import pandas as pd
    from flywheel.features.featurize import model_matrix

    from examples.fraud.generator import CATEGORIES
    from flywheel.serving.predictor import serving_matrix

    rng = np.random.default_rng(3)
    n = 300
    txns = [Transaction(user_id=int(rng.integers(0, 100)), merchant_id=int(rng.integers(0, 50)),
                        amount=float(np.round(rng.lognormal(3, 1.5), 2)) + 0.01,
                        event_timestamp=pd.Timestamp("2026-01-09", tz="UTC") + pd.Timedelta(minutes=int(m)),
                        merchant_category=str(rng.choice([*CATEGORIES, "unheard-of"])),
                        country=str(rng.choice(["US", "GB", "NG"])),
                        device=str(rng.choice(["mobile", "desktop", "pos", "unknown"])))
            for m in rng.integers(0, 3 * 24 * 60, n)]
    known = rng.random(n) > 0.2

    def maybe(values):
        return [v if k else None for v, k in zip(values, known, strict=True)]

    online = {
        "user_txn_count_7d": maybe(rng.integers(1, 40, n).tolist()),
        "user_amount_mean_7d": maybe(rng.choice([0.0, 12.5, 80.0, 300.0], n).tolist()),
        "user_amount_max_7d": maybe(rng.lognormal(4, 1, n).tolist()),
        "user_top_country": maybe(rng.choice(["US", "GB"], n).tolist()),
        "merchant_txn_count_7d": rng.integers(1, 400, n).tolist(),
        "merchant_amount_mean_7d": rng.lognormal(3, 1, n).tolist(),
        "merchant_fraud_rate_7d": [None if i % 7 == 0 else float(r) for i, r in enumerate(rng.random(n))],
    }
    frame = pd.DataFrame([t.model_dump() for t in txns])
    expected = model_matrix(frame, pd.DataFrame(online))
    pd.testing.assert_frame_equal(serving_matrix(txns, online), expected)
    # Columns as OnlineFeatures returns them for a batch: float arrays with NaN where missing.
    as_arrays = {k: np.array([np.nan if v is None else v for v in col], dtype="float64")
                 if k != "user_top_country" else col for k, col in online.items()}
    pd.testing.assert_frame_equal(serving_matrix(txns, as_arrays), expected)
    one = serving_matrix(txns[:1], {k: v[:1] for k, v in online.items()})
    pd.testing.assert_frame_equal(one, expected.iloc[:1])
