"""Prediction traffic of the flights example: a landed day's flights, asked about before departure.

A booking or operations service asks ``POST /flights/predict`` for the arrival delay of a
scheduled flight. It knows the schedule (carrier, flight, origin, destination, distance, the
scheduled hour), not how the flight went: the request carries only the columns the spec's
features read at prediction time (entity keys, the timestamp, the request features' inputs)
plus the flight's key, never ``dep_delay`` or ``arr_delay``. Which columns those are comes from
the engine's featurizer for the spec, as the model server's generated request schema does.
"""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

from examples.model_api import http_client, wait_for_logs  # noqa: F401 (re-exported)
from flywheel.core.config import Settings
from flywheel.core.spec import PipelineSpec


def request_columns(spec: PipelineSpec) -> list[str]:
    """The columns a prediction request carries: what the engine's featurizer reads at scoring
    time (entity keys, the timestamp, request-feature inputs), plus the flight's key as its id."""
    from flywheel.features.featurizer import featurizer_for

    read = featurizer_for(spec).request_columns
    return [*read, *(c for c in spec.dataset.key_columns if c not in read)]


def _json_value(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value.item() if hasattr(value, "item") else value


def requests_of(frame: pd.DataFrame, spec: PipelineSpec) -> list[dict[str, Any]]:
    """JSON request bodies of ``frame``'s rows (only the prediction-time columns)."""
    cols = request_columns(spec)
    typed = frame[cols].copy()
    typed[spec.dataset.timestamp] = pd.to_datetime(typed[spec.dataset.timestamp], utc=True)
    return [{c: _json_value(v) for c, v in row.items()} for row in typed.to_dict("records")]


def landed_day(settings: Settings, spec: PipelineSpec, day: date) -> pd.DataFrame:
    """The landed CSV of ``day`` (what the feed delivered), read as pandas would."""
    path = Path(spec.source_for(day.isoformat(), settings)) / "part-0.csv"
    return pd.read_csv(path)




def send_traffic(settings: Settings, spec: PipelineSpec, day: date, *, batch_size: int = 250) -> dict[str, Any]:
    """Ask for the arrival delay of every flight of ``day`` (``/<use case>/predict_batch``)."""
    records = requests_of(landed_day(settings, spec, day), spec)
    versions: set[str] = set()
    values: list[float] = []
    with http_client(settings) as http:
        for i in range(0, len(records), batch_size):
            resp = http.post(f"/{spec.name}/predict_batch", json=records[i : i + batch_size])
            resp.raise_for_status()
            for pred in resp.json():
                versions.add(str(pred["model_version"]))
                values.append(float(pred["value"]))
    mean = sum(values) / len(values) if values else float("nan")
    return {"day": day.isoformat(), "requests": len(records), "versions": sorted(versions),
            "mean_predicted_delay_min": round(mean, 1)}


def predict_one(settings: Settings, spec: PipelineSpec, day: date) -> dict[str, Any]:
    """One flight of ``day`` (its first departure), scored over HTTP, beside what happened."""
    frame = landed_day(settings, spec, day)
    row = frame.iloc[[0]]
    with http_client(settings) as http:
        resp = http.post(f"/{spec.name}/predict", json=requests_of(row, spec)[0])
        resp.raise_for_status()
    body = resp.json()
    first = row.iloc[0]
    return {"flight": f"{first['carrier']}{first['flight']} {first['origin']}->{first['dest']}",
            "scheduled": str(first[spec.dataset.timestamp]), "predicted_arr_delay_min": round(body["value"], 1),
            "actual_arr_delay_min": None if pd.isna(first[spec.target]) else float(first[spec.target]),
            "model_version": body["model_version"]}




def reset_logs(settings: Settings, spec: PipelineSpec, days: list[date]) -> int:
    """Drop the prediction logs of ``days`` (a re-run of the demo replays them); returns how many."""
    from flywheel.core import layout, storage

    client = storage.s3_client(settings)
    dropped = 0
    for day in days:
        prefix = layout.prediction_prefix(spec.name, day)
        for key in storage.list_keys("predictions", prefix, settings=settings, client=client):
            client.delete_object(Bucket=settings.bucket("predictions"), Key=key)
            dropped += 1
    return dropped
