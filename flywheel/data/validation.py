"""Validate a raw partition against its dataset contract with Great Expectations.

The contract lives in the dataset's spec (``models/<use case>.yaml``): columns,
types, nullability, ranges, allowed sets, uniqueness, forbidden columns, freshness
and row-volume bounds relative to recent history. Its row-level rules are built
into a GX expectation suite.

Row-level failures go to quarantine with the rule(s) each row broke; the rest
is curated. Batch-level failures (a missing, renamed, new or forbidden column, a
wrong type, an empty batch, a stale batch, a volume anomaly) raise
:class:`ContractViolation`: the whole batch is quarantined with the reason and no
curated partition is written for it. Large partitions are validated chunk by
chunk (``chunk_rows``) in bounded memory; uniqueness is checked across chunks.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from flywheel.core import pii
from flywheel.core.spec import ColumnRule, DatasetSpec

log = logging.getLogger(__name__)
ROW_ID = "_row"
REASONS = "_failed_rules"
_ARROW_CHECKS = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "int": pa.types.is_integer,
    "float": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "datetime": pa.types.is_timestamp,
    "bool": pa.types.is_boolean,
}


class ContractViolation(ValueError):
    """A batch broke its contract as a whole; the message names dataset, partition and rule."""

    def __init__(self, dataset: str, ds: str, rule: str, detail: str) -> None:
        self.dataset, self.ds, self.rule, self.detail = dataset, ds, rule, detail
        super().__init__(f"dataset {dataset!r} partition ds={ds}: {rule}: {detail}")


class QuarantineShareExceeded(ContractViolation):
    """Too large a share of a partition's rows was quarantined (``max_quarantine_share``).

    Raised after both partitions were committed: the rows stay quarantined with their
    reasons, nothing is lost, and a wrong contract shows as a failed task instead of green.
    ``summary`` is the validation summary; ``top_rules`` the most frequent rules broken.
    """

    def __init__(self, dataset: str, ds: str, summary: dict[str, Any], limit: float) -> None:
        self.summary, self.limit = summary, limit
        rows, quarantined = int(summary["rows"]), int(summary["quarantined"])
        self.share = quarantined / rows if rows else 0.0
        ranked = sorted(summary["rule_failures"].items(), key=lambda kv: (-kv[1], kv[0]))
        self.top_rules = ranked[:3]
        rules = ", ".join(f"{rule} ({n} rows)" for rule, n in self.top_rules) or "none"
        super().__init__(dataset, ds, "max_quarantine_share",
                         f"{self.share:.1%} of {rows} rows quarantined ({quarantined}), above the contract's "
                         f"max_quarantine_share {limit:.1%}; top rules: {rules}. The rows are in the "
                         f"quarantine zone with their reasons: fix the contract or the data, then "
                         f"`flywheel replay {dataset} --ds {ds}`")


def check_quarantine_share(summary: dict[str, Any], dataset: DatasetSpec, ds: str) -> None:
    """Raise :class:`QuarantineShareExceeded` when the quarantined share is above the contract's."""
    limit = dataset.contract.max_quarantine_share
    rows = int(summary["rows"])
    if rows and int(summary["quarantined"]) / rows > limit:
        raise QuarantineShareExceeded(dataset.name, ds, summary, limit)


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


def check_schema(schema: pa.Schema, dataset: DatasetSpec, ds: str) -> None:
    """Batch-level rules on the columns: present, none forbidden or new, of the contract's type."""
    contract = dataset.contract
    columns = contract.columns
    names = [n for n in schema.names if not n.startswith("__index_level")]
    forbidden = [c for c in names if c in contract.forbidden_columns]
    if forbidden:
        raise ContractViolation(dataset.name, ds, "forbidden_columns", f"columns {forbidden} must not be present")
    missing = [c for c in columns if c not in names]
    if missing:
        raise ContractViolation(dataset.name, ds, "columns_present", f"missing columns {missing}")
    unexpected = [c for c in names if c not in columns]
    if unexpected:
        raise ContractViolation(dataset.name, ds, "no_unexpected_columns", f"unexpected columns {unexpected}")
    for name, rule in columns.items():
        arrow_type = schema.field(name).type
        if pa.types.is_null(arrow_type):  # an all-null column has no type; nullability decides
            continue
        if rule.type == "string" and (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)):
            raise ContractViolation(dataset.name, ds, "encoding", f"column {name!r} is not valid UTF-8 text")
        if not _ARROW_CHECKS[rule.type](arrow_type):
            raise ContractViolation(
                dataset.name, ds, "column_type", f"column {name!r} is {arrow_type}, expected {rule.type}"
            )


def check_batch(df: pd.DataFrame, dataset: DatasetSpec, ds: str) -> None:
    """Batch-level rules of an in-memory batch: non-empty, then :func:`check_schema`."""
    if df.empty:
        raise ContractViolation(dataset.name, ds, "non_empty", "the batch has no rows")
    try:
        schema = pa.Schema.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ContractViolation(dataset.name, ds, "column_type", str(exc)) from exc
    check_schema(schema, dataset, ds)


def check_volume(rows: int, history: list[int], dataset: DatasetSpec, ds: str) -> dict[str, Any]:
    """Row count within the contract's bounds relative to the median of recent batches."""
    rule = dataset.contract.volume
    if rows == 0:
        raise ContractViolation(dataset.name, ds, "non_empty", "the batch has no rows")
    if rule is None or len(history) < rule.min_history:
        return {"checked": False, "history": len(history)}
    recent = history[-rule.history:]
    median = statistics.median(recent)
    low, high = rule.min_ratio * median, rule.max_ratio * median
    if not low <= rows <= high:
        raise ContractViolation(
            dataset.name, ds, "row_volume",
            f"{rows} rows, expected {low:.0f}..{high:.0f} (median of last {len(recent)} batches: {median:.0f})",
        )
    return {"checked": True, "median": median, "rows": rows}


def check_freshness(newest: datetime | None, dataset: DatasetSpec, ds: str) -> None:
    """The newest row must be recent relative to the interval's end (not "now": backfill-safe)."""
    hours = dataset.contract.freshness_hours
    if hours is None:
        return
    end = datetime.combine(date.fromisoformat(ds) + timedelta(days=1), time.min, tzinfo=UTC)
    if newest is None or newest < end - timedelta(hours=hours):
        raise ContractViolation(
            dataset.name, ds, "freshness",
            f"newest {dataset.timestamp} is {newest}, older than {hours} h before the interval's end {end}",
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


def _unique_rule(column: str) -> str:
    return f"expect_column_values_to_be_unique({column})"


class ContractSuite:
    """The GX suite of one dataset contract and interval, validated chunk by chunk.

    With ``docs_dir``, :meth:`build_docs` renders every chunk's validation result
    into GX Data Docs (static HTML) under that directory.
    """

    def __init__(self, dataset: DatasetSpec, ds: str, *, docs_dir: Path | None = None) -> None:
        _quiet_gx()  # before the import: GX logs ~200 INFO lines while importing
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.dataset, self.ds = dataset, ds
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        if docs_dir is not None:
            context.add_data_docs_site(site_name="flywheel", site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        source = context.data_sources.add_pandas(name=f"{dataset.name}_source")
        batch_def = source.add_dataframe_asset(name=dataset.name).add_batch_definition_whole_dataframe("batch")
        suite = context.suites.add(gx.ExpectationSuite(name=f"{dataset.name}_contract"))
        for expectation in build_expectations(dataset, date.fromisoformat(ds)):
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{dataset.name}_{ds}", data=batch_def, suite=suite))
        self.checkpoint = context.checkpoints.add(gx.Checkpoint(
            name=f"{dataset.name}_checkpoint", validation_definitions=[definition], actions=[],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_ID]},
        ))
        self.context, self.docs_dir = context, docs_dir
        self.chunks = 0

    def build_docs(self) -> None:
        """Render every chunk's stored validation result into the Data Docs site (once, at the end)."""
        if self.docs_dir is not None:
            self.context.build_data_docs(site_names=["flywheel"])

    def failures(self, frame: pd.DataFrame) -> dict[int, list[str]]:
        """Rules broken by each failing row of ``frame`` (which carries a ``_row`` id)."""
        result = self.checkpoint.run(batch_parameters={"dataframe": frame})
        self.chunks += 1
        reasons: dict[int, list[str]] = {}
        for validation in result.run_results.values():
            for res in validation.results:
                if res.success:
                    continue
                rule = _rule_name(res)
                for item in res.result.get("unexpected_index_list") or []:
                    reasons.setdefault(int(item[ROW_ID]), []).append(rule)
        return reasons


def validate(df: pd.DataFrame, dataset: DatasetSpec, ds: str, *, pii_key: bytes | None = None) -> ValidationResult:
    """Split an in-memory raw batch into curated and quarantined rows (PII as in :func:`split_file`).

    Raises :class:`ContractViolation` for batch-level failures.
    """
    check_batch(df, dataset, ds)
    raw = df.reset_index(drop=True)
    policies = pii.policies(dataset)
    # What GX sees: every PII column hashed (a copy of the raw rows when there is none).
    frame = _to_pandas(pii.for_validation(pa.RecordBatch.from_pandas(raw, preserve_index=False), dataset,
                                          pii_key)) if policies else raw.copy()
    frame[ROW_ID] = range(len(frame))
    reasons = ContractSuite(dataset, ds).failures(frame)
    bad = frame[ROW_ID].isin(reasons)
    from flywheel.data.keys import ROW_KEY, row_keys

    quarantined = frame[bad].copy()
    quarantined[REASONS] = quarantined[ROW_ID].map(lambda r: "; ".join(reasons[r]))
    quarantined[ROW_KEY] = row_keys(quarantined, dataset)
    quarantined = quarantined.drop(columns=[ROW_ID, *(c for c, policy in policies.items() if policy == "drop")])
    if policies:  # the curated rows from the raw ones, as the curated zone's policy says
        good = pa.RecordBatch.from_pandas(raw[~bad.to_numpy()].reset_index(drop=True), preserve_index=False)
        curated = _to_pandas(pii.for_curated(good, dataset, pii_key))
    else:
        curated = frame[~bad].drop(columns=[ROW_ID]).reset_index(drop=True)
    return ValidationResult(curated=curated, quarantined=quarantined.reset_index(drop=True),
                            rule_failures=_count(reasons))


def _count(reasons: dict[int, list[str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rules in reasons.values():
        for rule in rules:
            counts[rule] = counts.get(rule, 0) + 1
    return counts


def _quiet_gx() -> None:
    """GX logs every expectation at INFO and draws progress bars: keep task logs readable."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)


@dataclass
class _Split:
    """Streaming writers of the curated and quarantined rows of one partition."""

    curated: Path
    quarantined: Path
    raw_schema: pa.Schema
    dataset: DatasetSpec
    pii_key: bytes | None = None
    rows: dict[str, int] = field(default_factory=lambda: {"curated": 0, "quarantine": 0})
    failures: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import pyarrow.parquet as pq

        from flywheel.core.storage import PARQUET_OPTIONS

        self.schema = pii.schema_for(self.raw_schema, self.dataset, "curated")
        self.q_schema = quarantine_schema(pii.schema_for(self.raw_schema, self.dataset, "quarantine"))
        self._writers = {
            "curated": pq.ParquetWriter(self.curated, self.schema, **PARQUET_OPTIONS),
            "quarantine": pq.ParquetWriter(self.quarantined, self.q_schema, **PARQUET_OPTIONS),
        }

    def add(self, batch: pa.RecordBatch, frame: pd.DataFrame, reasons: dict[int, list[str]], offset: int) -> None:
        import numpy as np

        from flywheel.data.keys import row_keys

        local = {row - offset: rules for row, rules in reasons.items()}
        bad = np.zeros(batch.num_rows, dtype=bool)
        bad[list(local)] = True
        good = pii.for_curated(batch.filter(pa.array(~bad)), self.dataset, self.pii_key)
        self._writers["curated"].write_batch(good)
        rejected = pii.for_quarantine(batch.filter(pa.array(bad)), self.dataset, self.pii_key)
        why = pa.array(["; ".join(local[int(i)]) for i in np.flatnonzero(bad)], type=pa.string())
        ids = pa.array(row_keys(frame[bad], self.dataset).tolist(), type=pa.string())
        self._writers["quarantine"].write_batch(
            pa.RecordBatch.from_arrays([*rejected.columns, why, ids], schema=self.q_schema))
        self.rows["curated"] += good.num_rows
        self.rows["quarantine"] += rejected.num_rows
        for rule, n in _count(local).items():
            self.failures[rule] = self.failures.get(rule, 0) + n

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def _duplicate_keys(path: Path, dataset: DatasetSpec) -> dict[str, set[Any]]:
    """Values of each ``unique`` column seen more than once in the whole partition (duckdb scan)."""
    import duckdb

    out: dict[str, set[Any]] = {}
    with duckdb.connect() as con:
        for name, rule in dataset.contract.columns.items():
            if rule.unique:
                query = (f'SELECT "{name}" FROM read_parquet(?) WHERE "{name}" IS NOT NULL '
                         f'GROUP BY 1 HAVING count(*) > 1')
                out[name] = {row[0] for row in con.execute(query, [str(path)]).fetchall()}
    return out


def _duplicate_compound_keys(path: Path, dataset: DatasetSpec) -> set[tuple[Any, ...]]:
    """Values of a composite key seen more than once in the whole partition (duckdb scan)."""
    import duckdb

    columns = dataset.key_columns
    if len(columns) < 2:
        return set()
    cols = ", ".join(f'"{c}"' for c in columns)
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT {cols} FROM read_parquet(?) GROUP BY ALL HAVING count(*) > 1",
                           [str(path)]).fetchall()
    return {tuple(r) for r in rows}


def _key_failures(frame: pd.DataFrame, dataset: DatasetSpec, duplicates: dict[str, set[Any]],
                  compound: set[tuple[Any, ...]], repeated: Any) -> dict[int, str]:
    """Row id -> the key rule it breaks: a unique column, a composite key, or a repeated row."""
    from flywheel.data.keys import key_rule

    out: dict[int, str] = {}
    for column, dupes in duplicates.items():
        if dupes:
            for row in frame.loc[frame[column].isin(dupes), ROW_ID]:
                out[int(row)] = _unique_rule(column)
    if compound:
        keys = pd.MultiIndex.from_frame(frame[dataset.key_columns].astype(object))
        hit = keys.isin(list(compound))
        out.update({int(r): key_rule(dataset) for r in frame.loc[hit, ROW_ID]})
    if repeated is not None:
        mask = repeated.repeated(frame.drop(columns=[ROW_ID]))
        out.update({int(r): key_rule(dataset) for r in frame.loc[mask, ROW_ID]})
    return out


def quarantine_schema(schema: pa.Schema) -> pa.Schema:
    """A quarantine partition's schema: the raw columns, the rules broken, the row's key."""
    from flywheel.data.keys import ROW_KEY

    return schema.append(pa.field(REASONS, pa.string())).append(pa.field(ROW_KEY, pa.string()))


def _chunks(path: Path, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)


def _to_pandas(batch: pa.RecordBatch) -> pd.DataFrame:
    """Integers stay integers when they hold nulls (nullable Int64), as in the contract."""
    mapping = {t: pd.Int64Dtype() for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())}
    return batch.to_pandas(types_mapper=mapping.get)


def split_file(
    path: Path, dataset: DatasetSpec, ds: str, out_dir: Path, *, docs_dir: Path | None = None,
    pii_key: bytes | None = None,
) -> _Split:
    """Row-level validation of a local raw Parquet file, chunk by chunk, into two files.

    PII columns (:mod:`flywheel.core.pii`) are validated on their keyed hash and written as their
    policy says; ``pii_key`` is needed when the contract has any.
    """
    import pyarrow.parquet as pq

    from flywheel.data.keys import DuplicateRows

    schema = pq.read_schema(path)
    duplicates = _duplicate_keys(path, dataset)
    compound = _duplicate_compound_keys(path, dataset)
    repeated = DuplicateRows(dataset) if not dataset.key_columns else None
    suite = ContractSuite(dataset, ds, docs_dir=docs_dir)
    split = _Split(out_dir / "curated.parquet", out_dir / "quarantine.parquet", schema, dataset, pii_key)
    private = bool(pii.policies(dataset))
    offset = 0
    try:
        for batch in _chunks(path, dataset.chunk_rows):
            frame = _to_pandas(batch)  # the raw values: duplicate keys were found on them
            frame[ROW_ID] = range(offset, offset + len(frame))
            seen = frame
            if private:  # GX (and so Data Docs) and the quarantine's row keys see only hashes
                seen = _to_pandas(pii.for_validation(batch, dataset, pii_key))
                seen[ROW_ID] = frame[ROW_ID].to_numpy()
            reasons = suite.failures(seen)
            for row, rule in _key_failures(frame, dataset, duplicates, compound, repeated).items():
                rules = reasons.setdefault(row, [])
                if rule not in rules:
                    rules.append(rule)
            split.add(batch, seen, reasons, offset)
            offset += len(frame)
    finally:
        split.close()
    suite.build_docs()
    return split


def _batch_facts(path: Path, dataset: DatasetSpec) -> tuple[int, datetime | None]:
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(f'SELECT count(*), max("{dataset.timestamp}") FROM read_parquet(?)',
                          [str(path)]).fetchone()
    assert row is not None
    newest = row[1]
    if isinstance(newest, datetime) and newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return int(row[0]), newest if isinstance(newest, datetime) else None


def check_partition(path: Path, dataset: DatasetSpec, ds: str, history: list[int]) -> dict[str, Any]:
    """Every batch-level rule of a local raw file; raises :class:`ContractViolation`."""
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    rows = pq.ParquetFile(path).metadata.num_rows
    if rows == 0:
        raise ContractViolation(dataset.name, ds, "non_empty", "the batch has no rows")
    check_schema(schema, dataset, ds)
    volume = check_volume(rows, history, dataset, ds)
    _, newest = _batch_facts(path, dataset)
    check_freshness(newest, dataset, ds)
    return {"volume": volume, "newest": newest.isoformat() if newest else None}


def _history(name: str, ds: str, settings: Any, client: Any) -> list[int]:
    """Row counts of the raw batches committed before ``ds`` (oldest first)."""
    from flywheel.core import storage

    earlier = [d for d in storage.list_partitions(zone="raw", dataset=name, settings=settings, client=client)
               if d < ds][-30:]
    return [storage.read_manifest(zone="raw", dataset=name, ds=d, settings=settings, client=client).rows
            for d in earlier]


def validate_partition(spec: Any, ds: str, *, run_id: str = "", settings: Any = None) -> dict[str, Any]:
    """Validate the raw partition of ``ds``: write curated and quarantine partitions, as one commit.

    The whole stage holds the partition's lease (:func:`flywheel.core.lease.partition`), so the
    raw partition it reads is the one its output names, and a second writer of the day waits.
    A batch-level failure quarantines the whole batch with its reason, withdraws
    any curated partition of that date, and raises :class:`ContractViolation`. When more
    than the contract's ``max_quarantine_share`` of the rows is quarantined, both
    partitions are committed, then :class:`QuarantineShareExceeded` is raised.
    Every chunk's GX result is published as Data Docs to the reports zone. Raises
    :class:`~flywheel.core.lease.PartitionBusy` when another writer keeps the day longer than
    ``settings.partition_lease_wait_s``.
    """
    from flywheel.core import lease
    from flywheel.core.config import get_settings

    settings = settings or get_settings()
    with lease.partition(spec.dataset.name, ds, run_id=run_id, settings=settings) as held:
        summary = _validate_held(spec, ds, run_id=run_id, settings=settings, held=held)
    log.info("validated %s ds=%s: %s curated, %s quarantined; GX Data Docs: %s",
             spec.dataset.name, ds, summary["curated"], summary["quarantined"], summary["data_docs"].get("url"))
    check_quarantine_share(summary, spec.dataset, ds)
    return summary


def _validate_held(spec: Any, ds: str, *, run_id: str, settings: Any, held: Any) -> dict[str, Any]:
    from flywheel.core import storage

    name = spec.dataset.name
    client = storage.s3_client(settings)
    with tempfile.TemporaryDirectory(prefix="flywheel-validate-") as tmp_dir:
        tmp = Path(tmp_dir)
        raw_manifest, (path,) = storage.download_partition(zone="raw", dataset=name, ds=ds, dest=tmp,
                                                            settings=settings, client=client)
        try:
            facts = check_partition(path, spec.dataset, ds, _history(name, ds, settings, client))
        except ContractViolation as exc:
            _quarantine_batch(path, exc, spec, ds, run_id=run_id, settings=settings, client=client, held=held)
            raise
        split = split_file(path, spec.dataset, ds, tmp, docs_dir=tmp / "docs",
                           pii_key=pii.key_bytes(settings, spec.dataset))
        docs = publish_data_docs(tmp / "docs", name, ds, settings=settings, client=client)
        summary = {
            "rows": raw_manifest.rows,
            "curated": split.rows["curated"],
            "quarantined": split.rows["quarantine"],
            "rule_failures": split.failures,
            "chunks": -(-raw_manifest.rows // spec.dataset.chunk_rows),
            "batch": facts,
            "data_docs": docs,
        }
        # One commit: the curated manifest carries the quarantine one (layout.UNIT_RECORD).
        storage.commit([storage.Part("curated", split.curated, split.rows["curated"], split.schema),
                        storage.Part("quarantine", split.quarantined, split.rows["quarantine"], split.q_schema)],
                       dataset=name, ds=ds, run_id=run_id,
                       source=f"raw/{name}/ds={ds}@{raw_manifest.content_hash[:16]}",
                       extra=summary, settings=settings, client=client, lease=held)
    return summary


def _quarantine_batch(
    path: Path, exc: ContractViolation, spec: Any, ds: str, *, run_id: str, settings: Any, client: Any, held: Any
) -> None:
    """The whole batch goes to quarantine with its reason; no curated partition remains.

    The quarantine manifest is committed first; withdrawing the curated manifest (which carries
    the day's previous quarantine manifest) is what switches readers to this one.
    """
    import pyarrow.parquet as pq

    from flywheel.core import storage

    name = spec.dataset.name
    from flywheel.data.keys import row_keys

    parquet = pq.ParquetFile(path)
    key = pii.key_bytes(settings, spec.dataset)
    schema = quarantine_schema(pii.schema_for(parquet.schema_arrow, spec.dataset, "quarantine"))
    why = f"batch: {exc.rule}: {exc.detail}"

    def ids(batch: pa.RecordBatch) -> pa.Array:
        frame = _to_pandas(pii.for_validation(batch, spec.dataset, key))
        if all(c in frame.columns for c in spec.dataset.key_columns):
            return pa.array(row_keys(frame, spec.dataset).tolist(), type=pa.string())
        return pa.nulls(batch.num_rows, pa.string())  # the key's columns are missing

    def tagged() -> Iterator[pa.RecordBatch]:
        for batch in parquet.iter_batches(batch_size=256 * 1024):
            kept = pii.for_quarantine(batch, spec.dataset, key)
            yield pa.RecordBatch.from_arrays(
                [*kept.columns, pa.array([why] * batch.num_rows, pa.string()), ids(batch)], schema=schema)

    out = path.with_name("quarantine-batch.parquet")
    rows = storage.write_batches(tagged(), schema, out)
    storage.commit_file(out, zone="quarantine", dataset=name, ds=ds, rows=rows, schema=schema, run_id=run_id,
                        source=f"raw/{name}/ds={ds}", extra={"batch_failure": exc.rule, "detail": exc.detail},
                        settings=settings, client=client, lease=held)
    storage.delete_partition(zone="curated", dataset=name, ds=ds, settings=settings, client=client, lease=held)


def publish_data_docs(docs_dir: Path, dataset: str, ds: str, *, settings: Any, client: Any) -> dict[str, str]:
    """Upload a GX Data Docs site to ``<reports>/data-docs/<dataset>/ds=<ds>/`` (replacing it)."""
    from flywheel.core import layout, storage

    if not (docs_dir / "index.html").is_file():
        return {}
    bucket = settings.bucket("reports")
    prefix = layout.data_docs_prefix(dataset, ds)
    keep = set()
    for file in sorted(p for p in docs_dir.rglob("*") if p.is_file()):
        key = prefix + file.relative_to(docs_dir).as_posix()
        content_type = "text/html" if file.suffix == ".html" else "application/octet-stream"
        if file.suffix == ".css":
            content_type = "text/css"
        client.upload_file(str(file), bucket, key, ExtraArgs={"ContentType": content_type})
        keep.add(key)
    storage._remove_stale(client, bucket, prefix, keep=keep)
    return {"uri": f"s3://{bucket}/{prefix}index.html",
            "url": f"{settings.s3_endpoint_url}/{bucket}/{prefix}index.html"}
