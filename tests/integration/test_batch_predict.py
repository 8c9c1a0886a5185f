"""Batch prediction on the session stack: the <use_case>_batch DAG's task function commits one
predictions partition with a manifest, a rerun of the day replaces it with the same bytes, and
every prediction equals the model server's scoring of the same row."""

from __future__ import annotations

import pandas as pd
import pytest

from flywheel.core import layout, storage
from flywheel.serving import batch

from .serving_support import END, champion_version

pytestmark = pytest.mark.integration


def test_batch_predictions_are_a_committed_idempotent_partition_equal_to_the_servers(services, loaded, spec):
    from flywheel.serving.predictor import Predictor

    version = champion_version(spec, services)
    first = batch.batch_predict(spec, END, run_id="batch-test", settings=services, chunk_rows=700)
    curated = storage.read_partition(zone="curated", dataset=spec.dataset.name, ds=END.isoformat(),
                                     settings=services)
    assert first.version == version and first.rows == len(curated) > 0
    assert first.chunks == -(-len(curated) // 700)  # streamed: one chunk per 700 rows
    manifest = storage.read_manifest(zone="predictions", dataset=layout.batch_dataset(spec.name),
                                     ds=END.isoformat(), settings=services)
    assert manifest.rows == first.rows and manifest.extra["model_version"] == version
    assert manifest.content_hash == first.content_hash and len(manifest.files) == 1

    again = batch.batch_predict(spec, END, run_id="batch-rerun", settings=services, chunk_rows=700)
    assert again.content_hash == first.content_hash  # the same rows and champion: the same bytes
    after = storage.read_manifest(zone="predictions", dataset=layout.batch_dataset(spec.name),
                                  ds=END.isoformat(), settings=services)
    assert after.run_id == "batch-rerun" and after.files == manifest.files  # replaced, not appended
    keys = storage.list_keys("predictions", layout.partition_prefix(layout.batch_dataset(spec.name), END),
                             settings=services)
    assert sorted(keys) == sorted([f["key"] for f in after.files] + [after_key(spec)])

    predicted = batch.read_predictions(spec, END, settings=services)
    assert len(predicted) == len(curated) and predicted[spec.dataset.key].is_unique
    assert predicted["probability"].between(0, 1).all() and (predicted["model_version"] == version).all()

    # The server's scoring of the same rows (its predictor, native runtime: the batch path's).
    native = services.model_copy(update={"serving_runtime": "native"})
    predictor = Predictor(spec, native, watch=False, log_predictions=False)
    try:
        fields = list(dict.fromkeys((*predictor.schemas.id_columns, *predictor.schemas.columns)))
        sample = curated.sample(n=min(300, len(curated)), random_state=0)
        requests = [predictor.schemas.request(**row) for row in _records(sample[fields])]
        served = pd.DataFrame(predictor.score(requests).records())
    finally:
        predictor.close()
    got = predicted.set_index(spec.dataset.key).loc[served[spec.dataset.key]]
    assert got["probability"].to_numpy().tolist() == served["probability"].tolist()
    assert got["decision"].to_numpy().tolist() == served["decision"].tolist()


def test_batch_prediction_of_a_day_without_features_names_what_to_run(services, loaded, spec):
    champion_version(spec, services)
    day = END.replace(year=END.year + 1)
    with pytest.raises(batch.BatchPredictionError, match=rf"no features partition .*ds={day}: run the data DAG"):
        batch.batch_predict(spec, day, settings=services)


def after_key(spec) -> str:
    return layout.partition_prefix(layout.batch_dataset(spec.name), END) + layout.MANIFEST


def _records(frame: pd.DataFrame) -> list[dict]:
    """Rows as plain Python values (what a JSON request decodes to)."""
    return [{k: (v.to_pydatetime() if isinstance(v, pd.Timestamp) else v) for k, v in row.items()}
            for row in frame.astype(object).to_dict("records")]
