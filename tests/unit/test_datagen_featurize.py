from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from examples.fraud.generator import (
    BAD_KINDS,
    DriftKind,
    Phase,
    drift_on,
    generate_day,
    generator_spec,
    labels_arriving,
    write_landing,
)

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


def pattern(frame: pd.DataFrame) -> pd.Series:
    """The concept shift's new fraud: small night purchases on mobile at everyday merchants."""
    hour = frame["event_timestamp"].dt.hour
    return ((frame["device"] == "mobile") & ((hour < 6) | (hour == 23))
            & frame["merchant_category"].isin(["pharmacy", "grocery", "restaurant", "fuel"]))


def test_drift_kinds_combine_and_follow_a_schedule(spec):
    both = generate_day(DAY, spec.generator, drift={DriftKind.AMOUNT_SHIFT, DriftKind.NEW_PATTERN}, bad_records=False)
    alone = generate_day(DAY, spec.generator, drift=DriftKind.AMOUNT_SHIFT, bad_records=False)
    assert both["amount"].median() > 2 * generate_day(DAY, spec.generator, bad_records=False)["amount"].median()
    assert both.loc[pattern(both), "is_fraud"].mean() > 3 * both.loc[~pattern(both), "is_fraud"].mean()
    # A single kind keeps the frames it always had (seeded by the kind's name).
    pd.testing.assert_frame_equal(alone, generate_day(DAY, spec.generator, drift=[DriftKind.AMOUNT_SHIFT],
                                                      bad_records=False))
    schedule = [Phase(date(2026, 1, 10), frozenset({DriftKind.AMOUNT_SHIFT})),
                Phase(date(2026, 1, 20), frozenset({DriftKind.NEW_PATTERN}))]
    assert drift_on(date(2026, 1, 9), schedule) == frozenset()
    assert drift_on(date(2026, 1, 15), schedule) == {DriftKind.AMOUNT_SHIFT}
    assert drift_on(date(2026, 1, 25), schedule) == {DriftKind.NEW_PATTERN}


def test_concept_shift_shows_in_labels_not_in_inputs(spec):
    days = [DAY + timedelta(days=i) for i in range(4)]
    normal = pd.concat([generate_day(d, spec.generator, bad_records=False) for d in days])
    shifted = pd.concat([generate_day(d, spec.generator, drift=DriftKind.NEW_PATTERN, bad_records=False)
                         for d in days])
    assert shifted.loc[pattern(shifted), "is_fraud"].mean() > 5 * normal.loc[pattern(normal), "is_fraud"].mean()
    assert abs(np.log(shifted["amount"]).median() - np.log(normal["amount"]).median()) < 0.1


def test_each_label_arrives_once_within_the_delay(spec):
    gen = generator_spec(spec.generator)
    first = date(2026, 1, 1)
    arrived = pd.concat([labels_arriving(first + timedelta(days=i), gen) for i in range(1, 12)])
    assert arrived["transaction_id"].is_unique
    for offset in range(gen.label_delay_days, 8):  # days whose whole delay range is covered
        day = first + timedelta(days=offset)
        txns = generate_day(day, gen, bad_records=False)
        got = arrived[arrived["transaction_id"].str.startswith(f"t{day:%Y%m%d}-")]
        assert len(got) == len(txns)
        merged = txns.merge(got, on="transaction_id", suffixes=("", "_label"))
        assert (merged["is_fraud"] == merged["is_fraud_label"]).all()
        lag = (merged["labelled_at"].dt.date - day).map(lambda d: d.days)
        assert lag.between(1, gen.label_delay_days).all() and lag.nunique() == gen.label_delay_days
    pd.testing.assert_frame_equal(labels_arriving(first + timedelta(days=5), gen),
                                  labels_arriving(first + timedelta(days=5), gen))


def test_write_landing_is_idempotent(tmp_path, spec):
    first = write_landing(tmp_path, DAY, 2, spec.generator)
    content = [p.read_bytes() for p in first]
    second = write_landing(tmp_path, DAY, 2, spec.generator)
    assert first == second and content == [p.read_bytes() for p in second]


def test_the_generator_validates_its_own_section(spec):
    """The engine keeps ``generator:`` as a free-form dict; the example's generator checks it."""
    from pydantic import ValidationError

    assert generator_spec(spec.generator).rows_per_day == spec.generator["rows_per_day"]
    with pytest.raises(ValidationError, match="rows_per_dya"):
        generator_spec({**spec.generator, "rows_per_dya": 10})
