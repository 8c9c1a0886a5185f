"""Batch prediction: score one day of a use case's curated rows offline with the champion.

The rows of the curated partition ``ds`` are joined with the entity aggregates stamped for
``ds`` (the features zone: Feast's offline source, the very rows materialization loads into the
online store), made into the model matrix by the one featurizer and scored by the champion,
loaded and verified as the model server loads it. So a batch prediction of a row equals what the
server answers for that row once ``ds``'s features are online.

The partition is streamed in chunks (``chunk_rows``): memory is bounded by one chunk and the
entity tables, not by the day. The predictions are written to one local Parquet file and
committed as ``predictions/batch/<use case>/ds=<ds>/`` with a manifest, under the partition's
lease (:mod:`flywheel.core.storage`): a rerun of the same day replaces it, and the same rows and
champion give the same bytes (the same ``content_hash``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flywheel.core import layout, storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import PipelineSpec
from flywheel.training import registry

CHUNK_ROWS = 100_000  # rows scored at a time: one chunk's frames and matrix live in memory


class BatchPredictionError(RuntimeError):
    """A day cannot be scored: no champion, no curated partition or no features for the day.
    The message names the use case, the partition and what to run first."""


@dataclass(frozen=True)
class BatchRun:
    """What a batch prediction committed (small: what an Airflow task returns)."""

    use_case: str
    ds: str
    model_name: str
    version: str
    rows: int
    chunks: int
    content_hash: str
    uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def champion(spec: PipelineSpec, settings: Settings) -> registry.LoadedModel:
    """The champion, loaded (and verified, per ``serving_verify_versions``) as the server does.

    Raises :class:`BatchPredictionError` when the use case has no champion yet."""
    mv = registry.alias_version(spec.model_name, registry.CHAMPION, settings=settings)
    if mv is None:
        raise BatchPredictionError(f"{spec.name}: registered model {spec.model_name!r} has no "
                                   f"{registry.CHAMPION!r} alias yet: train and promote a version first")
    return registry.load_version(spec.model_name, str(mv.version), settings=settings,
                                 verify=settings.serving_verify_versions)


def output_columns(spec: PipelineSpec) -> list[str]:
    """The row identity every prediction carries: the dataset's key and timestamp columns."""
    return list(dict.fromkeys([*spec.dataset.key_columns, spec.dataset.timestamp]))


def score_matrix(model: registry.LoadedModel, matrix: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """The task's output columns of a ready model matrix (columns ``names``): binary
    ``probability``/``decision``, multiclass ``predicted_class``/``probability`` and one
    ``probability_<class>`` per class, regression ``value``. The path the benchmark measures."""
    from flywheel.serving.predictor import predict_array, task_outputs

    raw = predict_array(model, matrix, names)
    out = task_outputs(model.task, model, raw)
    if model.task == "multiclass":
        out |= {f"probability_{c}": raw[:, i] for i, c in enumerate(model.classes)}
    return out


def score_chunk(spec: PipelineSpec, model: registry.LoadedModel, rows: pd.DataFrame,
                entities: dict[str, pd.DataFrame]) -> pa.Table:
    """Predictions of one chunk of curated rows: join the entity tables, featurize, score."""
    from flywheel.features.featurizer import featurizer_for
    from flywheel.features.store import cast_join_keys

    fz = featurizer_for(spec)
    joined = cast_join_keys(spec, rows)
    for name, table in entities.items():
        keys = spec.features.entities[name].keys
        joined = joined.merge(table, on=keys, how="left", validate="many_to_one")
    features = fz.transform_frame(joined)
    out = {c: rows[c].to_numpy() for c in output_columns(spec)}
    out |= score_matrix(model, features.matrix, list(fz.names))
    frame = pd.DataFrame(out)
    frame["model_version"] = model.version
    return pa.Table.from_pandas(frame, preserve_index=False)


def entity_tables(spec: PipelineSpec, ds: date, settings: Settings, client: Any) -> dict[str, pd.DataFrame]:
    """Each entity's aggregates stamped for ``ds`` (join keys + the aggregates the featurizer reads).

    Raises :class:`BatchPredictionError` when the day's features were not computed."""
    from flywheel.features import repo
    from flywheel.features.featurizer import featurizer_for

    wanted = set(featurizer_for(spec).entity_features)
    tables = {}
    for name, entity in spec.features.entities.items():
        dataset = repo.feature_dataset(spec, name)
        try:
            table = storage.read_partition(zone="features", dataset=dataset, ds=ds.isoformat(),
                                           settings=settings, client=client)
        except storage.PartitionNotFound as exc:
            raise BatchPredictionError(f"{spec.name}: no features partition features/{dataset}/ds={ds}: "
                                       f"run the data DAG's features task for {ds} first") from exc
        keep = [*entity.keys, *(c for c in table.columns if c in wanted and c not in entity.keys)]
        tables[name] = table[keep].drop_duplicates(entity.keys, keep="last")
    return tables


def _chunks(files: list[Path], chunk_rows: int) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()


def batch_predict(spec: PipelineSpec, ds: date, *, run_id: str = "batch", settings: Settings | None = None,
                  chunk_rows: int = CHUNK_ROWS) -> BatchRun:
    """Score the curated partition ``ds`` with the champion; commit the predictions partition.

    Idempotent on ``ds``: a rerun replaces the partition (the same bytes for the same champion).
    Raises :class:`BatchPredictionError` (no champion, curated partition or features for ``ds``),
    :class:`flywheel.training.signing.VersionVerificationError` when the champion fails its
    verification, and what :func:`flywheel.core.storage.commit` raises on a concurrent writer.
    """
    settings = settings or get_settings()
    client = storage.s3_client(settings)
    model = champion(spec, settings)
    entities = entity_tables(spec, ds, settings, client)
    dataset = layout.batch_dataset(spec.name)
    with tempfile.TemporaryDirectory(prefix="flywheel-batch-") as tmp:
        try:
            manifest, files = storage.download_partition(zone="curated", dataset=spec.dataset.name,
                                                         ds=ds.isoformat(), dest=Path(tmp) / "in",
                                                         settings=settings, client=client)
        except storage.PartitionNotFound as exc:
            raise BatchPredictionError(f"{spec.name}: no curated partition {spec.dataset.name} ds={ds}: "
                                       "ingest and validate it first") from exc
        path, rows, chunks, schema = Path(tmp) / "predictions.parquet", 0, 0, None
        writer = None
        try:
            for rows_in in _chunks(files, chunk_rows):
                table = score_chunk(spec, model, rows_in, entities)
                if writer is None:
                    import pyarrow.parquet as pq

                    schema = table.schema
                    writer = pq.ParquetWriter(path, schema, **storage.PARQUET_OPTIONS)
                writer.write_table(table.cast(schema), row_group_size=storage.ROW_GROUP_ROWS)
                rows, chunks = rows + table.num_rows, chunks + 1
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # an empty day: an empty partition, committed all the same
            schema = _empty_schema(spec, model)
            storage.write_batches([], schema, path)
        committed = storage.commit_file(
            path, zone="predictions", dataset=dataset, ds=ds.isoformat(), rows=rows, schema=schema,
            source=f"curated/{spec.dataset.name}", run_id=run_id,
            extra={"model_name": model.name, "model_version": model.version, "chunks": chunks,
                   "curated_content_hash": manifest.content_hash},
            settings=settings, client=client)
    return BatchRun(use_case=spec.name, ds=ds.isoformat(), model_name=model.name, version=model.version,
                    rows=rows, chunks=chunks, content_hash=committed.content_hash,
                    uri=f"s3://{settings.bucket('predictions')}/{layout.partition_prefix(dataset, ds)}")


def _empty_schema(spec: PipelineSpec, model: registry.LoadedModel) -> pa.Schema:
    fields = [pa.field(c, pa.string()) for c in output_columns(spec)]
    names = {"binary": ["probability", "decision"], "regression": ["value"],
             "multiclass": ["predicted_class", "probability", *(f"probability_{c}" for c in model.classes)]}
    for name in names[model.task]:
        kind = pa.bool_() if name == "decision" else pa.string() if name == "predicted_class" else pa.float64()
        fields.append(pa.field(name, kind))
    return pa.schema([*fields, pa.field("model_version", pa.string())])


def read_predictions(spec: PipelineSpec, ds: date, *, settings: Settings | None = None) -> pd.DataFrame:
    """The committed batch predictions of ``ds``; raises ``PartitionNotFound`` when none."""
    return storage.read_partition(zone="predictions", dataset=layout.batch_dataset(spec.name),
                                  ds=ds.isoformat(), settings=settings)
