from datetime import date

import pandas as pd
import pytest

from examples.fraud.generator import generate_day
from flywheel.data.validation import REASONS, ContractViolation, validate

pytestmark = pytest.mark.unit
DS = "2026-01-05"


@pytest.fixture(scope="module")
def batch(spec):
    return generate_day(date.fromisoformat(DS), spec.generator)


def test_every_row_is_curated_or_quarantined_with_a_reason(batch, spec):
    result = validate(batch, spec.dataset, DS)
    assert len(result.curated) + len(result.quarantined) == len(batch)
    assert len(result.quarantined) >= 5
    assert result.quarantined[REASONS].str.len().gt(0).all()
    reasons = " ".join(result.quarantined[REASONS])
    for rule in ("not_be_null(user_id)", "be_between(amount)", "be_in_set(merchant_category)",
                 "be_unique(transaction_id)", "be_between(event_timestamp)"):
        assert rule in reasons
    assert result.curated["amount"].gt(0).all()
    assert result.curated["user_id"].notna().all()


def test_clean_batch_is_fully_curated(spec):
    clean = generate_day(date.fromisoformat(DS), spec.generator, bad_records=False)
    result = validate(clean, spec.dataset, DS)
    assert len(result.quarantined) == 0 and len(result.curated) == len(clean)


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda df: df.drop(columns=["amount"]), "columns_present"),
        (lambda df: df.assign(extra=1), "no_unexpected_columns"),
        (lambda df: df.assign(amount=df["amount"].astype(str)), "column_type"),
        (lambda df: df.iloc[0:0], "non_empty"),
    ],
)
def test_batch_level_failures_name_dataset_partition_and_rule(batch, spec, mutate, rule):
    with pytest.raises(ContractViolation) as err:
        validate(mutate(batch), spec.dataset, DS)
    assert err.value.rule == rule
    assert "transactions" in str(err.value) and DS in str(err.value)


def test_rows_outside_the_interval_are_quarantined(spec):
    clean = generate_day(date.fromisoformat(DS), spec.generator, bad_records=False)
    shifted = clean.copy()
    shifted.loc[:9, "event_timestamp"] = pd.Timestamp("2030-01-01", tz="UTC")
    result = validate(shifted, spec.dataset, DS)
    assert len(result.quarantined) == 10
