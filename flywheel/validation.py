"""Validate a raw partition against its dataset contract with Great Expectations.

Row-level failures go to quarantine with the rule(s) each row broke; the rest
is curated. Batch-level failures (a missing column, a wrong type, an empty
batch) raise :class:`ContractViolation`: the whole batch is quarantined and no
curated partition is written for it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd

from flywheel.spec import ColumnRule, DatasetSpec

ROW_ID = "_row"
REASONS = "_failed_rules"
_TYPE_CHECKS = {
    "string": pd.api.types.is_object_dtype,
    "int": pd.api.types.is_integer_dtype,
    "float": pd.api.types.is_numeric_dtype,
    "datetime": pd.api.types.is_datetime64_any_dtype,
    "bool": pd.api.types.is_bool_dtype,
}


class ContractViolation(ValueError):
    """A batch broke its contract as a whole; the message names dataset, partition and rule."""

    def __init__(self, dataset: str, ds: str, rule: str, detail: str) -> None:
        self.dataset, self.ds, self.rule, self.detail = dataset, ds, rule, detail
        super().__init__(f"dataset {dataset!r} partition ds={ds}: {rule}: {detail}")


@dataclass(frozen=True)
class ValidationResult:
    curated: pd.DataFrame
    quarantined: pd.DataFrame
    rule_failures: dict[str, int]

    @property
    def summary(self) -> dict[str, Any]:
        return {
            "rows": len(self.curated) + len(self.quarantined),
            "curated": len(self.curated),
            "quarantined": len(self.quarantined),
            "rule_failures": self.rule_failures,
        }


def check_batch(df: pd.DataFrame, dataset: DatasetSpec, ds: str) -> None:
    """Batch-level rules: presence, types and non-emptiness of the columns."""
    if df.empty:
        raise ContractViolation(dataset.name, ds, "non_empty", "the batch has no rows")
    columns = dataset.contract.columns
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ContractViolation(dataset.name, ds, "columns_present", f"missing columns {missing}")
    unexpected = [c for c in df.columns if c not in columns]
    if unexpected:
        raise ContractViolation(dataset.name, ds, "no_unexpected_columns", f"unexpected columns {unexpected}")
    for name, rule in columns.items():
        if not _TYPE_CHECKS[rule.type](df[name].dtype):
            raise ContractViolation(
                dataset.name, ds, "column_type", f"column {name!r} is {df[name].dtype}, expected {rule.type}"
            )


def build_expectations(
    dataset: DatasetSpec, ds: date
) -> list[Any]:
    """The GX expectations of a dataset contract (row-level rules only)."""
    import great_expectations.expectations as gxe

    expectations: list[Any] = []
    for name, rule in dataset.contract.columns.items():
        expectations.extend(_column_expectations(gxe, name, rule))
    if dataset.contract.timestamp_in_interval:
        start = datetime.combine(ds, time.min, tzinfo=UTC)
        expectations.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=dataset.timestamp,
                min_value=start,
                max_value=start + timedelta(days=1) - timedelta(microseconds=1),
            )
        )
    return expectations


def _column_expectations(gxe: Any, name: str, rule: ColumnRule) -> list[Any]:
    out: list[Any] = []
    if not rule.nullable:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=name))
    if rule.unique:
        out.append(gxe.ExpectColumnValuesToBeUnique(column=name))
    if rule.min is not None or rule.max is not None:
        out.append(gxe.ExpectColumnValuesToBeBetween(column=name, min_value=rule.min, max_value=rule.max))
    if rule.allowed is not None:
        out.append(gxe.ExpectColumnValuesToBeInSet(column=name, value_set=rule.allowed))
    return out


def _rule_name(result: Any) -> str:
    config = result.expectation_config
    return f"{config.type}({config.kwargs.get('column', '')})"


def validate(df: pd.DataFrame, dataset: DatasetSpec, ds: str) -> ValidationResult:
    """Split a raw batch into curated and quarantined rows.

    Raises :class:`ContractViolation` for batch-level failures.
    """
    check_batch(df, dataset, ds)
    _quiet_gx()  # before the import: GX logs ~200 INFO lines while importing
    import great_expectations as gx

    frame = df.reset_index(drop=True).copy()
    frame[ROW_ID] = range(len(frame))
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name=f"{dataset.name}_source")
    asset = source.add_dataframe_asset(name=dataset.name)
    batch_def = asset.add_batch_definition_whole_dataframe("batch")
    suite = gx.ExpectationSuite(name=f"{dataset.name}_contract")
    for expectation in build_expectations(dataset, date.fromisoformat(ds)):
        suite.add_expectation(expectation)
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(
        suite,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
    )
    reasons: dict[int, list[str]] = {}
    failures: dict[str, int] = {}
    for res in result.results:
        if res.success:
            continue
        rule = _rule_name(res)
        rows = [int(item[ROW_ID]) for item in res.result.get("unexpected_index_list") or []]
        failures[rule] = len(rows)
        for row in rows:
            reasons.setdefault(row, []).append(rule)
    bad = frame[ROW_ID].isin(reasons)
    quarantined = frame[bad].copy()
    quarantined[REASONS] = quarantined[ROW_ID].map(lambda r: "; ".join(reasons[r]))
    curated = frame[~bad].drop(columns=[ROW_ID]).reset_index(drop=True)
    return ValidationResult(
        curated=curated,
        quarantined=quarantined.drop(columns=[ROW_ID]).reset_index(drop=True),
        rule_failures=failures,
    )


def _quiet_gx() -> None:
    """GX logs every expectation at INFO and draws progress bars: keep task logs readable."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


def validate_partition(spec: Any, ds: str, *, run_id: str = "", settings: Any = None) -> dict[str, Any]:
    """Validate the raw partition of ``ds``: write curated and quarantine partitions.

    A batch-level failure quarantines the whole batch with its reason, withdraws
    any curated partition of that date, and raises :class:`ContractViolation`.
    """
    from flywheel import storage
    from flywheel.config import get_settings

    settings = settings or get_settings()
    name = spec.dataset.name
    raw = storage.read_partition(zone="raw", dataset=name, ds=ds, settings=settings)
    try:
        result = validate(raw, spec.dataset, ds)
    except ContractViolation as exc:
        whole = raw.copy()
        whole[REASONS] = f"batch: {exc.rule}: {exc.detail}"
        storage.write_partition(whole, zone="quarantine", dataset=name, ds=ds, run_id=run_id,
                                extra={"batch_failure": exc.rule}, settings=settings)
        storage.delete_partition(zone="curated", dataset=name, ds=ds, settings=settings)
        raise
    for zone, frame in (("curated", result.curated), ("quarantine", result.quarantined)):
        storage.write_partition(frame, zone=zone, dataset=name, ds=ds, run_id=run_id,
                                source=f"raw/{name}/ds={ds}", extra=result.summary, settings=settings)
    return result.summary
