"""The one featurizer: request columns + entity aggregates -> the model's input matrix.

Compiled once per spec from ``features.request`` and the entities' aggregations, and called
identically by training (a point-in-time training frame), serving (the request's columns and
the online store's aggregates), the skew check and monitoring. There is no second copy.

Request feature kinds (see docs/features.md): ``value``, ``log1p``, ``hour``, ``day_of_week``,
``is_weekend``, ``category`` (code in the contract's allowed set; unknown -> -1, flagged),
``ratio``, ``difference``, ``differs`` (1 when a request value differs from an aggregate that
exists), ``missing`` (1 when null) and ``python`` (a function of the use case's own folder).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.spec import PipelineSpec, RequestFeatureSpec

TIME_FNS = {"hour", "day_of_week", "is_weekend"}
UNKNOWN_CODE = -1


class FeaturizerError(ValueError):
    """A feature cannot be computed; the message names the use case and the feature."""


@dataclass(frozen=True)
class Features:
    """The model matrix of a batch and the rows whose categorical values the contract lacks."""

    matrix: np.ndarray
    names: list[str]
    # category column -> True where the value is not in the contract's allowed set
    unknown: dict[str, np.ndarray]

    def frame(self, index: Any = None) -> pd.DataFrame:
        return pd.DataFrame(self.matrix, columns=self.names, index=index)

    def unknown_any(self) -> np.ndarray:
        n = self.matrix.shape[0]
        out = np.zeros(n, dtype=bool)
        for mask in self.unknown.values():
            out |= mask
        return out


def _load_function(spec: PipelineSpec, name: str, ref: str) -> Callable[..., Any]:
    """``path/to/file.py:function`` relative to the spec's folder (the use case's own code)."""
    file, _, func = ref.rpartition(":")
    base = spec.source_dir or Path.cwd()
    path = (base / file).resolve()
    if not path.is_file():
        raise FeaturizerError(f"use case {spec.name}: feature {name!r}: {path} does not exist (function: {ref})")
    module_name = f"flywheel_usecase_{spec.name}_{path.stem}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise FeaturizerError(f"use case {spec.name}: feature {name!r}: cannot load {path}")
        module = importlib.util.module_from_spec(loader_spec)
        loader_spec.loader.exec_module(module)
        sys.modules[module_name] = module
    fn = getattr(module, func, None)
    if not callable(fn):
        raise FeaturizerError(f"use case {spec.name}: feature {name!r}: {path} has no function {func!r}")
    return fn


def _hours(values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day and day of week (Monday 0) of timestamps (datetimes or datetime64), in UTC."""
    if isinstance(values, list | tuple) and values and isinstance(values[0], datetime):
        utc = [v.astimezone(UTC) if v.tzinfo else v for v in values]
        n = len(utc)
        return (np.fromiter((v.hour for v in utc), dtype="float64", count=n),
                np.fromiter((v.weekday() for v in utc), dtype="float64", count=n))
    ts = pd.DatetimeIndex(pd.to_datetime(values, utc=True))
    return ts.hour.to_numpy(dtype="float64"), ts.dayofweek.to_numpy(dtype="float64")


def _numeric(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype("float64", copy=False)
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")


def _isna(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return np.isnan(values)
    return pd.isna(pd.Series(values)).to_numpy()


def _compare(fn: str, a: Any, b: Any, n: int) -> np.ndarray:
    """ratio (NaN where b is 0 or missing), difference, differs (1 where b exists and a != b)."""
    if fn == "differs":
        same = np.fromiter((x == y for x, y in zip(a, b, strict=True)), dtype=bool, count=n)
        return (~_isna(b) & ~same).astype("float64")
    x, y = _numeric(a), _numeric(b)
    if fn == "difference":
        return x - y
    with np.errstate(divide="ignore", invalid="ignore"):
        return x / np.where(y != 0, y, np.nan)


class Featurizer:
    """The compiled request features of one use case (see the module docstring)."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        contract = spec.dataset.contract.columns
        self.aggregates: dict[str, str] = {}  # aggregate -> its kind ("int" | "float" | "string")
        from flywheel.features.aggregates import _kind

        for entity in spec.features.entities.values():
            for name, agg in entity.aggregations.items():
                self.aggregates[name] = _kind(agg, spec)
        self.entity_features = list(self.aggregates)
        self.entity_defaults: dict[str, Any] = {}
        for entity in spec.features.entities.values():
            for name, agg in entity.aggregations.items():
                self.entity_defaults[name] = (agg.default if agg.default is not None
                                              else 0 if agg.fn in {"count", "distinct_count"} else None)
        self.vocabularies = {name: {v: i for i, v in enumerate(contract[f.column or ""].allowed or [])}
                             for name, f in spec.features.request.items() if f.fn == "category"}
        self.categorical = {name: len(v) for name, v in self.vocabularies.items()}
        self.functions = {name: _load_function(spec, name, f.function or "")
                          for name, f in spec.features.request.items() if f.fn == "python"}
        self.names = list(spec.features.model or self._default_names())
        self.request_columns = self._request_columns()

    def _default_names(self) -> list[str]:
        request = list(self.spec.features.request)
        numeric = [n for n, k in self.aggregates.items() if k in {"int", "float"}]
        return request + numeric

    def _request_columns(self) -> list[str]:
        spec, contract = self.spec, self.spec.dataset.contract.columns
        wanted = [k for e in spec.features.entities.values() for k in e.keys]
        for f in spec.features.request.values():
            wanted += [c for c in (f.column, *f.inputs) if c and c in contract]
            if f.fn in TIME_FNS and not f.column:
                wanted.append(spec.dataset.timestamp)
        wanted.append(spec.dataset.timestamp)
        return [c for c in dict.fromkeys(wanted) if c != spec.target]

    # -- computing ---------------------------------------------------------------------------
    def transform(self, columns: Mapping[str, Any], entities: Mapping[str, Any]) -> Features:
        """The model matrix of a batch: ``columns`` are request columns (arrays or lists of one
        length), ``entities`` the aggregates (arrays; a missing aggregate takes its default)."""
        n = len(next(iter(columns.values()))) if columns else 0
        computed: dict[str, np.ndarray] = {}
        unknown: dict[str, np.ndarray] = {}
        cache: dict[str, Any] = {}

        def raw(name: str) -> Any:
            if name in columns:
                return columns[name]
            if name in entities:
                return entities[name]
            if name in self.aggregates:
                default = self.entity_defaults.get(name)
                return np.full(n, np.nan if default is None else float(default)) \
                    if self.aggregates[name] != "string" else [None] * n
            if name in self.spec.features.request:
                return value(name)
            raise FeaturizerError(f"use case {self.spec.name}: no column or feature {name!r} in the batch")

        def value(name: str) -> np.ndarray:
            if name in computed:
                return computed[name]
            if name not in self.spec.features.request:
                computed[name] = _numeric(raw(name))
                return computed[name]
            computed[name] = self._compute(name, self.spec.features.request[name], raw, unknown, cache, n)
            return computed[name]

        matrix = np.empty((n, len(self.names)), dtype="float64")
        for i, name in enumerate(self.names):
            matrix[:, i] = value(name)
        return Features(matrix, self.names, unknown)

    def _compute(self, name: str, f: RequestFeatureSpec, raw: Callable[[str], Any],
                 unknown: dict[str, np.ndarray], cache: dict[str, Any], n: int) -> np.ndarray:
        fn = f.fn
        if fn in {"value", "log1p", "missing"}:
            values = raw(f.column or "")
            if fn == "missing":
                return _isna(values).astype("float64")
            return _numeric(values) if fn == "value" else np.log1p(np.clip(_numeric(values), 0, None))
        if fn in TIME_FNS:
            column = f.column or self.spec.dataset.timestamp
            if column not in cache:
                cache[column] = _hours(raw(column))
            hour, dow = cache[column]
            return hour if fn == "hour" else dow if fn == "day_of_week" else (dow >= 5).astype("float64")
        if fn == "category":
            return self._codes(name, f.column or name, raw(f.column or ""), unknown, n)
        if fn in {"ratio", "difference", "differs"}:
            return _compare(fn, raw(f.column or ""), raw(f.other or ""), n)
        if fn == "python":
            args = [raw(i) if i not in self.spec.features.request else self._feature(i, raw)
                    for i in f.inputs]
            out = np.asarray(self.functions[name](*[np.asarray(a) for a in args]), dtype="float64")
            if out.shape != (n,):
                raise FeaturizerError(f"use case {self.spec.name}: feature {name!r}: {f.function} returned "
                                      f"shape {out.shape}, expected ({n},)")
            return out
        raise FeaturizerError(f"use case {self.spec.name}: feature {name!r}: unknown fn {fn!r}")

    def _codes(self, name: str, column: str, values: Any, unknown: dict[str, np.ndarray], n: int) -> np.ndarray:
        """Codes in the contract's allowed set; an unknown value gets -1 and is flagged (null is not)."""
        mapping = self.vocabularies[name]
        codes = np.fromiter((mapping.get(v, UNKNOWN_CODE) for v in values), dtype="float64", count=n)
        unknown[column] = (codes == UNKNOWN_CODE) & ~_isna(values)
        return codes

    @staticmethod
    def _feature(name: str, raw: Callable[[str], Any]) -> Any:
        return raw(name)

    def frame(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The model matrix of a training/monitoring frame (request columns + aggregate columns)."""
        return self.transform_frame(rows).frame(index=rows.index)

    def transform_frame(self, rows: pd.DataFrame) -> Features:
        columns = {c: rows[c].to_numpy() for c in self.request_columns if c in rows.columns}
        if self.spec.dataset.timestamp in columns:
            columns[self.spec.dataset.timestamp] = pd.to_datetime(rows[self.spec.dataset.timestamp], utc=True)
        entities = {a: rows[a].to_numpy() for a in self.entity_features if a in rows.columns}
        if not columns:
            columns = {"__rows__": np.zeros(len(rows))}
        return self.transform(columns, entities)


_CACHE: dict[int, tuple[PipelineSpec, Featurizer]] = {}


def featurizer_for(spec: PipelineSpec) -> Featurizer:
    """The featurizer of ``spec`` (compiled once per spec object)."""
    hit = _CACHE.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    fz = Featurizer(spec)
    _CACHE[id(spec)] = (spec, fz)
    return fz


Featurizer.for_spec = staticmethod(featurizer_for)  # type: ignore[attr-defined]


def label_values(spec: PipelineSpec, frame: pd.DataFrame) -> pd.Series:
    """The label of each row: its column, or the spec's SQL expression evaluated by duckdb.

    Null where the label is unknown (callers count and drop those rows, never silently).
    """
    if spec.label.column:
        return frame[spec.label.column].rename(spec.target)
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET threads = 1")
        con.register("label_frame", frame.reset_index(drop=True).assign(__row=np.arange(len(frame))))
        try:
            got = con.execute(f"SELECT ({spec.label.expr}) AS y FROM label_frame ORDER BY __row").df()
        except duckdb.Error as exc:
            raise FeaturizerError(f"use case {spec.name}: label.expr {spec.label.expr!r}: {exc}") from exc
    values = got["y"]
    if values.dtype == bool:
        values = values.astype("int64")
    return pd.Series(values.to_numpy(), index=frame.index, name=spec.target)


def request_frame(spec: PipelineSpec, records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Request records as columns (what :meth:`Featurizer.transform` takes)."""
    fz = featurizer_for(spec)
    return {c: [r.get(c) for r in records] for c in fz.request_columns}
