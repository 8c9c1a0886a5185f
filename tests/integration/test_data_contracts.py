"""Bad batches through ingest → validate on a real S3 store with Great Expectations.

Every case asserts where each input row went: curated + quarantined = input, and
every quarantined row carries the rule it broke. Batch-level failures raise a
typed error naming dataset, partition and rule, and leave no curated partition.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from examples.fraud.generator import generate_day
from flywheel.core import storage
from flywheel.core.spec import PipelineSpec
from flywheel.data.ingest import SourceNotFound, ingest
from flywheel.data.validation import REASONS, ContractViolation, validate_partition

pytestmark = pytest.mark.integration
DS = "2026-02-10"
DAY = date.fromisoformat(DS)


def _spec(spec: PipelineSpec, case: str, fmt: str = "parquet", **contract: object) -> PipelineSpec:
    dataset = spec.dataset.model_copy(update={
        "name": f"bad_{case}", "format": fmt, "source": "{home}/landing-bad/" + case + "/ds={ds}",
        "contract": spec.dataset.contract.model_copy(update=contract),
    })
    return spec.model_copy(update={"dataset": dataset})


def _clean(rows: int = 400) -> pd.DataFrame:
    from examples.fraud.generator import GeneratorSpec

    return generate_day(DAY, GeneratorSpec(rows_per_day=rows), bad_records=False)


def _land(settings, spec: PipelineSpec, frame: pd.DataFrame | None = None, *, raw: bytes | None = None,
          name: str | None = None, ds: str = DS) -> Path:
    folder = Path(spec.source_for(ds, settings))
    folder.mkdir(parents=True, exist_ok=True)
    ext = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}[spec.dataset.format]
    path = folder / (name or f"part-0.{ext}")
    if raw is not None:
        path.write_bytes(raw)
    elif spec.dataset.format == "parquet":
        frame.to_parquet(path, index=False)
    elif spec.dataset.format == "csv":
        frame.to_csv(path, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    else:
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    return path


def _run(settings, spec: PipelineSpec, ds: str = DS) -> dict:
    ingest(spec, ds, run_id="contract-test", settings=settings)
    return validate_partition(spec, ds, run_id="contract-test", settings=settings)


def _zone(settings, spec, zone: str, ds: str = DS) -> pd.DataFrame:
    return storage.read_partition(zone=zone, dataset=spec.dataset.name, ds=ds, settings=settings)


def _assert_row_split(settings, spec, rows_in: int, rule: str) -> pd.DataFrame:
    curated, quarantined = _zone(settings, spec, "curated"), _zone(settings, spec, "quarantine")
    assert len(curated) + len(quarantined) == rows_in
    assert len(quarantined) > 0 and quarantined[REASONS].str.len().gt(0).all()
    assert quarantined[REASONS].str.contains(rule, regex=False).any()
    return quarantined


def _assert_batch_quarantined(settings, spec, err, rows_in: int, rule: str) -> None:
    assert err.value.rule == rule
    assert spec.dataset.name in str(err.value) and DS in str(err.value) and rule in str(err.value)
    quarantined = _zone(settings, spec, "quarantine")
    assert len(quarantined) == rows_in
    assert quarantined[REASONS].str.startswith(f"batch: {rule}").all()
    with pytest.raises(storage.PartitionNotFound):
        _zone(settings, spec, "curated")


# --- row-level failures: bad rows quarantined with their rule, the rest curated ------------------

@pytest.mark.parametrize(("case", "mutate", "rule"), [
    ("nulls", lambda df: df.assign(user_id=df.user_id.mask(df.index % 50 == 0)), "not_be_null(user_id)"),
    ("range", lambda df: df.assign(amount=df.amount.mask(df.index % 40 == 0, -5.0)), "be_between(amount)"),
    ("dupes", lambda df: df.assign(transaction_id=df.transaction_id.mask(df.index % 30 == 1,
                                                                         df.transaction_id.shift(1))),
     "be_unique(transaction_id)"),
    ("future", lambda df: df.assign(event_timestamp=df.event_timestamp.mask(
        df.index % 25 == 0, pd.Timestamp("2030-01-01", tz="UTC"))), "be_between(event_timestamp)"),
])
def test_row_level_failures_are_quarantined_with_their_rule(services, spec, case, mutate, rule):
    s = _spec(spec, case, max_quarantine_share=1.0)  # the share rule: test_data_onboarding.py
    frame = mutate(_clean())
    _land(services, s, frame)
    summary = _run(services, s)
    assert summary["curated"] + summary["quarantined"] == len(frame)
    _assert_row_split(services, s, len(frame), rule)


# --- batch-level failures: the whole batch is quarantined, the task fails with a typed error ---

@pytest.mark.parametrize(("case", "fmt", "mutate", "rule"), [
    ("missing_column", "parquet", lambda df: df.drop(columns=["amount"]), "columns_present"),
    ("renamed_column", "parquet", lambda df: df.rename(columns={"amount": "amt"}), "columns_present"),
    ("new_column", "parquet", lambda df: df.assign(channel="web"), "no_unexpected_columns"),
    ("wrong_type", "csv", lambda df: df.assign(amount=df.amount.astype(str).where(df.index > 0, "twelve")),
     "column_type"),
])
def test_batch_level_failures_quarantine_the_whole_batch(services, spec, case, fmt, mutate, rule):
    s = _spec(spec, case, fmt)
    frame = mutate(_clean())
    _land(services, s, frame)
    with pytest.raises(ContractViolation) as err:
        _run(services, s)
    _assert_batch_quarantined(services, s, err, len(frame), rule)


def test_wrong_encoding_is_a_batch_failure(services, spec):
    s = _spec(spec, "encoding", "csv")
    frame = _clean().assign(country="CÔTE-D'IVOIRE")
    text = frame.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
    _land(services, s, raw=text.encode("latin-1"))
    with pytest.raises(ContractViolation) as err:
        _run(services, s)
    _assert_batch_quarantined(services, s, err, len(frame), "encoding")


def test_label_present_where_it_must_not_be(services, spec):
    """A scoring feed must not carry the label (it would leak into features)."""
    columns = {k: v for k, v in spec.dataset.contract.columns.items() if k != "is_fraud"}
    s = _spec(spec, "label_leak", columns=columns, forbidden_columns=["is_fraud"])
    frame = _clean()
    _land(services, s, frame)
    with pytest.raises(ContractViolation) as err:
        _run(services, s)
    _assert_batch_quarantined(services, s, err, len(frame), "forbidden_columns")


def test_volume_anomaly_relative_to_recent_history(services, spec):
    from flywheel.core.spec import VolumeRule

    s = _spec(spec, "volume", volume=VolumeRule(history=7, min_history=3, min_ratio=0.5, max_ratio=2.0))
    for back in (3, 2, 1):
        ds = (DAY - timedelta(days=back)).isoformat()
        frame = _clean().assign(event_timestamp=lambda d, b=back: d.event_timestamp - pd.Timedelta(days=b))
        _land(services, s, frame, ds=ds)
        _run(services, s, ds)
    small = _clean().head(40)
    _land(services, s, small)
    with pytest.raises(ContractViolation) as err:
        _run(services, s)
    _assert_batch_quarantined(services, s, err, len(small), "row_volume")


def test_stale_batch_breaks_freshness(services, spec):
    s = _spec(spec, "stale", freshness_hours=6.0, timestamp_in_interval=False)
    frame = _clean().assign(event_timestamp=lambda d: d.event_timestamp.dt.floor("D") + pd.Timedelta(hours=2))
    _land(services, s, frame)
    with pytest.raises(ContractViolation) as err:
        _run(services, s)
    _assert_batch_quarantined(services, s, err, len(frame), "freshness")


# --- unreadable files: quarantined byte for byte, nothing downstream ------------------------------

def _assert_file_quarantined(settings, spec, err, path: Path, rule: str) -> None:
    assert err.value.rule == rule and spec.dataset.name in str(err.value) and DS in str(err.value)
    manifest = storage.read_manifest(zone="quarantine", dataset=spec.dataset.name, ds=DS, settings=settings)
    assert manifest.extra["batch_failure"] == rule and manifest.extra["unreadable"]
    body = storage.get_bytes("quarantine", manifest.files[0]["key"], settings=settings)
    assert body == path.read_bytes()
    for zone in ("raw", "curated"):
        with pytest.raises(storage.PartitionNotFound):
            _zone(settings, spec, zone)


def test_empty_file(services, spec):
    s = _spec(spec, "empty", "csv")
    path = _land(services, s, raw=b"")
    with pytest.raises(ContractViolation) as err:
        ingest(s, DS, settings=services)
    _assert_file_quarantined(services, s, err, path, "non_empty")


def test_truncated_parquet_file(services, spec, tmp_path):
    s = _spec(spec, "truncated")
    whole = tmp_path / "whole.parquet"
    _clean().to_parquet(whole, index=False)
    data = whole.read_bytes()
    path = _land(services, s, raw=data[: len(data) // 2])
    with pytest.raises(ContractViolation) as err:
        ingest(s, DS, settings=services)
    _assert_file_quarantined(services, s, err, path, "readable")


def test_schema_drift_between_files_of_one_batch(services, spec):
    s = _spec(spec, "drift")
    frame = _clean()
    _land(services, s, frame.head(200), name="part-0.parquet")
    _land(services, s, frame.tail(200).assign(amount=lambda d: d.amount.astype(str)), name="part-1.parquet")
    with pytest.raises(ContractViolation) as err:
        ingest(s, DS, settings=services)
    assert err.value.rule == "schema_drift"


# --- a very large file: validated in chunks, uniqueness checked across chunks ---------------------

def test_large_file_is_validated_in_chunks(services, spec):
    s = _spec(spec, "large")
    s = s.model_copy(update={"dataset": s.dataset.model_copy(update={"chunk_rows": 50_000})})
    frame = _clean(rows=200_000)
    # a key repeated far apart: only a cross-chunk check sees it
    frame.loc[len(frame) - 1, "transaction_id"] = frame.loc[0, "transaction_id"]
    frame.loc[len(frame) // 2, "amount"] = -1.0
    _land(services, s, frame)
    summary = _run(services, s)
    assert summary["chunks"] >= 4
    quarantined = _assert_row_split(services, s, len(frame), "be_unique(transaction_id)")
    assert len(quarantined) == 3
    assert summary["data_docs"]["uri"].endswith("index.html")
    html = storage.get_bytes("reports", summary["data_docs"]["uri"].split("/", 3)[3], settings=services)
    assert b"<html" in html.lower()


# --- replay: a quarantined batch is processed again once the data are fixed ---------------------

def test_replay_after_the_data_is_fixed(services, spec):
    from flywheel.runs import replay

    s = _spec(spec, "replay")
    frame = _clean()
    path = _land(services, s, frame.drop(columns=["device"]))
    with pytest.raises(ContractViolation):
        _run(services, s)
    _land(services, s, frame)  # the producer re-delivers a fixed file
    result = replay(s, DS, run_id="replay-test", settings=services, features=False)
    assert result["validate"]["curated"] == len(frame) and path.exists()
    assert len(_zone(services, s, "curated")) == len(frame)
    assert len(_zone(services, s, "quarantine")) == 0


def test_ingest_from_s3_records_object_versions(services, spec):
    s = _spec(spec, "s3src", "jsonl")
    s = s.model_copy(update={"dataset": s.dataset.model_copy(
        update={"source": "s3://" + services.bucket("raw") + "/_landing/bad_s3src/ds={ds}/"})})
    frame = _clean()
    body = frame.to_json(orient="records", lines=True, date_format="iso").encode()
    storage.put_bytes("raw", f"_landing/bad_s3src/ds={DS}/part-0.jsonl", body, settings=services)
    result = ingest(s, DS, run_id="s3-test", settings=services)
    manifest = storage.read_manifest(zone="raw", dataset=s.dataset.name, ds=DS, settings=services)
    assert result.rows == len(frame) == manifest.rows and manifest.run_id == "s3-test"
    assert manifest.inputs[0]["uri"].endswith("part-0.jsonl") and manifest.inputs[0]["version"]
    table = pq.read_table(pa.BufferReader(storage.get_bytes("raw", manifest.files[0]["key"], settings=services)))
    assert pa.types.is_timestamp(table.schema.field("event_timestamp").type)
    summary = validate_partition(s, DS, settings=services)
    assert summary["curated"] == len(frame)


def test_the_engine_has_no_generator_source(services, spec):
    """Data arrives as files (the examples write theirs): ``generator://`` is no source."""
    s = _spec(spec, "generator")
    s = s.model_copy(update={"dataset": s.dataset.model_copy(update={"source": "generator://"})})
    with pytest.raises(SourceNotFound, match="generator://"):
        ingest(s, DS, run_id="gen", settings=services)
