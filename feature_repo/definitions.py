"""Feast definitions of the Flywheel feature repository (declarative, versioned like code).

Entities: user and merchant. Feature views: per-entity aggregates over 1 h / 24 h /
7 d windows (counts, amount statistics, time since the last transaction, the
merchant's fraud rate over labels older than the label lag), computed daily from curated data by ``flywheel.features.store`` and stored as
Parquet in the object store (the offline source). The feature service groups what
the fraud model reads. Locations come from the settings object, so the same
definitions serve every profile: ``flywheel.features.store.apply`` calls :func:`build`
with its settings; the module-level names let the ``feast`` CLI read this repo too
(``flywheel features-apply`` renders its feature_store.yaml).
"""

from datetime import timedelta
from typing import Any

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64, String

from flywheel.core.config import Settings, get_settings
from flywheel.features.featurize import MERCHANT_FEATURES, USER_FEATURES
from flywheel.core.spec import PipelineSpec, load_spec

# Aggregates of day D are stamped D+1 00:00. An entity's latest row stays valid until a newer
# one replaces it (an inactive entity's last row is its drop-out row, see flywheel.features.featurize):
# the online store keeps the latest row forever, so the point-in-time join must too, or training
# would see NaN where serving sees the row (the skew check found exactly that with a 2-day TTL).
TTL = timedelta(days=365)


def _field(name: str) -> Field:
    """Counts are integers, the top country is text, every other aggregate a float."""
    dtype = Int64 if "_txn_count_" in name else String if name.endswith("_country") else Float64
    return Field(name=name, dtype=dtype)


def build(settings: Settings, spec: PipelineSpec) -> list[Any]:
    """The repo's objects for one profile's settings."""
    bucket = settings.bucket("features")

    def source(view: str) -> FileSource:
        return FileSource(
            name=f"{view}_source",
            path=f"s3://{bucket}/{view}/",
            file_format=ParquetFormat(),
            timestamp_field="event_timestamp",
            s3_endpoint_override=settings.s3_endpoint_url,
        )

    tags = {"owner": spec.owner, "window_days": str(spec.features.window_days)}
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64,
                  description="A card holder")
    merchant = Entity(name="merchant", join_keys=["merchant_id"], value_type=ValueType.INT64,
                      description="A merchant accepting card payments")
    user_stats = FeatureView(
        name="user_stats",
        entities=[user],
        ttl=TTL,
        schema=[_field(name) for name in USER_FEATURES],
        source=source("user_stats"),
        online=True,
        tags=tags,
    )
    merchant_stats = FeatureView(
        name="merchant_stats",
        entities=[merchant],
        ttl=TTL,
        schema=[_field(name) for name in MERCHANT_FEATURES],
        source=source("merchant_stats"),
        online=True,
        tags=tags,
    )
    service = FeatureService(
        name=spec.features.service,
        features=[user_stats, merchant_stats],
        description="Entity features read by the fraud model at training and serving time",
    )
    return [user, merchant, user_stats, merchant_stats, service]


if __name__ != "flywheel_feature_repo":  # imported by the feast CLI: expose the objects
    _settings = get_settings()
    for _obj in build(_settings, load_spec(settings=_settings)):
        globals()[_obj.name] = _obj
