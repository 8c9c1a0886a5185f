"""PII columns: where the spec lets them go, and what each zone gets (flywheel.core.pii)."""

from __future__ import annotations

import copy

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from flywheel.core import pii
from flywheel.core.spec import SpecError, load_spec_file
from flywheel.data.validation import validate

pytestmark = pytest.mark.unit
KEY = b"k" * 32


def _with(raw: dict, column: str, rule: dict, **edits) -> dict:
    out = copy.deepcopy(raw)
    out["dataset"]["contract"]["columns"][column] = rule
    for path, value in edits.items():
        node = out
        *parents, last = path.split("__")
        for part in parents:
            node = node[part]
        node[last] = value
    return out


@pytest.fixture()
def raw(spec) -> dict:
    return yaml.safe_load(spec._path.read_text())


@pytest.mark.parametrize(("rule", "edits", "field", "says"), [
    ({"type": "string", "pii": True, "allowed": ["a"]}, {}, "dataset.contract.columns.holder",
     "cannot declare allowed"),
    ({"type": "int", "pii": True}, {}, "dataset.contract.columns.holder", "needs type: string"),
    ({"type": "string", "pii_policy": "drop"}, {}, "dataset.contract.columns.holder", "needs pii: true"),
    ({"type": "string", "pii": True, "pii_policy": "encrypt"}, {}, "dataset.contract.columns.holder.pii_policy",
     "'hash', 'drop' or 'features_only'"),
    ({"type": "string", "pii": True, "pii_policy": "features_only"},
     {"features__entities__user__keys": ["holder"]}, "features.entities.user.keys", "can only be hashed"),
    ({"type": "string", "pii": True, "pii_policy": "drop"},
     {"features__entities__user__aggregations__holders_7d": {"fn": "distinct_count", "column": "holder",
                                                             "window": "7d"}},
     "features.entities.user.aggregations.holders_7d.column", "policy drop"),
    ({"type": "string", "pii": True}, {"features__request__holder_missing": {"fn": "missing", "column": "holder"}},
     "features.request.holder_missing", "tagged pii"),
    ({"type": "string", "pii": True}, {"training__slices": ["holder"]}, "training.slices", "tagged pii"),
    ({"type": "string", "pii": True, "pii_policy": "drop"}, {"dataset__key": "holder"}, "dataset.key",
     "can only be hashed"),
])
def test_a_pii_column_used_where_its_values_would_show_is_a_spec_error(tmp_path, raw, rule, edits, field, says):
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(_with(raw, "holder", rule, **edits)))
    with pytest.raises(SpecError) as info:
        load_spec_file(path)
    message = str(info.value)
    assert str(path) in message and field in message and says in message, message


def test_allowed_uses_of_pii_columns_load(tmp_path, raw):
    allowed = _with(raw, "holder", {"type": "string", "pii": True, "nullable": False},
                    features__entities__user__keys=["user_id", "holder"])
    allowed["dataset"]["contract"]["columns"]["zip"] = {"type": "string", "pii": True, "pii_policy": "features_only"}
    allowed["features"]["entities"]["user"]["aggregations"]["zips_7d"] = {
        "fn": "distinct_count", "column": "zip", "window": "7d"}
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(allowed))
    spec = load_spec_file(path)
    assert pii.policies(spec.dataset) == {"holder": "hash", "zip": "features_only"}


def test_each_zone_gets_its_policy_and_the_hash_is_keyed(tmp_path, raw):
    raw = _with(raw, "email", {"type": "string", "pii": True})
    raw["dataset"]["contract"]["columns"] |= {"phone": {"type": "string", "pii": True, "pii_policy": "drop"},
                                              "zip": {"type": "string", "pii": True, "pii_policy": "features_only"}}
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(raw))
    dataset = load_spec_file(path).dataset
    batch = pa.RecordBatch.from_pydict({"email": ["a@x.org", None, "a@x.org"], "phone": ["1", "2", "3"],
                                        "zip": ["z1", "z2", None], "amount": [1.0, 2.0, 3.0]})
    curated = pii.for_curated(batch, dataset, KEY).to_pydict()
    assert set(curated) == {"email", "zip", "amount"} and curated["zip"] == ["z1", "z2", None]
    assert curated["email"][0] == curated["email"][2] != "a@x.org" and curated["email"][1] is None
    assert len(curated["email"][0]) == 64
    assert pii.hash_text("a@x.org", b"other" * 8) != curated["email"][0], "the hash depends on the key"
    quarantine = pii.for_quarantine(batch, dataset, KEY).to_pydict()
    assert set(quarantine) == {"email", "zip", "amount"} and quarantine["zip"][0] == pii.hash_text("z1", KEY)
    seen = pii.for_validation(batch, dataset, KEY).to_pydict()
    assert seen["phone"] == pii.hash_values(["1", "2", "3"], KEY) and seen["amount"] == [1.0, 2.0, 3.0]
    assert pii.schema_for(batch.schema, dataset, "curated").names == ["email", "zip", "amount"]
    with pytest.raises(pii.PiiKeyMissing, match="pii columns"):
        pii.for_curated(batch, dataset, None)


def test_in_memory_validation_quarantines_on_hashes_and_writes_each_zone_by_policy(tmp_path, raw, spec):
    from examples.fraud.generator import generate_day

    raw = _with(raw, "email", {"type": "string", "pii": True, "unique": True})
    raw["dataset"]["contract"]["columns"]["phone"] = {"type": "string", "pii": True, "pii_policy": "drop"}
    path = tmp_path / "fraud.yaml"
    path.write_text(yaml.safe_dump(raw))
    dataset = load_spec_file(path).dataset
    day = pd.Timestamp("2026-01-03").date()
    frame = generate_day(day, spec.generator).head(50).copy()
    frame["email"] = [f"p{i}@x.org" for i in range(50)]
    frame.loc[1, "email"] = "p0@x.org"  # a duplicate: both rows break `unique`
    frame["phone"] = [f"+1-{i}" for i in range(50)]
    checked = validate(frame, dataset, day.isoformat(), pii_key=KEY)
    assert len(checked.quarantined) == 2 and len(checked.curated) == 48
    assert "phone" not in checked.curated.columns and "phone" not in checked.quarantined.columns
    assert set(checked.quarantined["email"]) == {pii.hash_text("p0@x.org", KEY)}
    assert not checked.curated["email"].str.contains("@").any()
