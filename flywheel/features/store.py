"""Feast: apply the repo, compute entity aggregates, materialize, build training sets.

The offline source of each feature view is a set of daily Parquet partitions in
the ``features`` zone (``<view>/ds=<date>/``), written atomically with a manifest.
Materialization is keyed on the data interval (not "now"), so backfills are safe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from flywheel.core import layout, storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.features import repo
from flywheel.features.aggregates import entity_aggregates, feature_timestamp, lookback_hours

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

log = logging.getLogger(__name__)
PROJECT = "flywheel"  # the default project; ``Settings.feast_project`` names the one in use


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@contextmanager
def feast_output_to_log(what: str) -> Iterator[None]:
    """Feast's ``print`` and tqdm chatter of one call (``Materializing 2 feature views ...`` in
    colour codes, a progress bar per view) go to this module's log at INFO, colours stripped,
    instead of the caller's terminal. The log keeps it for Airflow's task log; a terminal shows it
    only with INFO logging on. Output another thread prints meanwhile is kept the same way (logged,
    never dropped); a rich Console bound to its file at creation is not redirected at all."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield
    finally:
        text = _ANSI.sub("", buffer.getvalue())
        # A progress bar redraws its line after each "\r": keep the last drawing of each line.
        lines = [line.rsplit("\r", 1)[-1].strip() for line in text.split("\n")]
        lines = [line for line in lines if line]
        if lines:
            log.info("feast %s: %s", what, " | ".join(lines[:20]) + (" | ..." if len(lines) > 20 else ""))


class FeatureError(RuntimeError):
    """Features could not be computed or served; the message names the view and date."""


def repo_config(settings: Settings) -> RepoConfig:
    from feast import RepoConfig

    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=settings.feast_registry_config(),
        offline_store={"type": "file"},
        online_store=settings.online_store_config(),
        entity_key_serialization_version=3,
        repo_path=settings.feature_repo,
    )


def render_feature_store_yaml(settings: Settings | None = None) -> str:
    """Write ``feature_repo/feature_store.yaml`` for this profile so the feast CLI works too."""
    settings = settings or get_settings()
    content = {
        "project": settings.feast_project,
        "provider": "local",
        "registry": settings.feast_registry_config(),
        "offline_store": {"type": "file"},
        "online_store": settings.online_store_config(),
        "entity_key_serialization_version": 3,
    }
    path = settings.feature_repo / "feature_store.yaml"
    path.write_text("# Rendered by flywheel for profile " + settings.profile.value + "\n"
                    + yaml.safe_dump(content, sort_keys=False))
    return str(path)


def feature_store(settings: Settings | None = None) -> FeatureStore:
    """A FeatureStore for the configured profile (exports S3 settings for Feast's readers)."""
    from feast import FeatureStore

    settings = settings or get_settings()
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    # Feast's file source reads S3 through s3fs/pyarrow, which take credentials from env.
    os.environ.update(settings.aws_env())
    _forget_s3_listings()
    return FeatureStore(config=repo_config(settings))


def _forget_s3_listings() -> None:
    """s3fs caches directory listings per process; a rewritten partition would look stale."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def registry_writer(settings: Settings) -> Iterator[None]:
    """Hold the registry for one writer while Feast changes it (``apply``, ``materialize``).

    A file registry is one serialized proto that Feast reads, changes and writes back whole, so
    two processes writing at once lose one's change: two use cases' feature tasks side by side
    (a backfill of each) left one's feature views missing from the registry ("Feature view
    fraud_user does not exist") until a retry applied them again. A local file registry (the
    embedded profile) is guarded by a lock file beside it, across processes; the SQL registry
    (the production default) stores each object in its own row, transactionally, and needs none.
    A file registry in S3 (``production.feast_registry: s3``) cannot take this lock: give it one
    writer at a time (one feature task at a time), or use the SQL registry.
    """
    config = settings.feast_registry_config()
    path = str(config.get("path", ""))
    if config.get("registry_type") != "file" or "://" in path:
        yield
        return
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path + ".lock", timeout=REGISTRY_LOCK_TIMEOUT_S):
        yield


REGISTRY_LOCK_TIMEOUT_S = 900.0  # a writer holds it for one apply or one day's materialization


def apply(spec: PipelineSpec, settings: Settings | None = None) -> list[str]:
    """``feast apply`` of one use case's objects (idempotent; other use cases are untouched)."""
    settings = settings or get_settings()
    objects = repo.build(settings, spec)
    with registry_writer(settings):
        feature_store(settings).apply(objects)  # read after the lock: the registry as it is now
    return sorted(obj.name for obj in objects)


@dataclass(frozen=True)
class FeatureRun:
    ds: str
    window: list[str]
    missing_days: list[str]
    rows: dict[str, int]
    manifests: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"ds": self.ds, "window": self.window, "missing_days": self.missing_days,
                "rows": self.rows, "manifests": self.manifests}


def read_curated_window(
    spec: PipelineSpec, *, start: date, end: date, settings: Settings
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Curated rows of [start, end]; returns (frame, days read, days missing)."""
    client = storage.s3_client(settings)
    available = set(storage.list_partitions(zone="curated", dataset=spec.dataset.name,
                                            settings=settings, client=client))
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    read = [d for d in days if d in available]
    frames = [storage.read_partition(zone="curated", dataset=spec.dataset.name, ds=d,
                                     settings=settings, client=client) for d in read]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame, read, [d for d in days if d not in available]


def compute_aggregates(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> FeatureRun:
    """Every entity's aggregates over the curated window ending at ``ds``, written to the features
    zone (``features/<use case>/<entity>/ds=<ds>/``).

    The curated partitions are streamed to local files and scanned by duckdb, so memory stays
    bounded by the aggregates, not by the rows of the window. With ``compute.engine = dask`` the
    scan is mapped over the cluster's workers (:func:`day_tables`); the partitions written are the
    same bytes either way.
    """
    import math

    settings = settings or get_settings()
    span = max(1, math.ceil(lookback_hours(spec) / 24))
    start = ds - timedelta(days=span)
    client = storage.s3_client(settings)
    name = spec.dataset.name
    available = set(storage.list_partitions(zone="curated", dataset=name, settings=settings, client=client))
    days = [(start + timedelta(days=i)).isoformat() for i in range(span + 1)]
    read = [d for d in days if d in available]
    missing = [d for d in days if d not in available]
    if ds.isoformat() not in read:
        raise FeatureError(f"no curated partition {name} ds={ds}: validate it first")
    if missing:
        log.warning("feature window %s..%s lacks curated days %s", start, ds, missing)
    tables, newest = day_tables(spec, ds, read, settings=settings)
    manifests = {}
    stamp = feature_timestamp(ds)
    freshness = {"feature_timestamp": stamp.isoformat(), "newest_event": newest,
                 "window": [read[0], read[-1]], "missing_days": missing}
    for entity, table in tables.items():
        manifest = storage.write_partition(table, zone="features", dataset=repo.feature_dataset(spec, entity),
                                           ds=ds.isoformat(), source=f"curated/{name}",
                                           extra={"freshness": freshness}, settings=settings, client=client)
        manifests[repo.view_name(spec, entity)] = manifest.content_hash
    return FeatureRun(ds=ds.isoformat(), window=read, missing_days=missing,
                      rows={repo.view_name(spec, v): len(t) for v, t in tables.items()}, manifests=manifests)


def day_tables(spec: PipelineSpec, ds: date, days: list[str], *,
               settings: Settings) -> tuple[dict[str, pd.DataFrame], str | None]:
    """Every entity's aggregates as of ``ds`` over the curated ``days``, and the newest event read.

    Local: one duckdb scan per entity in this process. Dask: ``compute.feature_shards`` tasks (one
    per worker by default), each reading the window from the object store itself and computing the
    entities whose keys hash to its shard; the shards' rows are put back in key order, so the
    tables equal the local ones exactly. Raises ``ComputeError`` when the cluster is unreachable.
    """
    if not settings.compute.distributed:
        return shard_tables(None, spec=spec, ds=ds, days=days, settings=settings)
    from flywheel.compute import cluster

    dask = cluster.client(settings)
    count = settings.compute.feature_shards or len(cluster.workers(dask))
    futures = dask.map(shard_tables, [(i, count) for i in range(count)], spec=spec, ds=ds, days=days,
                       settings=settings, pure=False, key=[f"features-{spec.name}-{ds}-{i}-of-{count}"
                                                           for i in range(count)])
    parts = dask.gather(futures, errors="raise")
    tables = {entity: _in_key_order([part[0][entity] for part in parts], spec.features.entities[entity].keys)
              for entity in spec.features.entities}
    newest = max((part[1] for part in parts if part[1] is not None), default=None)
    return tables, newest


def shard_tables(shard: tuple[int, int] | None, *, spec: PipelineSpec, ds: date, days: list[str],
                 settings: Settings) -> tuple[dict[str, pd.DataFrame], str | None]:
    """One shard (``(i, n)``, None = all) of every entity's aggregates over the curated ``days``:
    the partitions are downloaded to a temporary folder of the process that runs it."""
    import tempfile

    client = storage.s3_client(settings)
    with tempfile.TemporaryDirectory(prefix="flywheel-features-") as tmp:
        files = [str(p) for d in days for p in storage.download_partition(
            zone="curated", dataset=spec.dataset.name, ds=d, dest=Path(tmp), settings=settings,
            client=client)[1]]
        tables = {entity: entity_aggregates(spec, entity, files, ds, shard=shard)
                  for entity in spec.features.entities}
        return tables, _newest_event(files, spec.dataset.timestamp)


def _in_key_order(parts: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """Shards of one entity's table as one, ordered by its keys like the unsharded query."""
    filled = [p for p in parts if len(p)] or parts[:1]
    return pd.concat(filled, ignore_index=True).sort_values(keys, kind="stable").reset_index(drop=True)


def _newest_event(files: list[str], column: str) -> str | None:
    import duckdb

    from flywheel.features.aggregates import parquet_source

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(f'SELECT max("{column}") FROM {parquet_source(files)}').fetchone()
    return row[0].isoformat() if row and row[0] is not None else None


def materialize(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> dict[str, Any]:
    """Load the aggregates stamped for ``ds`` into the online store (keyed on the interval).

    Records the run's feature freshness (the aggregates' timestamp and the newest
    source event they include) in the reports zone: ``feature-freshness/ds=<ds>.json``.
    """
    import json

    settings = settings or get_settings()
    stamp = feature_timestamp(ds)
    start, end = stamp - timedelta(hours=12), stamp + timedelta(hours=12)
    with registry_writer(settings):  # materialize records its interval in the registry
        store = feature_store(settings)  # a fresh store: no stale S3 listings
        with feast_output_to_log(f"materialize {spec.name} {ds}"):
            store.materialize(start_date=start, end_date=end, feature_views=repo.view_names(spec))
    client = storage.s3_client(settings)
    views = {}
    for entity in spec.features.entities:
        manifest = storage.read_manifest(zone="features", dataset=repo.feature_dataset(spec, entity),
                                         ds=ds.isoformat(), settings=settings, client=client)
        views[repo.view_name(spec, entity)] = {"rows": manifest.rows, "content_hash": manifest.content_hash,
                       **manifest.extra.get("freshness", {})}
    record = {"ds": ds.isoformat(), "online_store": settings.online_store_config()["type"],
              "start": start.isoformat(), "end": end.isoformat(), "views": views}
    storage.put_bytes("reports", layout.freshness_key(spec.name, ds),
                      json.dumps(record, indent=2, sort_keys=True).encode(),
                      content_type="application/json", settings=settings, client=client)
    return record


def training_frame(
    spec: PipelineSpec, *, end: date, settings: Settings | None = None
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Point-in-time correct training rows for the lookback window ending at ``end``.

    Returns the frame (transactions + entity features, sorted by time) and the data
    identity (curated partitions read with their content hashes).
    """
    settings = settings or get_settings()
    start = end - timedelta(days=spec.training.lookback_days - 1)
    tx, read, _ = read_curated_window(spec, start=start, end=end, settings=settings)
    if tx.empty:
        raise FeatureError(f"no curated data for {spec.dataset.name} in {start}..{end}")
    tx = cast_join_keys(spec, tx)
    joined = historical_features(feature_store(settings), spec, tx)
    joined = joined.sort_values([spec.dataset.timestamp, *spec.dataset.key_columns]).reset_index(drop=True)
    client = storage.s3_client(settings)
    identity = {
        "dataset": spec.dataset.name,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "partitions": {
            d: storage.read_manifest(zone="curated", dataset=spec.dataset.name, ds=d,
                                     settings=settings, client=client).content_hash
            for d in read
        },
        "feature_service": spec.feature_service,
        "rows": len(joined),
    }
    return joined, identity


def cast_join_keys(spec: PipelineSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """Join-key columns in the types of the Feast entities (integers as int64, text as str)."""
    columns = spec.dataset.contract.columns
    out = frame.copy()
    for entity in spec.features.entities.values():
        for key in entity.keys:
            if columns[key].type == "int":
                out[key] = out[key].astype("int64")
            elif columns[key].type == "string":
                out[key] = out[key].astype(str)
    return out


def historical_features(store: FeatureStore, spec: PipelineSpec, rows: pd.DataFrame) -> pd.DataFrame:
    """Left point-in-time join of the feature service onto ``rows`` (one row out per row in).

    Feast's file offline store drops entity rows for which a view has no feature
    row in its TTL, and it can swap passthrough columns between entity rows that
    share a timestamp. So each view is joined on the unique (join keys, timestamp)
    pairs alone, and the result is merged back on those natural keys: every row is
    kept, with NaN for features that did not exist yet.
    """
    ts = spec.dataset.timestamp
    service = store.get_feature_service(spec.feature_service)
    out = rows.assign(**{ts: pd.to_datetime(rows[ts], utc=True)})
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        keys = [ts, *(store.get_entity(e).join_key for e in view.entities)]
        refs = [f"{projection.name}:{f.name}" for f in projection.features]
        entity_df = out[keys].drop_duplicates().reset_index(drop=True)
        got = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
        got[ts] = pd.to_datetime(got[ts], utc=True).astype(out[ts].dtype)
        names = [f.name for f in projection.features]
        out = out.merge(got[[*keys, *names]], on=keys, how="left", validate="many_to_one")
    if len(out) != len(rows):
        raise FeatureError(f"historical join returned {len(out)} rows for {len(rows)}")
    return out


def reset_online_store(settings: Settings | None = None) -> None:
    """Empty the online store (it is rebuilt by materializing the data intervals again).

    Processes holding the store open (the model server) must be restarted afterwards.
    """
    settings = settings or get_settings()
    config = settings.online_store_config()
    if config["type"] == "sqlite":
        Path(config["path"]).unlink(missing_ok=True)
        return
    store = feature_store(settings)
    store._get_provider().teardown_infra(settings.feast_project, store.list_feature_views(), store.list_entities())


def online_features(store: FeatureStore, spec: PipelineSpec, rows: list[dict[str, int]]) -> pd.DataFrame:
    """Entity features for each row, in one online-store round trip."""
    service = store.get_feature_service(spec.feature_service)
    return store.get_online_features(features=service, entity_rows=rows).to_df()
