"""Feast objects compiled from a use-case spec, namespaced so use cases share one registry.

Per use case: one Feast entity per join key (``<use case>_<key>``), one feature view per spec
entity (``<use case>_<entity>``, its offline source the daily Parquet partitions under
``features/<use case>/<entity>/``), and the feature service ``spec.feature_service``. Several
use cases apply into one registry and one online store without collisions: every name carries
the use case.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flywheel.core import layout
from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec
from flywheel.features.aggregates import _kind

# Aggregates of day D are stamped D+1 00:00. An entity's latest row stays valid until a newer
# one replaces it (an inactive entity's last row is its drop-out row, see aggregates.py): the
# online store keeps the latest row forever, so the point-in-time join must too, or training
# would see NaN where serving sees the row.
TTL = timedelta(days=365)


def view_name(spec: PipelineSpec, entity: str) -> str:
    return f"{spec.name}_{entity}"


def feature_dataset(spec: PipelineSpec, entity: str) -> str:
    """The features-zone dataset (object prefix) of one entity's aggregates."""
    return layout.feature_dataset(spec.name, entity)


def entity_name(spec: PipelineSpec, key: str) -> str:
    return f"{spec.name}_{key}"


def view_names(spec: PipelineSpec) -> list[str]:
    return [view_name(spec, e) for e in spec.features.entities]


def build(settings: Settings, spec: PipelineSpec) -> list[Any]:
    """Entities, feature views and the feature service of one use case."""
    from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
    from feast.data_format import ParquetFormat
    from feast.types import Float64, Int64, String

    columns = spec.dataset.contract.columns
    value_types = {"int": ValueType.INT64, "string": ValueType.STRING, "float": ValueType.DOUBLE,
                   "bool": ValueType.BOOL}
    dtypes = {"int": Int64, "float": Float64, "string": String}
    bucket = settings.bucket("features")
    entities: dict[str, Any] = {}
    views: list[Any] = []
    for name, entity in spec.features.entities.items():
        for key in entity.keys:
            if key not in entities:
                entities[key] = Entity(name=entity_name(spec, key), join_keys=[key],
                                       value_type=value_types.get(columns[key].type, ValueType.STRING),
                                       description=f"{spec.name}: {key}")
        source = FileSource(
            name=f"{view_name(spec, name)}_source",
            path=f"s3://{bucket}/{feature_dataset(spec, name)}/",
            file_format=ParquetFormat(),
            timestamp_field="event_timestamp",
            s3_endpoint_override=settings.s3_endpoint_url,
        )
        views.append(FeatureView(
            name=view_name(spec, name),
            entities=[entities[k] for k in entity.keys],
            ttl=TTL,
            schema=[Field(name=f, dtype=dtypes[_kind(agg, spec)]) for f, agg in entity.aggregations.items()],
            source=source,
            online=True,
            description=entity.description or "",
            tags={"owner": spec.owner, "use_case": spec.name},
        ))
    service = FeatureService(name=spec.feature_service, features=views,
                             description=f"Entity features read by the {spec.name} model at training and serving",
                             tags={"use_case": spec.name})
    return [*entities.values(), *views, service]
