"""Row keys: what identifies a row of a dataset, for every dataset, keyed or not.

A dataset's ``key`` is one column, several (a composite key) or none. :func:`row_keys` gives
every row one text id either way: the key's values (joined by ``|`` when composite), or, when
the dataset has no key, a hash of the row's contract columns (16 hex digits, the same for
equal rows of equal types, whatever the run). Quarantined rows carry it (``_row_key``), and
duplicate keys are found with it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flywheel.core.spec import DatasetSpec

ROW_KEY = "_row_key"
SEPARATOR = "|"


def row_hashes(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A uint64 hash per row of ``frame[columns]`` (index ignored; stable across runs)."""
    return np.asarray(pd.util.hash_pandas_object(frame[columns], index=False), dtype=np.uint64)


def row_keys(frame: pd.DataFrame, dataset: DatasetSpec) -> pd.Series:
    """The text id of each row: its key's values, or a hash of the row when there is no key."""
    columns = dataset.key_columns
    if not columns:
        hashes = row_hashes(frame, [c for c in dataset.contract.columns if c in frame.columns])
        return pd.Series([f"{h:016x}" for h in hashes], index=frame.index, dtype="object")
    text = frame[columns[0]].astype("string").fillna("<null>")
    for column in columns[1:]:
        text = text + SEPARATOR + frame[column].astype("string").fillna("<null>")
    return text.astype("object")


def key_rule(dataset: DatasetSpec) -> str:
    """The name of the rule a duplicate key breaks (as it appears in ``_failed_rules``)."""
    columns = dataset.key_columns
    if not columns:
        return "expect_rows_to_be_unique(row_hash)"
    return f"expect_compound_columns_to_be_unique({','.join(columns)})"


class DuplicateRows:
    """Rows that repeat an earlier row of the partition (exact duplicates), chunk by chunk.

    For datasets keyed by a row hash: the first copy is kept, later copies are flagged
    (equal rows carry the same facts, so nothing is lost).
    """

    def __init__(self, dataset: DatasetSpec) -> None:
        self.columns = list(dataset.contract.columns)
        self.seen = np.empty(0, dtype=np.uint64)

    def repeated(self, frame: pd.DataFrame) -> np.ndarray:
        """A mask of the rows of this chunk that repeat a row seen before (in it or earlier)."""
        hashes = row_hashes(frame, [c for c in self.columns if c in frame.columns])
        mask = pd.Series(hashes).duplicated().to_numpy() | np.isin(hashes, self.seen)
        self.seen = np.union1d(self.seen, hashes)
        return np.asarray(mask)
