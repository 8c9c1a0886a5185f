"""The fraud features written by hand, as the engine hard-coded them before the spec language.

Frozen on purpose, for two readers: tests/unit/test_feature_language.py proves that
models/fraud.yaml, compiled by the engine, computes exactly these values; benchmarks/pipeline.py
uses it as the plain script's feature step (what a user would write without Flywheel).

Original docstring: feature computation shared by training and serving.

* Entity aggregates (per user, per merchant) over a trailing window of curated
  days; stored as the Feast offline source and materialized online.
* Request features derived from the transaction itself.
* Derived features combining both (e.g. amount relative to the user's mean).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd

CATEGORIES = ["grocery", "fuel", "restaurant", "travel", "electronics", "online_retail", "gambling", "pharmacy"]
DEVICES = ["mobile", "desktop", "pos", "unknown"]

# Windows of the entity aggregates, as of the end of each data interval.
WINDOWS = {"1h": "1 hour", "24h": "24 hours", "7d": "7 days"}
USER_FEATURES = [
    "user_txn_count_1h", "user_txn_count_24h", "user_txn_count_7d",
    "user_amount_sum_24h", "user_amount_mean_7d", "user_amount_max_7d", "user_amount_std_7d",
    "user_seconds_since_last_txn", "user_top_country",
]
MERCHANT_FEATURES = [
    "merchant_txn_count_1h", "merchant_txn_count_24h", "merchant_txn_count_7d",
    "merchant_amount_mean_7d", "merchant_fraud_rate_7d",
]
REQUEST_FEATURES = [
    "amount", "log_amount", "hour", "is_night", "merchant_category_code", "device_code",
]
DERIVED_FEATURES = ["is_foreign", "amount_to_user_mean"]
MODEL_FEATURES = (
    REQUEST_FEATURES
    + DERIVED_FEATURES
    + [f for f in USER_FEATURES if f != "user_top_country"]
    + MERCHANT_FEATURES
)
# Values used when an entity has no online features (new user or merchant).
ENTITY_DEFAULTS: dict[str, float | str | None] = {
    name: (0 if "_txn_count_" in name or name.endswith("_sum_24h") else None)
    for name in USER_FEATURES + MERCHANT_FEATURES
}


def feature_timestamp(ds: date) -> datetime:
    """Aggregates over days ≤ ds become valid when ds closes (next midnight UTC)."""
    return datetime.combine(ds + timedelta(days=1), time.min, tzinfo=UTC)


def _counts(entity: str, column: str = "ts") -> str:
    return ", ".join(
        f"count(*) FILTER (WHERE {column} >= $stamp - INTERVAL '{span}') AS {entity}_txn_count_{name}"
        for name, span in WINDOWS.items()
    )


# An entity that had transactions in the day before the 7-day window but none inside it gets a
# "drop-out" row (counts 0, window statistics NULL): its latest row then says "inactive" instead
# of repeating its last active week, identically offline (point-in-time join) and online.
SEEN = "8 days"


def _user_sql(source: str) -> str:
    return f"""
    WITH seen AS (SELECT user_id, amount, country, event_timestamp AS ts FROM {source}
                  WHERE event_timestamp >= $stamp - INTERVAL '{SEEN}' AND event_timestamp < $stamp),
    w AS (SELECT * FROM seen WHERE ts >= $stamp - INTERVAL '7 days'),
    top AS (SELECT user_id, first(country ORDER BY n DESC, country) AS user_top_country
            FROM (SELECT user_id, country, count(*) AS n FROM w GROUP BY ALL) GROUP BY user_id)
    SELECT CAST(seen.user_id AS BIGINT) AS user_id, {_counts("user")},
           coalesce(sum(amount) FILTER (WHERE ts >= $stamp - INTERVAL '24 hours'), 0.0) AS user_amount_sum_24h,
           avg(amount) FILTER (WHERE ts >= $stamp - INTERVAL '7 days') AS user_amount_mean_7d,
           max(amount) FILTER (WHERE ts >= $stamp - INTERVAL '7 days') AS user_amount_max_7d,
           stddev_samp(amount) FILTER (WHERE ts >= $stamp - INTERVAL '7 days') AS user_amount_std_7d,
           CAST(epoch($stamp) - epoch(max(ts)) AS DOUBLE) AS user_seconds_since_last_txn,
           any_value(top.user_top_country) AS user_top_country,
           $stamp AS event_timestamp
    FROM seen LEFT JOIN top USING (user_id) GROUP BY seen.user_id ORDER BY user_id"""


def _merchant_sql(source: str, label: str, lag_days: int) -> str:
    return f"""
    WITH w AS (SELECT merchant_id, amount, "{label}" AS label, event_timestamp AS ts FROM {source}
               WHERE event_timestamp >= $stamp - INTERVAL '{7 + lag_days} days' AND event_timestamp < $stamp)
    SELECT CAST(merchant_id AS BIGINT) AS merchant_id, {_counts("merchant")},
           avg(amount) FILTER (WHERE ts >= $stamp - INTERVAL '7 days') AS merchant_amount_mean_7d,
           -- labels arrive late: only transactions older than the lag count towards the rate
           avg(CAST(label AS DOUBLE)) FILTER (
               WHERE ts < $stamp - INTERVAL '{lag_days} days') AS merchant_fraud_rate_7d,
           $stamp AS event_timestamp
    FROM w GROUP BY merchant_id
    HAVING count(*) FILTER (WHERE ts >= $stamp - INTERVAL '{SEEN}') > 0 ORDER BY merchant_id"""


def _run(sql: str, ds: date, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        # One thread: parallel float aggregates (avg, stddev) combine partial states in
        # completion order, so a rerun could differ in the last bit and break byte-identical
        # partitions. A day's windows are small; the scan stays streamed.
        con.execute("SET threads = 1")
        if frame is not None:
            con.register("window_frame", frame)
        out = con.execute(sql, {"stamp": feature_timestamp(ds)}).df()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    for column in out.columns:
        if "_txn_count_" in column:
            out[column] = out[column].astype("int64")
    return out


def parquet_source(paths: list[str]) -> str:
    """A duckdb relation over Parquet files (scanned, never loaded whole)."""
    return "read_parquet([" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "])"


def user_aggregates(window: pd.DataFrame | list[str], ds: date) -> pd.DataFrame:
    """Per-user aggregates (1 h / 24 h / 7 d windows) as of the end of ``ds``.

    ``window`` is a frame of curated rows or a list of curated Parquet files.
    """
    if isinstance(window, list):
        return _run(_user_sql(parquet_source(window)), ds)
    return _run(_user_sql("window_frame"), ds, window)


def merchant_aggregates(
    window: pd.DataFrame | list[str], ds: date, *, label: str, label_lag_days: int = 1
) -> pd.DataFrame:
    """Per-merchant aggregates; the fraud rate uses labels older than ``label_lag_days`` only."""
    if isinstance(window, list):
        return _run(_merchant_sql(parquet_source(window), label, label_lag_days), ds)
    return _run(_merchant_sql("window_frame", label, label_lag_days), ds, window)


def request_features(df: pd.DataFrame) -> pd.DataFrame:
    """Features computable from a transaction alone."""
    ts = pd.to_datetime(df["event_timestamp"], utc=True)
    out = pd.DataFrame(index=df.index)
    out["amount"] = df["amount"].astype("float64")
    out["log_amount"] = np.log1p(out["amount"].clip(lower=0))
    out["hour"] = ts.dt.hour.astype("int64")
    out["is_night"] = ((out["hour"] < 6) | (out["hour"] == 23)).astype("int64")
    out["merchant_category_code"] = _codes(df["merchant_category"], CATEGORIES)
    out["device_code"] = _codes(df["device"], DEVICES)
    return out


def _codes(values: pd.Series, vocabulary: list[str]) -> pd.Series:
    mapping = {v: i for i, v in enumerate(vocabulary)}
    return values.map(mapping).fillna(-1).astype("int64")


def model_matrix(transactions: pd.DataFrame, entity_features: pd.DataFrame) -> pd.DataFrame:
    """The model's input: request + entity + derived features, in ``MODEL_FEATURES`` order.

    ``entity_features`` is aligned row by row with ``transactions`` (the output of a
    Feast historical or online lookup); missing entities carry NaN.
    """
    req = request_features(transactions)
    ent = entity_features.reset_index(drop=True).set_axis(req.index)
    out = pd.concat([req, ent[[c for c in ENTITY_DEFAULTS if c in ent.columns]]], axis=1)
    for column, default in ENTITY_DEFAULTS.items():
        if column not in out.columns:
            out[column] = default
    top = out.pop("user_top_country")
    out["is_foreign"] = (top.notna() & (transactions["country"].values != top.values)).astype("int64")
    mean = pd.to_numeric(out["user_amount_mean_7d"], errors="coerce")
    out["amount_to_user_mean"] = out["amount"] / mean.where(mean > 0)
    numeric = out[MODEL_FEATURES].apply(pd.to_numeric, errors="coerce")
    return numeric.astype("float64")
