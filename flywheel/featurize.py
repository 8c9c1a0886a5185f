"""Feature computation shared by training and serving (one code path, no skew).

* Entity aggregates (per user, per merchant) over a trailing window of curated
  days; stored as the Feast offline source and materialized online.
* Request features derived from the transaction itself.
* Derived features combining both (e.g. amount relative to the user's mean).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import numpy as np
import pandas as pd

from flywheel.datagen import CATEGORIES, DEVICES

USER_FEATURES = ["user_txn_count_7d", "user_amount_mean_7d", "user_amount_max_7d", "user_top_country"]
MERCHANT_FEATURES = ["merchant_txn_count_7d", "merchant_amount_mean_7d", "merchant_fraud_rate_7d"]
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
    "user_txn_count_7d": 0,
    "user_amount_mean_7d": None,
    "user_amount_max_7d": None,
    "user_top_country": None,
    "merchant_txn_count_7d": 0,
    "merchant_amount_mean_7d": None,
    "merchant_fraud_rate_7d": None,
}


def feature_timestamp(ds: date) -> datetime:
    """Aggregates over days ≤ ds become valid when ds closes (next midnight UTC)."""
    return datetime.combine(ds + timedelta(days=1), time.min, tzinfo=UTC)


def user_aggregates(window: pd.DataFrame, ds: date) -> pd.DataFrame:
    """Per-user aggregates over the curated rows of the trailing window ending at ``ds``."""
    grouped = window.groupby("user_id")
    out = pd.DataFrame(
        {
            "user_txn_count_7d": grouped.size().astype("int64"),
            "user_amount_mean_7d": grouped["amount"].mean(),
            "user_amount_max_7d": grouped["amount"].max(),
            "user_top_country": grouped["country"].agg(lambda s: s.value_counts().index[0]),
        }
    ).reset_index()
    out["user_id"] = out["user_id"].astype("int64")
    out["event_timestamp"] = pd.Timestamp(feature_timestamp(ds))
    return out


def merchant_aggregates(window: pd.DataFrame, ds: date, *, label: str) -> pd.DataFrame:
    """Per-merchant aggregates; the fraud rate uses labels of closed days only."""
    grouped = window.groupby("merchant_id")
    out = pd.DataFrame(
        {
            "merchant_txn_count_7d": grouped.size().astype("int64"),
            "merchant_amount_mean_7d": grouped["amount"].mean(),
            "merchant_fraud_rate_7d": grouped[label].mean(),
        }
    ).reset_index()
    out["merchant_id"] = out["merchant_id"].astype("int64")
    out["event_timestamp"] = pd.Timestamp(feature_timestamp(ds))
    return out


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
