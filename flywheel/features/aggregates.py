"""Windowed entity aggregates, compiled from the spec to duckdb SQL over curated partitions.

Each entity of ``features.entities`` becomes one query: the entity's rows of the horizon (the
longest window plus its delay, and at least one day more than the longest window) grouped by
its join keys, one ``FILTER`` per aggregate. An entity that had rows in the day before its
longest window but none inside it gets a "drop-out" row (counts 0, window statistics NULL): its
latest row then says "inactive" instead of repeating its last active week, identically offline
(point-in-time join) and online. Rows are stamped with the end of the data interval
(:func:`feature_timestamp`): aggregates over days <= ds become valid when ds closes.

Feast's own ``Aggregation`` is not executed by its local engine or online serving in 0.67, so
the SQL is compiled here and Feast receives plain feature views of the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pandas as pd

from flywheel.core.spec import AggregationSpec, EntitySpec, PipelineSpec, window_hours

INTEGER_FNS = {"count", "distinct_count"}
TYPED_FNS = {"mode", "last"}
DAY = 24


class FeatureDefinitionError(ValueError):
    """A feature definition cannot be compiled; the message names the use case and feature."""


def feature_timestamp(ds: date) -> datetime:
    """Aggregates over days <= ds become valid when ds closes (next midnight UTC)."""
    return datetime.combine(ds + timedelta(days=1), time.min, tzinfo=UTC)


def _interval(hours: int) -> str:
    return f"INTERVAL '{hours // DAY} days'" if hours % DAY == 0 else f"INTERVAL '{hours} hours'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class EntityQuery:
    """The compiled aggregates of one entity: its SQL and the output columns' kinds."""

    entity: str
    keys: list[str]
    sql: str
    horizon_hours: int
    # aggregate name -> "int" | "float" | a contract type ("string", ...) for mode/last
    kinds: dict[str, str]


def _window_filter(agg: AggregationSpec) -> list[str]:
    delay = window_hours(agg.delay) if agg.delay else 0
    parts = []
    if agg.window:
        parts.append(f"ts >= $stamp - {_interval(window_hours(agg.window) + delay)}")
    if delay:
        parts.append(f"ts < $stamp - {_interval(delay)}")
    if agg.where and agg.fn != "share":
        parts.append(f"({agg.where})")
    return parts


def _filtered(expr: str, agg: AggregationSpec) -> str:
    parts = _window_filter(agg)
    return f"{expr} FILTER (WHERE {' AND '.join(parts)})" if parts else expr


def _expression(name: str, agg: AggregationSpec) -> str:
    col = _quote(agg.column) if agg.column else ""
    plain = {"count": "count(*)", "sum": f"sum({col})", "mean": f"avg({col})", "min": f"min({col})",
             "max": f"max({col})", "std": f"stddev_samp({col})", "distinct_count": f"count(DISTINCT {col})",
             "last": f"arg_max({col}, ts)", "share": f"avg(CAST(({agg.where}) AS DOUBLE))",
             "seconds_since_last": "epoch($stamp) - epoch(max(ts))", "sql": str(agg.expr)}
    if agg.fn == "mode":
        return f"any_value({_quote('m_' + name)}.{_quote(name)})"
    expr = _filtered(plain[agg.fn], agg)
    if agg.fn in {"count", "distinct_count"}:
        expr = f"CAST({expr} AS BIGINT)"
    elif agg.fn not in TYPED_FNS:
        expr = f"CAST({expr} AS DOUBLE)"
    if agg.default is not None:
        expr = f"coalesce({expr}, {float(agg.default)!r})"
    return expr


def _kind(agg: AggregationSpec, spec: PipelineSpec) -> str:
    if agg.fn in INTEGER_FNS:
        return "int"
    if agg.fn in TYPED_FNS and agg.column:
        kind = spec.dataset.contract.columns[agg.column].type
        return "string" if kind in {"string", "datetime"} else "float" if kind != "bool" else "float"
    return "float"


def horizon_hours(entity: EntitySpec) -> tuple[int, int]:
    """(hours of rows read, hours within which an entity must have a row to be emitted)."""
    longest = max((window_hours(a.window) for a in entity.aggregations.values() if a.window), default=7 * DAY)
    active = longest + DAY
    spans = [window_hours(a.window) + (window_hours(a.delay) if a.delay else 0)
             for a in entity.aggregations.values() if a.window]
    return max([active, *spans]), active


def compile_entity(spec: PipelineSpec, entity_name: str, source: str, *,
                   shard: tuple[int, int] | None = None) -> EntityQuery:
    """The aggregates of ``entity_name`` over ``source`` (a duckdb relation), as one query.

    ``shard=(i, n)`` keeps the entities whose keys hash to ``i`` modulo ``n``: the n shards'
    rows together are the unsharded result (every aggregate is computed within one entity's rows,
    in the same scan order), which is how the day's features are mapped over a cluster.
    """
    entity = spec.features.entities[entity_name]
    if not entity.aggregations:
        raise FeatureDefinitionError(f"use case {spec.name}: entity {entity_name!r} has no aggregations")
    keys = [_quote(k) for k in entity.keys]
    ts = _quote(spec.dataset.timestamp)
    horizon, active = horizon_hours(entity)
    not_null = " AND ".join(f"{k} IS NOT NULL" for k in keys)
    if shard is not None:
        index, count = shard
        if not 0 <= index < count:
            raise FeatureDefinitionError(f"use case {spec.name}: shard {index} of {count} does not exist")
        not_null += f" AND hash({', '.join(keys)}) % {int(count)} = {int(index)}"
    ctes = [f"rows AS (SELECT * EXCLUDE ({ts}), {ts} AS ts FROM {source} "
            f"WHERE {ts} >= $stamp - {_interval(horizon)} AND {ts} < $stamp AND {not_null})"]
    joins = []
    for name, agg in entity.aggregations.items():
        if agg.fn != "mode":
            continue
        col, where = _quote(agg.column or ""), _window_filter(agg)
        cond = f"WHERE {' AND '.join(where)}" if where else ""
        ctes.append(f"{_quote('m_' + name)} AS (SELECT {', '.join(keys)}, first({col} ORDER BY n DESC, {col}) "
                    f"AS {_quote(name)} FROM (SELECT {', '.join(keys)}, {col}, count(*) AS n FROM rows {cond} "
                    f"GROUP BY ALL) GROUP BY {', '.join(keys)})")
        joins.append(f"LEFT JOIN {_quote('m_' + name)} USING ({', '.join(keys)})")
    cols = [f"CAST({k} AS {_sql_type(spec, key)}) AS {k}" for k, key in zip(keys, entity.keys, strict=True)]
    cols += [f"{_expression(name, agg)} AS {_quote(name)}" for name, agg in entity.aggregations.items()]
    having = "" if active >= horizon else f" HAVING count(*) FILTER (WHERE ts >= $stamp - {_interval(active)}) > 0"
    sql = (f"WITH {', '.join(ctes)} SELECT {', '.join(cols)}, $stamp AS event_timestamp FROM rows "
           f"{' '.join(joins)} GROUP BY {', '.join('rows.' + k for k in keys)}{having} "
           f"ORDER BY {', '.join(keys)}")
    kinds = {name: _kind(agg, spec) for name, agg in entity.aggregations.items()}
    return EntityQuery(entity_name, list(entity.keys), sql, horizon, kinds)


def _sql_type(spec: PipelineSpec, column: str) -> str:
    kind = spec.dataset.contract.columns[column].type
    return {"int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "datetime": "TIMESTAMPTZ"}.get(kind, "VARCHAR")


def parquet_source(paths: list[str]) -> str:
    """A duckdb relation over Parquet files (scanned, never loaded whole)."""
    return "read_parquet([" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "], union_by_name=true)"


def run(query: EntityQuery, ds: date, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """Execute a compiled query as of the end of ``ds`` (``frame`` is registered as ``window_frame``)."""
    import duckdb

    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        # One thread: parallel float aggregates (avg, stddev) combine partial states in
        # completion order, so a rerun could differ in the last bit and break byte-identical
        # partitions. A day's windows are small; the scan stays streamed.
        con.execute("SET threads = 1")
        if frame is not None:
            con.register("window_frame", frame)
        try:
            out = con.execute(query.sql, {"stamp": feature_timestamp(ds)}).df()
        except duckdb.Error as exc:
            raise FeatureDefinitionError(f"aggregates of entity {query.entity!r} failed: {exc}") from exc
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    for name, kind in query.kinds.items():
        if kind == "int":
            out[name] = out[name].astype("int64")
    return out


def entity_aggregates(spec: PipelineSpec, entity: str, window: pd.DataFrame | list[str], ds: date, *,
                      shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """The aggregates of one entity as of the end of ``ds`` over a frame or Parquet files
    (``shard=(i, n)``: only the entities of that shard, see :func:`compile_entity`)."""
    if isinstance(window, list):
        return run(compile_entity(spec, entity, parquet_source(window), shard=shard), ds)
    return run(compile_entity(spec, entity, "window_frame", shard=shard), ds, window)


def lookback_hours(spec: PipelineSpec) -> int:
    """How far back the day's aggregates read (every entity's horizon)."""
    return max(horizon_hours(e)[0] for e in spec.features.entities.values())
