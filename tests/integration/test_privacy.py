"""Privacy: a dataset with PII columns, onboarded by spec alone, through its whole loop; then every
object, artifact and log is scanned for the raw values (docs/security.md, "Privacy").

The rides dataset has three PII columns, one per policy: ``rider_email`` (``hash``: the rider
entity's join key), ``rider_phone`` (``drop``; ``unique``, and some phones repeat, so a GX rule on
a PII column fails and Data Docs show its unexpected values) and ``home_zip`` (``features_only``:
a station's distinct home zips, an aggregate). The loop: ingest and validate (curated,
quarantine, Data Docs), features (offline and online), training (MLflow run, artifacts, registry),
a real model server answering HTTP requests that carry raw e-mails (prediction log, access log),
monitoring (drift report, performance, skew). The raw zone and the landing files hold the values
by design; `home_zip` may also be in the curated zone (features only). Nowhere else.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flywheel.core import pii, storage
from flywheel.core.spec import load_spec_file
from flywheel.monitoring.drift import load_predictions
from flywheel.runs import data_day, monitoring_day, training_run

from .serving_support import source_server

pytestmark = pytest.mark.integration
FIRST = date(2026, 5, 1)
DAYS = 5
RIDERS, STATIONS = 60, 5

SPEC = {
    "name": "rides",
    "model_name": "rides-long",
    "owner": "privacy-test",
    "dataset": {
        "name": "rides",
        "source": "{home}/landing/rides/ds={ds}",
        "format": "csv",
        "timestamp": "started_at",
        "key": "ride_id",
        "contract": {"columns": {
            "ride_id": {"type": "string", "nullable": False, "unique": True},
            "started_at": {"type": "datetime", "nullable": False},
            "rider_email": {"type": "string", "nullable": False, "pii": True},
            "rider_phone": {"type": "string", "unique": True, "pii": True, "pii_policy": "drop"},
            "home_zip": {"type": "string", "pii": True, "pii_policy": "features_only"},
            "station": {"type": "string", "nullable": False, "allowed": [f"st{i}" for i in range(STATIONS)]},
            "km": {"type": "float", "nullable": False, "min": 0, "max": 100},
            "minutes": {"type": "float", "nullable": False, "min": 0},
        }},
    },
    "label": {"expr": "minutes > 25", "name": "long_ride"},
    "features": {
        "entities": {
            "rider": {"keys": ["rider_email"], "aggregations": {
                "rider_rides_7d": {"fn": "count", "window": "7d", "default": 0},
                "rider_km_mean_7d": {"fn": "mean", "column": "km", "window": "7d"}}},
            "station": {"keys": ["station"], "aggregations": {
                "station_zips_7d": {"fn": "distinct_count", "column": "home_zip", "window": "7d"}}},
        },
        "request": {"km": {"fn": "value", "column": "km"}, "hour": {"fn": "hour"},
                    "station_code": {"fn": "category", "column": "station"}},
    },
    "training": {"lookback_days": 10, "split": {"train": 0.7, "validation": 0.15, "holdout": 0.15},
                 "min_improvement": -1.0, "slice_tolerance": 1.0,
                 "candidates": {"xgboost": {"params": {"n_estimators": 30, "max_depth": 3}}},
                 "search": {"trials": 0}},
    "monitoring": {"features": ["km", "rider_rides_7d"], "min_rows": 10},
}


def _people() -> pd.DataFrame:
    i = np.arange(RIDERS)
    return pd.DataFrame({"rider_email": [f"rider{n:03d}.secret@example.org" for n in i],
                         "home_zip": [f"zip{90000 + 7 * n}" for n in i]})


def _land(home: Path, day: date, rng: np.random.Generator) -> list[str]:
    """One day's CSV file; returns the phone numbers in it."""
    n = 300
    people = _people().iloc[rng.integers(0, RIDERS, n)].reset_index(drop=True)
    km = rng.gamma(2.0, 2.0, n).round(2)
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    frame = pd.DataFrame({
        "ride_id": [f"{day:%m%d}-{k:04d}" for k in range(n)],
        "started_at": [start + timedelta(seconds=int(s)) for s in np.sort(rng.integers(0, 86_400, n))],
        **{c: people[c] for c in people.columns},
        "station": rng.choice([f"st{k}" for k in range(STATIONS)], n),
        "km": km,
        "minutes": (km * 5 + rng.normal(0, 4, n)).clip(1).round(1),
    })
    # The phone a ride was booked from; three are booked twice, so the drop column's `unique`
    # rule fails (6 rows quarantined) and GX reports its unexpected values (hashed).
    phones = [f"+1-555-{day:%m%d}-{k:04d}" for k in range(n)]
    phones[3:6] = phones[0:3]
    frame["rider_phone"] = phones
    folder = home / "landing" / "rides" / f"ds={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "part-0.csv", index=False)
    return phones


def secrets_of(people: pd.DataFrame, phones: list[str] = ()) -> dict[str, list[str]]:
    return {"email": people["rider_email"].tolist() + ["someone.new@example.org"],
            "phone": list(phones), "zip": people["home_zip"].tolist()}


def _hits(data: bytes, secrets: dict[str, list[str]]) -> set[str]:
    """Which kinds of secret (email, phone, zip) occur in ``data``, read as bytes and, for Parquet,
    as its decoded cells (compressed pages hide their strings from a byte scan)."""
    texts = [data]
    if data[:4] == b"PAR1":
        import io

        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except pa.ArrowInvalid:  # another test's deliberately truncated file (quarantined byte for byte)
            table = None
        if table is not None:
            texts.append(" ".join(map(str, (v for col in table.columns for v in col.to_pylist()))).encode())
    found = set()
    for kind, values in secrets.items():
        if any(v.encode() in t for t in texts for v in values):
            found.add(kind)
    return found


def test_pii_never_leaves_the_raw_zone_unhashed(services, tmp_path):
    rng = np.random.default_rng(11)
    phones = [p for offset in range(DAYS) for p in _land(services.home, FIRST + timedelta(days=offset), rng)]
    specs = tmp_path / "models"
    specs.mkdir()
    (specs / "rides.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    spec = load_spec_file(specs / "rides.yaml")
    settings = services.model_copy(update={"specs_dir": specs})
    assert settings.pii_key is not None, "flywheel up generated the PII key"

    for offset in range(DAYS):
        ds = (FIRST + timedelta(days=offset)).isoformat()
        out = data_day(spec, ds, run_id="privacy", settings=settings)
        assert out["validate"]["quarantined"] == 6, "repeated phones break the drop column's unique rule"
        assert "expect_column_values_to_be_unique(rider_phone)" in out["validate"]["rule_failures"]
    last = FIRST + timedelta(days=DAYS - 1)
    curated = storage.read_partition(zone="curated", dataset="rides", ds=last.isoformat(), settings=settings)
    key = settings.pii_key.get_secret_value().encode()
    assert "rider_phone" not in curated.columns
    assert set(curated["rider_email"]) <= set(pii.hash_values(_people()["rider_email"].tolist(), key))
    assert curated["home_zip"].str.startswith("zip").all(), "features_only: kept for the aggregation SQL"

    result = training_run(spec, last, reason="privacy test", settings=settings)
    assert result.version, result.reason
    if not result.promoted:
        from flywheel.training import promotion

        promotion.promote(spec.model_name, result.version, reason="privacy test", actor="test", settings=settings)

    people = _people()
    rows = [{"ride_id": f"live-{k}", "started_at": f"{last.isoformat()}T{8 + k % 12:02d}:15:00Z",
             "rider_email": people["rider_email"][k % RIDERS], "station": f"st{k % STATIONS}",
             "km": float(1 + k % 9)} for k in range(40)]
    # inside the session stack's block, apart from its other ports (tests/ports.py)
    with source_server(settings, tmp_path, port=settings.ports.model_server + 60,
                       FLYWHEEL_SPECS_DIR=str(specs)) as http:
        answered = http.post("/rides/predict_batch", json=rows)
        assert answered.status_code == 200, answered.text
        scored = answered.json()
        assert [r["ride_id"] for r in scored] == [r["ride_id"] for r in rows]  # the caller's ids, as sent
        assert not any(r["unknown_entities"] for r in scored), "hashed e-mails find their online features"
        one = http.post("/rides/predict", json=rows[0] | {"rider_email": "someone.new@example.org"})
        assert one.status_code == 200 and one.json()["unknown_entities"] == ["rider"]
    logged = load_predictions(spec, start=last, end=last, settings=settings)
    assert len(logged) == len(rows) + 1, "every acknowledged prediction is logged"
    assert set(logged["rider_email"]) <= set(pii.hash_values(secrets_of(people)["email"], key))
    decision = monitoring_day(spec, last, run_id="privacy", settings=settings)
    assert decision is not None

    secrets = secrets_of(people, phones)
    leaks, scanned = _scan(settings, services.home, secrets)
    assert leaks.pop("raw") == {"email", "phone", "zip"}, "the scan finds the values where they are kept"
    for log in tmp_path.glob("*.log"):  # the model server's own log: access log included
        if _hits(log.read_bytes(), secrets):
            leaks[str(log)] = _hits(log.read_bytes(), secrets)
    assert scanned > 50, f"only {scanned} objects and files scanned"
    assert not leaks, f"raw PII outside the raw zone: {leaks}"


def _scan(settings, home: Path, secrets: dict[str, list[str]]) -> tuple[dict[str, set[str]], int]:
    """Every object of every zone but raw, and every file of the home but the landing files and
    the object store's volumes: where each kind of secret was found, and how many were read."""
    client = storage.s3_client(settings)
    leaks: dict[str, set[str]] = {}
    scanned = 0
    for zone in ("raw", "curated", "quarantine", "features", "predictions", "reports", "mlflow"):
        bucket = settings.bucket(zone)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                found = _hits(client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read(), secrets)
                scanned += 1
                if zone == "raw":  # the landing copy: the values are there, and the scan sees them
                    leaks.setdefault("raw", set()).update(found)
                    continue
                if zone == "curated":
                    found.discard("zip")  # features_only: the aggregation SQL reads it there
                if found:
                    leaks[f"s3://{bucket}/{item['Key']}"] = found
    for path in sorted(p for p in home.rglob("*") if p.is_file() and not {"landing", "seaweedfs"} & set(p.parts)):
        if path.stat().st_size < 50_000_000:
            found = _hits(path.read_bytes(), secrets)
            scanned += 1
            if found:
                leaks[str(path)] = found
    return leaks, scanned
