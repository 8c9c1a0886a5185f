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
from collections.abc import Callable, Mapping
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
    if isinstance(values, list | tuple):  # a request's columns: numbers and None (-> NaN) need no pandas
        try:
            return np.array(values, dtype="float64")
        except (TypeError, ValueError):
            pass
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64")


def _float(values: Any, env: Env, name: str) -> np.ndarray:
    """An aggregate as float64 (the online reader's arrays usually are already)."""
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    return _numeric(env.raw(name))


def _isna(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return np.isnan(values) if values.dtype.kind == "f" else np.asarray(pd.isna(values), dtype=bool)
    if isinstance(values, list | tuple):  # a request's columns: pandas' missing values, no Series per call
        return np.fromiter((v is None or v is pd.NaT or v is pd.NA or (isinstance(v, float) and v != v)
                            for v in values), dtype=bool, count=len(values))
    return pd.isna(pd.Series(values)).to_numpy()


def _present(v: Any) -> bool:
    return v is not None and v is not pd.NaT and v is not pd.NA and not (isinstance(v, float) and v != v)


def _compare(fn: str, a: Any, b: Any, n: int) -> np.ndarray:
    """ratio (NaN where b is 0 or missing), difference, differs (1 where b exists and a != b)."""
    if fn == "differs":  # one pass: on the request path n is often 1
        return np.fromiter((_present(y) and x != y for x, y in zip(a, b, strict=True)), dtype="float64", count=n)
    x, y = _numeric(a), _numeric(b)
    if fn == "difference":
        return x - y
    with np.errstate(divide="ignore", invalid="ignore"):
        return x / np.where(y != 0, y, np.nan)


def _time_step(fn: str, column: str) -> Callable[[Env], np.ndarray]:
    key = "__time__" + column  # hour and weekday are computed once per column and call

    def step(env: Env) -> np.ndarray:
        if key not in env.values:
            env.values[key] = _hours(env.raw(column))
        hour, dow = env.values[key]
        return hour if fn == "hour" else dow if fn == "day_of_week" else (dow >= 5).astype("float64")

    return step


class Env:
    """One call's arrays: request columns, aggregates (or their defaults), computed features."""

    __slots__ = ("columns", "entities", "fz", "n", "unknown", "values")

    def __init__(self, fz: Featurizer, columns: Mapping[str, Any], entities: Mapping[str, Any], n: int) -> None:
        self.fz, self.columns, self.entities, self.n = fz, columns, entities, n
        self.values: dict[str, Any] = {}
        self.unknown: dict[str, np.ndarray] = {}

    def get(self, name: str) -> Any:
        """A computed feature, else a request column or an aggregate."""
        values = self.values.get(name)
        if values is not None:
            return values
        return self.raw(name)

    def raw(self, name: str) -> Any:
        """A request column or an aggregate (its default when the batch lacks it)."""
        if name in self.columns:
            return self.columns[name]
        if name in self.entities:
            return self.entities[name]
        kind = self.fz.aggregates.get(name)
        if kind is not None:  # an aggregate the batch lacks: its default
            default = self.fz.entity_defaults.get(name)
            if kind == "string":
                return np.full(self.n, None, dtype=object)
            return np.full(self.n, np.nan if default is None else float(default))
        raise FeaturizerError(f"use case {self.fz.spec.name}: no column or feature {name!r} in the batch")


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
        self._plan = self._build_plan()

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
    # The spec is compiled once into a plan: one step per feature the model needs, in dependency
    # order, each a closure over its resolved arguments. A call runs the steps over an
    # environment of arrays (request columns, aggregates, computed features): no spec walk and
    # no per-call dispatch on the feature kind (it is on the request path: one row in µs).
    def _build_plan(self) -> list[tuple[str, Callable[[Env], np.ndarray]]]:
        plan: list[tuple[str, Callable[[Env], np.ndarray]]] = []
        planned: set[str] = set()

        def need(name: str, chain: tuple[str, ...] = ()) -> None:
            if name in planned or name not in self.spec.features.request:
                return
            if name in chain:
                raise FeaturizerError(f"use case {self.spec.name}: features.request.{name} refers to itself "
                                      f"through {' -> '.join(chain)}")
            f = self.spec.features.request[name]
            # ``column`` names a contract column when there is one (``amount: {fn: value, column:
            # amount}`` reads the column); ``other`` and ``inputs`` name features first.
            column = f.column if f.column not in self.spec.dataset.contract.columns else None
            for ref in (column, f.other, *f.inputs):
                if ref:
                    need(ref, (*chain, name))
            plan.append((name, self._step(name, f)))
            planned.add(name)

        for name in self.names:
            need(name)
        return plan

    def _step(self, name: str, f: RequestFeatureSpec) -> Callable[[Env], np.ndarray]:
        fn, column, other = f.fn, f.column or "", f.other or ""
        raw = column in self.spec.dataset.contract.columns  # read the column, not a feature of its name

        def source(env: Env) -> Any:
            return env.raw(column) if raw else env.get(column)

        if fn == "value":
            return lambda env: _numeric(source(env))
        if fn == "log1p":
            return lambda env: np.log1p(np.clip(_numeric(source(env)), 0, None))
        if fn == "missing":
            return lambda env: _isna(source(env)).astype("float64")
        if fn in TIME_FNS:
            return _time_step(fn, f.column or self.spec.dataset.timestamp)
        if fn == "category":
            return self._category_step(name, column)
        if fn in {"ratio", "difference", "differs"}:
            return lambda env: _compare(fn, source(env), env.get(other), env.n)
        if fn == "python":
            return self._python_step(name, f)
        raise FeaturizerError(f"use case {self.spec.name}: feature {name!r}: unknown fn {fn!r}")

    def _category_step(self, name: str, column: str) -> Callable[[Env], np.ndarray]:
        """Codes in the contract's allowed set; an unknown value gets -1 and is flagged (null is not)."""
        mapping = self.vocabularies[name]

        def codes(env: Env) -> np.ndarray:
            values = env.raw(column)
            out = np.fromiter((mapping.get(v, UNKNOWN_CODE) for v in values), dtype="float64", count=env.n)
            missing = out == UNKNOWN_CODE
            # flagged: a value outside the allowed set (a null is missing, not unknown)
            env.unknown[column] = missing & ~_isna(values) if missing.any() else missing
            return out

        return codes

    def _python_step(self, name: str, f: RequestFeatureSpec) -> Callable[[Env], np.ndarray]:
        function, inputs, use_case = self.functions[name], list(f.inputs), self.spec.name

        def call(env: Env) -> np.ndarray:
            out = np.asarray(function(*[np.asarray(env.get(i)) for i in inputs]), dtype="float64")
            if out.shape != (env.n,):
                raise FeaturizerError(f"use case {use_case}: feature {name!r}: {f.function} returned "
                                      f"shape {out.shape}, expected ({env.n},)")
            return out

        return call

    def transform(self, columns: Mapping[str, Any], entities: Mapping[str, Any]) -> Features:
        """The model matrix of a batch: ``columns`` are request columns (arrays or lists of one
        length), ``entities`` the aggregates (arrays; a missing aggregate takes its default)."""
        n = len(next(iter(columns.values()))) if columns else 0
        env = Env(self, columns, entities, n)
        for name, step in self._plan:
            env.values[name] = step(env)
        computed = env.values
        columns_out = [computed[name] if name in computed else _float(entities.get(name), env, name)
                       for name in self.names]
        # one C call for the (features x rows) block, transposed to C order (rows x features)
        matrix = np.array(columns_out, dtype="float64").reshape(len(self.names), n).T.copy()
        return Features(matrix, self.names, env.unknown)

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
