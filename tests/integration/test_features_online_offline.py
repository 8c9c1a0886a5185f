"""Offline equals online, for every use-case spec in models/: the point-in-time training features
and the online store's features of the same requests give the same model inputs.

Rows are synthesized from each spec's contract (no example code), so a new spec is covered the
day it is added. Real SeaweedFS, Feast (file offline store, SQLite online store), duckdb.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from flywheel.core import storage
from flywheel.core.spec import PipelineSpec, use_case_specs
from flywheel.features import store
from flywheel.features.featurizer import featurizer_for
from flywheel.runs import feature_day

pytestmark = pytest.mark.integration
FIRST = date(2026, 3, 1)
DAYS = 3
ROWS = 400


def _isolated(spec: PipelineSpec) -> PipelineSpec:
    """The spec under names of its own (use case, dataset, Feast feature service, model): the
    session stack is shared, and writing the fraud example's curated days, online rows or
    feature service here would change what the serving, batch, view and training tests of the
    same session read as the fraud use case's."""
    return spec.model_copy(update={
        "name": f"ooo_{spec.name}", "model_name": f"ooo-{spec.model_name}",
        "dataset": spec.dataset.model_copy(update={"name": f"ooo_{spec.dataset.name}"}),
        "features": spec.features.model_copy(update={"service": f"ooo_{spec.feature_service}"})})


SPECS = {s.name: _isolated(s) for s in use_case_specs()}


def synthesize(spec: PipelineSpec, day: date, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Rows that satisfy the contract: entity keys from small pools (so aggregates repeat)."""
    keys = {k for e in spec.features.entities.values() for k in e.keys}
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    out: dict[str, object] = {}
    for name, rule in spec.dataset.contract.columns.items():
        if rule.type == "datetime":
            seconds = np.sort(rng.integers(0, 86_400, n))
            out[name] = pd.to_datetime([start + timedelta(seconds=int(s)) for s in seconds], utc=True)
        elif rule.allowed:
            out[name] = rng.choice(np.array(rule.allowed, dtype=object), n)
        elif rule.unique:
            out[name] = [f"{day}-{i}" for i in range(n)] if rule.type == "string" else np.arange(n) + n * day.day
        elif rule.type == "string":
            out[name] = rng.choice(np.array([f"v{i}" for i in range(6 if name in keys else 4)], dtype=object), n)
        elif rule.type == "int":
            low = int(rule.min or 0)
            out[name] = rng.integers(low, low + (12 if name in keys else 50), n)
        elif rule.type == "bool":
            out[name] = rng.random(n) < 0.5
        else:
            low = float(rule.min if rule.min is not None else 0.0)
            high = float(rule.max if rule.max is not None else low + 100.0)
            out[name] = np.round(rng.uniform(low, min(high, low + 500.0), n), 2)
    return pd.DataFrame(out)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_offline_features_equal_online_features(services, name):
    spec = SPECS[name]
    rng = np.random.default_rng(11)
    for offset in range(DAYS):
        day = FIRST + timedelta(days=offset)
        storage.write_partition(synthesize(spec, day, ROWS, rng), zone="curated", dataset=spec.dataset.name,
                                ds=day.isoformat(), source="test", settings=services)
    for offset in range(1, DAYS):
        feature_day(spec, FIRST + timedelta(days=offset), settings=services)
    requests = synthesize(spec, FIRST + timedelta(days=DAYS), 60, rng)
    fz = featurizer_for(spec)
    feast = store.feature_store(services)
    offline = store.historical_features(feast, spec, store.cast_join_keys(spec, requests))
    offline_matrix = fz.frame(offline).to_numpy()
    keys = [k for e in spec.features.entities.values() for k in e.keys]
    entity_rows = store.cast_join_keys(spec, requests)[list(dict.fromkeys(keys))].to_dict("records")
    online = store.online_features(feast, spec, entity_rows)
    assert len(online) == len(requests)
    entities = {c: online[c].to_numpy() for c in fz.entity_features if c in online.columns}
    assert set(entities) == set(fz.entity_features)
    columns = {c: requests[c].to_numpy() for c in fz.request_columns}
    online_matrix = fz.transform(columns, entities).matrix
    assert offline_matrix.shape == (len(requests), len(fz.names))
    assert np.isfinite(offline_matrix).any(axis=0).sum() > len(fz.names) // 2  # real values, not all NaN
    np.testing.assert_allclose(online_matrix, offline_matrix, rtol=1e-9, atol=1e-9, equal_nan=True)
