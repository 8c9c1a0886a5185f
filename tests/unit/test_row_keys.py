"""Row keys for every dataset (one column, composite, or a row hash) and the quarantine-share rule."""

import pandas as pd
import pytest

from flywheel.core.spec import DatasetSpec
from flywheel.data.keys import DuplicateRows, key_rule, row_keys
from flywheel.data.validation import QuarantineShareExceeded, check_quarantine_share

pytestmark = pytest.mark.unit


def dataset(key):
    return DatasetSpec.model_validate({
        "name": "trips", "source": "x/{ds}", "timestamp": "at", "key": key,
        "contract": {"columns": {"at": {"type": "datetime"}, "route": {"type": "string"},
                                 "seq": {"type": "int"}, "minutes": {"type": "float"}}},
    })


def frame():
    return pd.DataFrame({"at": pd.to_datetime(["2026-01-01T01:00Z"] * 3), "route": ["a", "a", "b"],
                         "seq": pd.array([1, 2, None], dtype="Int64"), "minutes": [3.0, 3.0, 4.5]})


def test_keys_of_one_column_a_composite_and_none():
    assert list(row_keys(frame(), dataset("route"))) == ["a", "a", "b"]
    assert list(row_keys(frame(), dataset(["route", "seq"]))) == ["a|1", "a|2", "b|<null>"]
    hashed = row_keys(frame(), dataset(None))
    assert hashed.str.fullmatch("[0-9a-f]{16}").all() and hashed.nunique() == 3
    assert list(row_keys(frame(), dataset(None))) == list(hashed)  # stable
    assert key_rule(dataset(None)) == "expect_rows_to_be_unique(row_hash)"
    assert key_rule(dataset(["route", "seq"])) == "expect_compound_columns_to_be_unique(route,seq)"


def test_repeated_rows_are_found_across_chunks_keeping_the_first():
    seen = DuplicateRows(dataset(None))
    first = frame()
    assert list(seen.repeated(first)) == [False, False, False]
    again = pd.concat([first.iloc[[1]], first.iloc[[1]], first.iloc[[0]].assign(minutes=9.0)])
    assert list(seen.repeated(again)) == [True, True, False]


def test_a_quarantined_share_above_the_contract_names_share_and_top_rules():
    spec = dataset("route")
    summary = {"rows": 200, "curated": 150, "quarantined": 50,
               "rule_failures": {"expect_column_values_to_be_between(minutes)": 45,
                                 "expect_column_values_to_not_be_null(seq)": 5}}
    with pytest.raises(QuarantineShareExceeded) as err:
        check_quarantine_share(summary, spec, "2026-01-01")
    message = str(err.value)
    assert "25.0% of 200 rows" in message and "5.0%" in message and "trips" in message
    assert message.index("be_between(minutes) (45 rows)") < message.index("not_be_null(seq) (5 rows)")
    assert err.value.rule == "max_quarantine_share" and err.value.top_rules[0][1] == 45
    check_quarantine_share({**summary, "quarantined": 10}, spec, "2026-01-01")  # 5 % is allowed


def test_the_validate_task_fails_without_retry_naming_the_share():
    from airflow.sdk.exceptions import AirflowFailException

    from flywheel.airflow.factory import _contract_failures_do_not_retry

    summary = {"rows": 10, "curated": 5, "quarantined": 5, "rule_failures": {"r(x)": 5}}
    with pytest.raises(AirflowFailException, match=r"50.0% of 10 rows.*top rules: r\(x\) \(5 rows\)"):
        with _contract_failures_do_not_retry():
            check_quarantine_share(summary, dataset("route"), "2026-01-01")
