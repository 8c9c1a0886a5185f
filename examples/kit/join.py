"""The example's own stage: join one day of two curated datasets into the use case's source.

The rows of ``payments`` and ``payment_context`` that passed their contracts are joined on their
shared key; the joined day is written where the use case ``fraud_joined`` reads its source, so
from there it goes through its own contract (ingest → validate) like any landed batch. Written to
a temporary file and renamed: a rerun of the day replaces it, never appends. Nothing here names a
column: the key and the columns come from the specs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from flywheel.core import storage
from flywheel.core.config import Settings, get_settings
from flywheel.core.spec import DataSpec
from flywheel.data import sources

HERE = Path(__file__).resolve().parent


class JoinError(ValueError):
    """The two datasets cannot be joined (different keys); the message names both."""


def join_day(left: DataSpec, right: DataSpec, into: DataSpec, ds: str, *,
             settings: Settings | None = None) -> dict[str, Any]:
    """Inner-join the curated ``ds`` of ``left`` and ``right`` on their key; write the rows as the
    source partition ``ds`` of ``into``. Columns both have (the timestamp) are taken from ``left``.

    Returns ``{"ds", "rows", "left_rows", "right_rows", "path"}``. Raises :class:`JoinError` when
    the keys differ and ``PartitionNotFound`` when either day is not validated yet."""
    settings = settings or get_settings()
    if left.dataset.key_columns != right.dataset.key_columns:
        raise JoinError(f"cannot join {left.dataset.name} (key {left.dataset.key_columns}) with "
                        f"{right.dataset.name} (key {right.dataset.key_columns}): the keys differ")
    keys = list(left.dataset.key_columns)
    a = storage.read_partition(zone="curated", dataset=left.dataset.name, ds=ds, settings=settings)
    b = storage.read_partition(zone="curated", dataset=right.dataset.name, ds=ds, settings=settings)
    extra = [c for c in b.columns if c not in a.columns]
    joined = a.merge(b[[*keys, *extra]], on=keys, how="inner", validate="one_to_one")
    joined = joined.sort_values(keys, kind="stable").reset_index(drop=True)
    folder = Path(sources.location(into, ds, settings))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    tmp = path.with_suffix(".tmp")
    joined.to_parquet(tmp, index=False)
    tmp.replace(path)
    return {"ds": ds, "rows": len(joined), "left_rows": len(a), "right_rows": len(b), "path": str(path)}


def split_landing(root: Path, frame: pd.DataFrame, ds: str, left: DataSpec, right: DataSpec) -> None:
    """Write one day of whole rows as the two sources (each spec's contract columns): how the
    example (and its test) makes the two datasets out of the fraud generator's transactions."""
    for spec in (left, right):
        folder = root / spec.dataset.name / f"ds={ds}"
        folder.mkdir(parents=True, exist_ok=True)
        frame[list(spec.dataset.contract.columns)].to_parquet(folder / "part-0.parquet", index=False)
