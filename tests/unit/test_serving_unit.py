"""Serving pieces that need no services: request validation, the 422 body, thread/GC tuning."""

from __future__ import annotations

import json

import pytest
from pydantic import TypeAdapter, ValidationError

from flywheel.serving import MAX_BATCH, Transaction, TransactionBatch
from serving.service import _field_paths, _unprocessable

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
    assert _field_paths(info.value.errors(include_context=False, include_input=False)) == [field]


def test_batch_is_bounded():
    adapter = TypeAdapter(TransactionBatch)
    assert len(adapter.validate_python([GOOD] * 3)) == 3
    with pytest.raises(ValidationError):
        adapter.validate_python([])
    with pytest.raises(ValidationError):
        adapter.validate_python([GOOD] * (MAX_BATCH + 1))


def test_bentoml_400_body_becomes_a_422_body_naming_the_fields():
    detail = [{"type": "greater_than_equal", "loc": ["root", 3, "amount"], "msg": "too small"},
              {"type": "missing", "loc": ["user_id"], "msg": "Field required"}]
    body = json.loads(_unprocessable(json.dumps({"error": "2 validation errors", "detail": detail}).encode()))
    assert body["fields"] == ["3.amount", "user_id"]
    assert body["error"] == "invalid field(s): 3.amount, user_id" and body["detail"] == detail
    # BentoML's BadInput (e.g. broken JSON) carries no field list: the message is kept.
    broken = json.loads(_unprocessable(json.dumps([{"error": "Expecting value: line 1"}]).encode()))
    assert broken == {"error": "Expecting value: line 1", "fields": [], "detail": []}
    assert json.loads(_unprocessable(b"not json"))["error"] == "not json"


def test_serving_matrix_equals_the_training_featurisation():
    """The request path's numpy featurisation must stay identical to featurize.model_matrix."""
    import numpy as np
    import pandas as pd

    from flywheel.datagen import CATEGORIES
    from flywheel.featurize import model_matrix
    from flywheel.serving import serving_matrix

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
    one = serving_matrix(txns[:1], {k: v[:1] for k, v in online.items()})
    pd.testing.assert_frame_equal(one, expected.iloc[:1])
