"""Feast definitions of the Flywheel feature repository (declarative, versioned like code).

Entities: user and merchant. Feature views: per-entity aggregates over a trailing
window, computed daily from curated data by ``flywheel.features`` and stored as
Parquet in the object store (the offline source). The feature service groups what
the fraud model reads. Locations come from the one settings object, so the same
definitions serve every profile.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64, String

from flywheel.config import get_settings
from flywheel.spec import load_spec

settings = get_settings()
spec = load_spec()
features_bucket = settings.bucket("features")

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
              description="A card holder")
merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.INT64,
                  description="A merchant accepting card payments")


def _source(view: str) -> FileSource:
    return FileSource(
        name=f"{view}_source",
        path=f"s3://{features_bucket}/{view}/",
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        s3_endpoint_override=settings.s3_endpoint_url,
    )


user_stats = FeatureView(
    name="user_stats",
    entities=[user],
    # Aggregates of day D are stamped D+1 00:00 and stay valid for two days.
    ttl=timedelta(days=2),
    schema=[
        Field(name="user_txn_count_7d", dtype=Int64),
        Field(name="user_amount_mean_7d", dtype=Float64),
        Field(name="user_amount_max_7d", dtype=Float64),
        Field(name="user_top_country", dtype=String),
    ],
    source=_source("user_stats"),
    online=True,
    tags={"owner": spec.owner, "window_days": str(spec.features.window_days)},
)

merchant_stats = FeatureView(
    name="merchant_stats",
    entities=[merchant],
    ttl=timedelta(days=2),
    schema=[
        Field(name="merchant_txn_count_7d", dtype=Int64),
        Field(name="merchant_amount_mean_7d", dtype=Float64),
        Field(name="merchant_fraud_rate_7d", dtype=Float64),
    ],
    source=_source("merchant_stats"),
    online=True,
    tags={"owner": spec.owner, "window_days": str(spec.features.window_days)},
)

fraud_service = FeatureService(
    name=spec.features.service,
    features=[user_stats, merchant_stats],
    description="Entity features read by the fraud model at training and serving time",
)
