"""Serving pieces that need no services: the request/response schemas generated from a spec (fraud,
and a regression/multiclass spec with composite string keys), the 422 body, Feast's entity-key
encoding for any keys, value decoding, the column-wise response per task, the route table and
the prediction log's frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from flywheel.core.spec import PipelineSpec, ServingSpec, load_spec_file
from flywheel.features.featurizer import featurizer_for
from flywheel.serving.routes import field_paths, unprocessable
from flywheel.serving.schemas import MAX_BATCH, RouteSchemas, SchemaError, route_schemas

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
GOOD = {"user_id": 1, "merchant_id": 2, "amount": 10.0, "event_timestamp": "2026-01-09T10:00:00Z",
        "merchant_category": "grocery", "country": "US", "device": "pos"}

# A second use case in the spec language: composite string entity keys, a composite dataset key,
# no Python; the task is parametrised.
ROUTES_SPEC = """
name: routes
model_name: routes-model
owner: test
dataset:
  name: legs
  source: "{home}/landing/legs/ds={ds}"
  timestamp: departed_at
  key: [carrier, flight, departed_at]
  contract:
    columns:
      carrier: {type: string, nullable: false, allowed: [AA, DL, UA]}
      flight: {type: int, nullable: false, min: 1, max: 9999}
      origin: {type: string, nullable: false}
      dest: {type: string, nullable: false}
      departed_at: {type: datetime, nullable: false}
      distance: {type: float, nullable: true, min: 0}
      delay: {type: float, nullable: true}
      outcome: {type: string, nullable: true, allowed: [early, on_time, late]}
task: TASK
label: LABEL
features:
  entities:
    route:
      keys: [origin, dest]
      aggregations:
        route_legs_7d: {fn: count, window: 7d}
        route_delay_mean_7d: {fn: mean, column: delay, window: 7d}
  request:
    distance: {fn: value, column: distance}
    carrier_code: {fn: category, column: carrier}
    hour: {fn: hour}
    distance_missing: {fn: missing, column: distance}
training:
  split: {train: 0.7, validation: 0.15, holdout: 0.15}
  baseline: xgboost
monitoring:
  features: [distance, route_legs_7d]
"""


def routes_spec(task: str = "regression") -> PipelineSpec:
    label = {"regression": "delay", "multiclass": "outcome"}[task]
    raw = yaml.safe_load(ROUTES_SPEC.replace("TASK", task).replace("LABEL", label))
    return PipelineSpec.model_validate(raw)


@pytest.fixture(scope="module")
def fraud() -> PipelineSpec:
    return load_spec_file(ROOT / "models" / "fraud.yaml")


@pytest.fixture(scope="module")
def schemas(fraud) -> RouteSchemas:
    return route_schemas(fraud, featurizer_for(fraud).request_columns)


@pytest.fixture(scope="module")
def reject(fraud) -> RouteSchemas:
    """Fraud's schemas with `serving: {out_of_contract: reject}`."""
    spec = fraud.model_copy(update={"serving": ServingSpec(out_of_contract="reject")})
    return route_schemas(spec, featurizer_for(spec).request_columns)


def test_fraud_request_comes_from_the_contract(schemas):
    row = schemas.request.model_validate(GOOD)
    assert row.event_timestamp.tzinfo is not None and row.transaction_id is None
    assert schemas.request.model_validate(GOOD | {"event_timestamp": "2026-01-09T10:00:00"}).event_timestamp.tzinfo
    assert schemas.id_columns == ("transaction_id",)
    fields = set(schemas.request.model_fields)
    assert fields == set(GOOD) | {"transaction_id"}, "the label never is a request field"
    # Out of contract, under the default `serving.out_of_contract: flag`: a categorical value outside
    # the allowed set is scored (reserved code) and flagged, a number outside min/max scored as given.
    assert schemas.request.model_validate(GOOD | {"device": "fridge"}).device == "fridge"
    assert schemas.request.model_validate(GOOD | {"amount": 6e4, "user_id": -1}).amount == 6e4


# Wrong types, NaN/infinity, missing or unknown fields: a 422 under either policy.
INVALID = [("extra", 1), ("event_timestamp", "0001-01-01T00:00:00Z"), ("event_timestamp", "yesterday"),
           ("country", "x" * 300), ("merchant_id", None), ("amount", float("nan")), ("amount", float("inf")),
           ("amount", "12 dollars"), ("user_id", 2**63), ("user_id", 1.5)]
OUT_OF_CONTRACT = [("amount", 0), ("amount", 6e4), ("user_id", -1), ("device", "fridge")]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_fields_are_named(schemas, reject, field, value):
    for s in (schemas, reject):
        with pytest.raises(ValidationError) as info:
            s.request.model_validate(GOOD | {field: value})
        assert field_paths(info.value.errors(include_context=False, include_input=False)) == [field]


@pytest.mark.parametrize(("field", "value"), OUT_OF_CONTRACT)
def test_out_of_contract_values_are_a_422_only_when_the_spec_rejects_them(schemas, reject, field, value):
    assert getattr(schemas.request.model_validate(GOOD | {field: value}), field) == value
    with pytest.raises(ValidationError) as info:
        reject.request.model_validate_json(json.dumps(GOOD | {field: value}))
    body = json.loads(unprocessable(info.value))
    assert body["fields"] == [field] and field in body["error"]


def test_the_schema_documents_what_each_policy_enforces(schemas, reject):
    flagged = schemas.openapi_request()["properties"]
    amount = flagged["amount"]
    assert "minimum" not in amount and "maximum" not in amount
    assert amount["x-contract-minimum"] == 0.01 and amount["x-contract-maximum"] == 50000
    assert "out_of_range" in amount["description"] and "unknown" in flagged["device"]["description"]
    assert flagged["user_id"]["minimum"] == -(2**63), "the type's own range stays enforced"
    assert "enum" not in flagged["device"]
    enforced = reject.openapi_request()["properties"]
    assert enforced["amount"]["minimum"] == 0.01 and enforced["amount"]["maximum"] == 50000
    assert enforced["user_id"]["minimum"] == 0 and "x-contract-minimum" not in enforced["amount"]
    assert enforced["device"]["enum"] == ["mobile", "desktop", "pos", "unknown"]
    assert schemas.ranges == {"user_id": (0, None), "merchant_id": (0, None), "amount": (0.01, 50000)}
    assert reject.ranges == {}


def test_batch_is_bounded_and_a_422_names_row_and_field(schemas):
    assert len(schemas.batch.validate_python([GOOD] * 3)) == 3
    for bad in ([], [GOOD] * (MAX_BATCH + 1)):
        with pytest.raises(ValidationError):
            schemas.batch.validate_python(bad)
    rows = [GOOD, GOOD, GOOD, GOOD | {"amount": None}, {k: v for k, v in GOOD.items() if k != "user_id"}]
    with pytest.raises(ValidationError) as info:
        schemas.batch.validate_json(json.dumps(rows))
    body = json.loads(unprocessable(info.value))
    assert body["fields"] == ["3.amount", "4.user_id"]
    assert body["error"] == "invalid field(s): 3.amount, 4.user_id"
    assert [d["loc"] for d in body["detail"]] == [[3, "amount"], [4, "user_id"]]
    with pytest.raises(ValidationError) as info:  # broken JSON names no field: the parser's message is kept
        schemas.request.model_validate_json(b"{not json")
    broken = json.loads(unprocessable(info.value))
    assert broken["fields"] == [] and "JSON" in broken["error"]


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_another_spec_gets_its_own_schemas(task):
    spec = routes_spec(task)
    fz = featurizer_for(spec)
    s = route_schemas(spec, fz.request_columns)
    assert set(s.request.model_fields) == {"carrier", "flight", "origin", "dest", "departed_at", "distance"}
    assert s.id_columns == ("carrier", "flight", "departed_at")
    row = s.request.model_validate({"carrier": "ZZ", "flight": 12, "origin": "JFK", "dest": "LAX",
                                    "departed_at": "2013-01-01T05:00:00Z"})
    assert row.distance is None, "a nullable column may be left out"
    with pytest.raises(ValidationError, match="flight"):
        s.request.model_validate({"carrier": "AA", "flight": "twelve", "origin": "JFK", "dest": "LAX",
                                  "departed_at": "2013-01-01T05:00:00Z"})
    assert s.ranges == {"flight": (1, 9999), "distance": (0, None)}  # flagged, not enforced (the default)
    response = s.response.model_json_schema(by_alias=True)["properties"]
    task_fields = {"regression": {"value"}, "multiclass": {"probabilities", "class"}}[task]
    assert task_fields <= set(response) and not {"probability", "decision"} & set(response) - task_fields
    assert {"carrier", "flight", "departed_at", "request_id", "model_version", "unknown"} <= set(response)
    assert s.request.__name__ == "RoutesRequest" and s.response.__name__ == "RoutesPrediction"


def test_a_key_column_named_like_a_response_field_is_refused():
    spec = routes_spec()
    raw = spec.model_dump(mode="json", exclude_none=True)
    columns = raw["dataset"]["contract"]["columns"]
    columns["value"] = columns.pop("flight")
    raw["dataset"]["key"] = ["carrier", "value", "departed_at"]
    with pytest.raises(SchemaError, match="value"):
        route_schemas(PipelineSpec.model_validate(raw), ["carrier", "departed_at"])


@pytest.mark.parametrize(("keys", "kinds"), [
    (["user_id"], ["int64"]),
    (["origin", "dest"], ["string", "string"]),
    (["zeta", "alpha"], ["int64", "int64"]),  # composite: Feast sorts the keys
    (["tail", "day"], ["string", "int64"]),
])
def test_entity_keys_encode_like_feast(keys, kinds):
    from feast.infra.key_encoding_utils import serialize_entity_key

    from flywheel.serving.online import KeyEncoder, entity_key

    encoder = KeyEncoder(keys, kinds, 3)
    assert encoder.native, "the column-wise encoding matches Feast's"
    rng = np.random.default_rng(1)
    columns = {k: (rng.integers(-2**40, 2**62, 30).tolist() if kind == "int64"
                   else [f"k{v}é" for v in rng.integers(0, 10**6, 30)]) for k, kind in zip(keys, kinds, strict=True)}
    theirs = [serialize_entity_key(entity_key(keys, kinds, row), entity_key_serialization_version=3)
              for row in zip(*(columns[k] for k in keys), strict=True)]
    assert encoder.encode(columns) == theirs


def test_online_values_decode_like_feast_protobuf():
    from feast.protos.feast.types.Value_pb2 import Value

    from flywheel.serving.online import _python, decode_values

    protos = [Value(double_val=1.5), Value(double_val=0.0), Value(double_val=-3e300), Value(int64_val=0),
              Value(int64_val=127), Value(int64_val=128), Value(int64_val=-5), Value(int64_val=2**62),
              Value(string_val="US"), Value(string_val=""), Value(bool_val=True), Value()]
    raw = [p.SerializeToString() for p in protos] + [None, b""]
    assert decode_values(raw) == [_python(p) for p in protos] + [None, None]
    assert decode_values(raw) == [_python(p) for p in protos] + [None, None]  # remembered values
    doubles = [Value(double_val=float(i) / 3).SerializeToString() for i in range(20)] + [None, b""]
    many = decode_values(doubles)  # a double column: decoded in one numpy call
    assert many[:20].tolist() == [i / 3 for i in range(20)] and np.isnan(many[20:]).all()


def _model(task: str, **kw):
    from flywheel.training.registry import LoadedModel

    model = LoadedModel(name="m", version="3", family="xgboost", model=None, threshold=kw.pop("threshold", 0.5),
                        features=[], scorer=None)
    for k, v in kw.items():
        setattr(model, k, v)
    return model


def _scores(task: str, raw: np.ndarray, model, spec, rows):
    from flywheel.serving.predictor import Scores, outside_ranges, request_ids, task_outputs

    fz = featurizer_for(spec)
    s = route_schemas(spec, fz.request_columns)
    fields = tuple(dict.fromkeys((*s.id_columns, *s.columns)))
    columns = {f: [getattr(r, f) for r in rows] for f in fields}
    n = len(rows)
    misses = {name: np.arange(n) == i + 1 for i, name in enumerate(spec.features.entities)}
    entities = {a: np.full(n, 3.0) for a in fz.entity_features if fz.aggregates[a] != "string"}
    features = fz.transform(columns, entities)
    return Scores(task, columns, s.id_columns, tuple(fz.names), features.matrix, raw, task_outputs(task, model, raw),
                  misses, dict(features.unknown), request_ids(n), model,
                  out_of_range=outside_ranges(columns, s.ranges)), s


def _validated(response: type[BaseModel], body: bytes, *, many: bool) -> list[dict]:
    out = json.loads(body)
    for item in out if many else [out]:
        response.model_validate(item)  # the documented response model accepts what is served
    return out if many else [out]


def test_binary_scores_serialize_as_the_response_model(fraud, schemas):
    rows = [schemas.request.model_validate(GOOD | {"transaction_id": f"t{i}", "device": d, "amount": a})
            for i, (d, a) in enumerate([("pos", 10.0), ("fridge", 50000.0), ("mobile", 6e4)])]
    scores, s = _scores("binary", np.array([0.1, 0.5, 0.9]), _model("binary"), fraud, rows)
    out = _validated(s.response, scores.to_json(), many=True)
    assert [o["transaction_id"] for o in out] == ["t0", "t1", "t2"]
    assert [o["probability"] for o in out] == [0.1, 0.5, 0.9]
    assert [o["decision"] for o in out] == [False, True, True] and out[0]["threshold"] == 0.5
    assert [o["unknown"] for o in out] == [[], ["device"], []]
    assert [o["out_of_range"] for o in out] == [[], [], ["amount"]], "the bounds are inclusive"
    assert [o["unknown_entities"] for o in out] == [[], ["user"], ["merchant"]]
    assert out[1]["defaults_used"] and len({o["request_id"] for o in out}) == 3
    assert json.loads(scores.to_json(single=True)) == out[0]


@pytest.mark.parametrize("task", ["regression", "multiclass"])
def test_other_tasks_serialize_as_their_response_model(task):
    spec = routes_spec(task)
    s = route_schemas(spec, featurizer_for(spec).request_columns)
    rows = [s.request.model_validate({"carrier": c, "flight": 7, "origin": "JFK", "dest": "LAX",
                                      "departed_at": "2013-01-01T05:00:00Z", "distance": 100.0})
            for c in ("AA", "XX")]
    if task == "regression":
        raw, model = np.array([3.5, -1.0]), _model(task, threshold=float("nan"))
    else:
        raw, model = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]), _model(task, classes=["early", "late", "on_time"])
    scores, _ = _scores(task, raw, model, spec, rows)
    out = _validated(s.response, scores.to_json(), many=True)
    assert [o["carrier"] for o in out] == ["AA", "XX"] and out[1]["unknown"] == ["carrier"]
    if task == "regression":
        assert [o["value"] for o in out] == [3.5, -1.0]
    else:
        assert [o["class"] for o in out] == ["late", "early"]
        assert out[0]["probabilities"] == {"early": 0.2, "late": 0.7, "on_time": 0.1}


def test_prediction_log_frame_follows_the_spec_schema(fraud, schemas):
    from flywheel.serving.prediction_log import log_frame, log_schema

    rows = [schemas.request.model_validate(GOOD | {"transaction_id": f"t{i}", "user_id": i - (i == 3),
                                                   "device": "fridge" if i == 2 else "pos"}) for i in range(4)]
    a, _ = _scores("binary", np.array([0.1, 0.5, 0.9]), _model("binary"), fraud, rows[:3])
    b, _ = _scores("binary", np.array([0.7]), _model("binary"), fraud, rows[3:])
    schema = log_schema(fraud)
    frame = log_frame([a, b], schema)
    assert list(frame.columns) == list(schema.columns)
    assert {c: str(t) for c, t in frame.dtypes.items()} == {c: str(pd.Series(dtype=t).dtype)
                                                            for c, t in schema.columns.items()}
    assert frame["user_id"].tolist() == [0, 1, 2, 2] and frame["transaction_id"].tolist() == ["t0", "t1", "t2", "t3"]
    assert frame["unknown_value"].tolist() == [False, False, True, False]
    assert frame["out_of_range"].tolist() == [False, False, False, False]
    c, _ = _scores("binary", np.array([0.2, 0.3]), _model("binary"), fraud,
                   [schemas.request.model_validate(GOOD | {"user_id": -7}), schemas.request.model_validate(GOOD)])
    assert log_frame([a, c], schema)["out_of_range"].tolist() == [False, False, False, True, False]
    assert frame["probability"].tolist() == [0.1, 0.5, 0.9, 0.7] and frame["amount"].eq(10.0).all()
    assert str(frame["event_timestamp"].iloc[0]) == "2026-01-09 10:00:00+00:00"


def test_routes_per_use_case_and_aliases_only_for_one():
    from flywheel.serving.server import route_table

    assert {r.path for r in route_table(["fraud"])} == {"/fraud/predict", "/fraud/predict_batch", "/predict",
                                                        "/predict_batch"}
    two = route_table(["flights", "fraud"])
    assert {r.path for r in two} == {"/flights/predict", "/flights/predict_batch", "/fraud/predict",
                                     "/fraud/predict_batch"}


def test_xgboost_array_scoring_equals_dataframe_scoring():
    from xgboost import XGBClassifier

    from flywheel.training.families import get
    from flywheel.training.registry import LoadedModel

    rng = np.random.default_rng(5)
    columns = ["a", "b", "c", "d"]
    x = pd.DataFrame(rng.normal(size=(400, 4)), columns=columns)
    x.loc[rng.random(400) < 0.1, "b"] = np.nan
    y = (x["a"] + rng.normal(size=400) > 0).astype(int)
    model = XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1).fit(x, y)
    loaded = LoadedModel(name="m", version="1", family="xgboost", model=model, threshold=0.5,
                         features=columns, scorer=get("xgboost"))
    # The request matrix has more columns, in another order: the model still gets its own.
    wide = pd.concat([x, pd.DataFrame({"z": rng.normal(size=400)})], axis=1)[["z", "d", "a", "b", "c"]]
    expected = loaded.predict_proba(wide.rename(columns=str))
    got = loaded.predict_proba_array(wide.to_numpy(), list(wide.columns))
    np.testing.assert_array_equal(got, np.asarray(expected))


def test_distinct_keys_read_once_and_expand_back_in_order():
    from flywheel.serving.online import distinct

    keys = {"a": [1, 2, 1, 3, 2], "b": ["x", "y", "x", "x", "y"]}
    unique, inverse, count = distinct(keys, 5)
    assert count == 3 and unique == {"a": [1, 2, 3], "b": ["x", "y", "x"]}
    assert [(unique["a"][i], unique["b"][i]) for i in inverse] == list(zip(keys["a"], keys["b"], strict=True))
    assert distinct({"a": [1, 2]}, 2) == ({"a": [1, 2]}, None, 2)  # nothing repeated: read as is
