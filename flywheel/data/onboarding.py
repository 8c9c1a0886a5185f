"""Draft specs from data: a dataset contract from sample files, a use case on a dataset spec.

A data engineer onboards a dataset by reviewing one drafted YAML file, not by writing Python.
The drafts are meant to survive the days after the samples:

* :func:`draft_dataset` reads every sample (several files or a glob) and infers types,
  nullability and allowed sets from all of them; calendar-like columns (year, month, hour,
  day of week...) get their natural range or none, id-like columns no range, other numeric
  ranges are widened by the observed span, long-tailed text gets no allowed set; the key is
  one column, several (a composite key) or none (rows keyed by a hash of the row).
* :func:`draft_use_case` writes a complete use-case spec on a dataset spec: the label (a
  column or an expression such as ``arr_delay > 15``), entities with default windowed
  aggregations, request-time features, training, and monitoring defaults.

Both raise :class:`DraftError` with one line saying what is wrong and what to do.
"""

from __future__ import annotations

import glob
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from flywheel.core.spec import NAME, DataSpec, TaskType

ALLOWED_SET_MAX = 20  # a text column with at most this many distinct values gets an allowed set
SAMPLE_ROWS = 100_000  # rows read per sample file
FORMATS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl"}
DEFAULT_MAX_QUARANTINE_SHARE = 0.05
# Natural ranges of calendar-like integer columns (name token -> bounds); None: no range.
CALENDAR: dict[str, tuple[int, int] | None] = {
    "year": None, "yr": None, "month": (1, 12), "day": (1, 31), "dom": (1, 31), "hour": (0, 24),
    "minute": (0, 59), "second": (0, 60), "dow": (0, 7), "weekday": (0, 7), "week": (1, 53),
    "quarter": (1, 4), "doy": (1, 366), "time": None, "date": None,
}
ID_TOKENS = frozenset({"id", "key", "code", "no", "num", "number", "uuid", "hash", "flight", "tailnum"})
ID_SUFFIXES = ("id", "_key", "_code", "_no", "_number", "_uuid", "_hash")


class DraftError(ValueError):
    """A draft cannot be made from these inputs; the message says what to pass instead."""


@dataclass
class Draft:
    """A drafted spec (a dict ready for YAML) and what the drafter chose for the reviewer."""

    spec: dict[str, Any]
    notes: list[str] = field(default_factory=list)


# ---- reading samples -------------------------------------------------------------------


def expand_samples(patterns: Sequence[str]) -> list[Path]:
    """Sample files named by paths or globs, in order, each once; raises DraftError if none."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise DraftError(f"no sample file matches {pattern!r}: pass existing files or a quoted glob")
        for match in matches:
            path = Path(match)
            if not path.is_file():
                raise DraftError(f"sample {path} is not a file: pass CSV, Parquet or JSON Lines files")
            if path not in out:
                out.append(path)
    return out


def sample_format(samples: Sequence[Path], fmt: str | None) -> str:
    """The samples' one format: ``fmt`` if given, else from their suffixes."""
    if fmt is not None:
        if fmt not in ("parquet", "csv", "jsonl"):
            raise DraftError(f"unknown --format {fmt!r}: use csv, parquet or jsonl")
        return fmt
    found = {FORMATS.get(p.suffix.lower().lstrip(".")) for p in samples}
    if None in found:
        odd = next(p for p in samples if FORMATS.get(p.suffix.lower().lstrip(".")) is None)
        raise DraftError(f"{odd}: unknown format {odd.suffix!r}: pass --format csv|parquet|jsonl")
    if len(found) > 1:
        raise DraftError(f"samples mix formats ({', '.join(sorted(str(f) for f in found))}): pass one format")
    return str(found.pop())


def read_sample(path: Path, fmt: str) -> pa.Table:
    """At most SAMPLE_ROWS rows of one sample file."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(path)
            first = next(parquet.iter_batches(batch_size=SAMPLE_ROWS), None)
            return pa.Table.from_batches([first]) if first is not None else parquet.schema_arrow.empty_table()
        if fmt == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
        import pyarrow.json as pjson

        return pjson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DraftError(f"{path}: cannot be read as {fmt}: {str(exc).splitlines()[0]}") from exc


def read_samples(samples: Sequence[Path], fmt: str) -> tuple[pa.Table, list[pa.Table]]:
    """Every sample read and combined (types promoted: int + float -> float); all must have
    the same columns. Returns the combined table and the per-sample tables."""
    tables = [read_sample(p, fmt) for p in samples]
    first = tables[0].schema.names
    for path, table in zip(samples[1:], tables[1:], strict=True):
        if set(table.schema.names) != set(first):
            diff = sorted(set(first) ^ set(table.schema.names))
            raise DraftError(f"{path} has other columns than {samples[0]} (differing: {', '.join(diff)}): "
                             "samples must be partitions of one dataset")
    try:
        combined = pa.concat_tables([t.select(first) for t in tables], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DraftError(f"samples disagree on a column's type: {str(exc).splitlines()[0]}") from exc
    if combined.num_rows == 0:
        raise DraftError("the samples hold no rows: pass files with data")
    return combined, tables


# ---- column kinds ------------------------------------------------------------------------


def column_type(arrow_type: pa.DataType) -> str:
    """The contract type of an Arrow type."""
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return "datetime"
    return "string"


def _tokens(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def calendar_token(name: str) -> str | None:
    """The calendar word in a column name (``dep_hour`` -> ``hour``), or None."""
    tokens = _tokens(name)
    if "day" in tokens and ("week" in tokens or "wk" in tokens):
        return "dow"
    if "day" in tokens and "year" in tokens:
        return "doy"
    return next((t for t in reversed(tokens) if t in CALENDAR), None)


def is_id_like(name: str) -> bool:
    """A column whose numbers are labels, not quantities (``user_id``, ``flight``, ``zip_code``)."""
    lowered = name.lower()
    return lowered.endswith(ID_SUFFIXES) or any(t in ID_TOKENS for t in _tokens(name))


def _numeric_rule(name: str, column: pa.ChunkedArray, kind: str, notes: list[str]) -> dict[str, Any]:
    import pyarrow.compute as pc

    if len(column) == column.null_count:
        return {}
    bounds = pc.min_max(column)
    low, high = float(bounds["min"].as_py()), float(bounds["max"].as_py())
    token = calendar_token(name)
    if token is not None and kind == "int":
        natural = CALENDAR[token]
        if natural is not None and natural[0] <= low and high <= natural[1]:
            notes.append(f"{name}: calendar-like ({token}): range {natural[0]}..{natural[1]}")
            return {"min": natural[0], "max": natural[1]}
        notes.append(f"{name}: calendar-like ({token}): no range")
        return {}
    if token is not None or is_id_like(name):
        notes.append(f"{name}: {'calendar' if token else 'id'}-like: no range")
        return {}
    span = high - low
    if span == 0:
        notes.append(f"{name}: one value ({low:g}) in every sample: no range")
        return {}
    wide_low = max(0.0, low - span) if low >= 0 else low - span
    wide_high = high + span
    notes.append(f"{name}: observed {low:g}..{high:g}, range widened to {wide_low:g}..{wide_high:g}")
    if kind == "int":
        return {"min": math.floor(wide_low), "max": math.ceil(wide_high)}
    return {"min": round(wide_low, 6), "max": round(wide_high, 6)}


def _text_rule(name: str, column: pa.ChunkedArray, notes: list[str]) -> dict[str, Any]:
    import pyarrow.compute as pc

    distinct = pc.unique(column.drop_null())
    values = len(column) - column.null_count
    if len(distinct) <= ALLOWED_SET_MAX and values >= 10 * max(len(distinct), 1) and not is_id_like(name):
        return {"allowed": sorted(str(v) for v in distinct.to_pylist())}
    if len(distinct) > ALLOWED_SET_MAX:
        notes.append(f"{name}: {len(distinct)} distinct values: no allowed set")
    return {}


PII_TOKENS = frozenset({"email", "phone", "mobile", "ssn", "passport", "iban", "surname", "dob", "birthdate",
                        "birthday"})
PII_PAIRS = (("first", "name"), ("last", "name"), ("full", "name"), ("ip", "address"), ("street", "address"),
             ("home", "address"), ("card", "number"), ("of", "birth"))
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE)


def pii_suspect(name: str, column: pa.ChunkedArray) -> str | None:
    """Why a column looks like personal data (its name, or e-mail addresses in it), or None."""
    tokens = _tokens(name)
    hit = sorted(PII_TOKENS.intersection(tokens)) or [" ".join(p) for p in PII_PAIRS
                                                       if any(tokens[i:i + 2] == list(p) for i in range(len(tokens)))]
    if hit:
        return f"its name ({hit[0]})"
    if column_type(column.type) == "string":
        values = [v for v in column.drop_null().slice(0, 200).to_pylist() if isinstance(v, str)]
        if values and sum(bool(_EMAIL.match(v)) for v in values) >= len(values) / 2:
            return "its values are e-mail addresses"
    return None


def _tag_pii(columns: dict[str, Any], combined: pa.Table, timestamp: str, key_columns: list[str],
             notes: list[str]) -> None:
    """Draft ``pii: true`` on columns that look like personal data (the reviewer decides)."""
    for name, rule in columns.items():
        reason = None if name == timestamp else pii_suspect(name, combined[name])
        if reason is None:
            continue
        if name in key_columns and rule["type"] != "string":  # a key is kept everywhere: hash it or nothing
            notes.append(f"{name}: looks like personal data ({reason}), but the key is not a string, so it "
                         "cannot be hashed: left untagged: review")
            continue
        for bound in ("min", "max", "allowed"):
            rule.pop(bound, None)
        rule["pii"] = True
        if rule["type"] != "string":
            rule["pii_policy"] = "drop"  # a keyed hash is text: a number would change type
        policy = rule.get("pii_policy", "hash")
        notes.append(f"{name}: looks like personal data ({reason}): drafted pii: true, policy {policy} "
                     "(docs/security.md, Privacy): review")


def column_rule(name: str, column: pa.ChunkedArray, notes: list[str]) -> dict[str, Any]:
    """The contract rule of one column inferred from every sample's values."""
    kind = column_type(column.type)
    rule: dict[str, Any] = {"type": kind, "nullable": column.null_count > 0}
    if kind in ("int", "float"):
        rule |= _numeric_rule(name, column, kind, notes)
    elif kind == "string":
        rule |= _text_rule(name, column, notes)
    return rule


# ---- keys -------------------------------------------------------------------------------


def _duplicates(table: pa.Table, columns: list[str]) -> int:
    """Rows of ``table`` whose values of ``columns`` appeared before (nulls count as values)."""
    frame = table.select(columns).to_pandas()
    return int(frame.duplicated().sum())


def _unique_everywhere(tables: list[pa.Table], columns: list[str]) -> bool:
    return all(t.num_rows > 1 and _duplicates(t, columns) == 0
               and all(t[c].null_count == 0 for c in columns) for t in tables)


def choose_key(key: list[str] | None, kinds: dict[str, str], tables: list[pa.Table],
               samples: Sequence[Path], timestamp: str) -> list[str]:
    """The key's columns: given ones (checked unique in every sample), or one found."""
    if key is not None:
        missing = [c for c in key if c not in kinds]
        if missing:
            raise DraftError(f"--key names columns not in the samples: {', '.join(missing)} "
                             f"(columns: {', '.join(kinds)})")
        for path, table in zip(samples, tables, strict=True):
            dupes = _duplicates(table, key)
            if dupes:
                raise DraftError(f"--key {','.join(key)} is not unique in {path} ({dupes} repeated rows): "
                                 "add columns (--key a,b,c) or pass --key none to key rows by a row hash")
        return key
    candidates = [n for n, k in kinds.items() if n != timestamp and k in ("string", "int")]
    candidates.sort(key=lambda n: not is_id_like(n))  # prefer id-like names
    found = next((n for n in candidates if _unique_everywhere(tables, [n])), None)
    if found is None:
        raise DraftError("no column is a unique key in every sample: pass --key a,b for a composite key, "
                         "or --key none to key rows by a hash of the row")
    return [found]


def parse_key(text: str | None) -> list[str] | None:
    """``--key``: None (find one), ``none`` ([]: a row hash), or ``a,b,c``."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "null", "-", ""):
        return []
    return [part.strip() for part in text.split(",") if part.strip()]


# ---- datasets ---------------------------------------------------------------------------


def choose_timestamp(timestamp: str | None, kinds: dict[str, str]) -> str:
    """The event-time column: the one given (checked), or the first datetime column."""
    timestamp = timestamp or next((n for n, k in kinds.items() if k == "datetime"), None)
    if timestamp is None:
        raise DraftError("no datetime column in the samples: pass --timestamp COLUMN "
                         "(a column of ISO-8601 date-times)")
    if timestamp not in kinds:
        raise DraftError(f"--timestamp {timestamp!r} is not a column of the samples (columns: {', '.join(kinds)})")
    if kinds[timestamp] != "datetime":
        raise DraftError(f"--timestamp {timestamp!r} holds {kinds[timestamp]} values, not date-times: "
                         "pass a column of ISO-8601 date-times")
    return timestamp


def draft_dataset(samples: Sequence[Path], *, name: str, source: str, timestamp: str | None = None,
                  key: list[str] | None = None, fmt: str | None = None,
                  label: str | None = None) -> Draft:
    """A ``dataset:`` section inferred from sample files; review it before use.

    ``key``: None finds a unique column, ``[]`` keys rows by a hash of the row, a list is
    a (composite) key. Raises :class:`DraftError` (one line) when no draft can be made.
    """
    if not re.match(NAME, name):
        raise DraftError(f"--name {name!r}: use lower-case letters, digits and '_', starting with a letter")
    if not samples:
        raise DraftError("no sample file given: pass one or more CSV, Parquet or JSON Lines files")
    fmt = sample_format(samples, fmt)
    combined, tables = read_samples(samples, fmt)
    kinds = {f.name: column_type(f.type) for f in combined.schema}
    timestamp = choose_timestamp(timestamp, kinds)
    key_columns = choose_key(key, kinds, tables, samples, timestamp)
    notes: list[str] = []
    columns = {n: column_rule(n, combined[n], notes) for n in kinds}
    for column in key_columns:
        columns[column] = {k: v for k, v in columns[column].items() if k not in ("min", "max", "allowed")}
        columns[column]["nullable"] = False
    if len(key_columns) == 1:
        columns[key_columns[0]]["unique"] = True
    if not key_columns:
        notes.append("key: none: rows are keyed by a hash of the row (exact duplicates are quarantined)")
    columns[timestamp]["nullable"] = False
    _tag_pii(columns, combined, timestamp, key_columns, notes)
    if label and label in columns:
        for bound in ("min", "max"):
            columns[label].pop(bound, None)
    dataset: dict[str, Any] = {
        "name": name, "source": source, "format": fmt, "timestamp": timestamp,
        "key": key_columns[0] if len(key_columns) == 1 else (key_columns or None),
        "contract": {
            "columns": columns,
            "timestamp_in_interval": True,
            "max_quarantine_share": DEFAULT_MAX_QUARANTINE_SHARE,
            "volume": {"history": 7, "min_history": 3, "min_ratio": 0.5, "max_ratio": 2.0},
        },
    }
    return Draft(spec=dataset, notes=notes)


# ---- use cases --------------------------------------------------------------------------

SQL_WORDS = frozenset({"and", "or", "not", "null", "is", "in", "between", "case", "when", "then", "else",
                       "end", "true", "false", "like", "ilike", "cast", "as", "int", "integer", "bigint",
                       "double", "float", "varchar", "coalesce", "abs", "lower", "upper", "least",
                       "greatest", "if", "distinct"})
_OPERATORS = [(">=", " ge "), ("<=", " le "), ("!=", " ne "), ("<>", " ne "), (">", " gt "), ("<", " lt "),
              ("=", " eq ")]


def feature_name(text: str) -> str:
    """A valid spec name made from ``text`` (``ArrDelay > 15`` -> ``arr_delay_gt_15``)."""
    for op, word in _OPERATORS:
        text = text.replace(op, word)
    name = "_".join(_tokens(text))[:60].strip("_") or "x"
    return name if name[0].isalpha() else f"f_{name}"


def _label(label: str, columns: dict[str, Any], label_name: str | None) -> tuple[dict[str, Any], set[str]]:
    """The ``label:`` section and the columns it reads (kept out of the request features)."""
    if label in columns:
        return {"column": label}, {label}
    names = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", re.sub(r"'[^']*'", "", label)))
    used = {n for n in names if n in columns}
    unknown = sorted(n for n in names - used if n.lower() not in SQL_WORDS)
    if unknown:
        raise DraftError(f"--label {label!r} names {', '.join(unknown)}, not columns of the dataset contract "
                         f"(columns: {', '.join(columns)})")
    if not used:
        raise DraftError(f"--label {label!r} reads no column: pass a column or an expression on columns")
    return {"expr": label, "name": label_name or feature_name(label)}, used


def _entities(entities: Sequence[str], columns: dict[str, Any]) -> dict[str, list[str]]:
    """``a,b`` -> one entity per column; ``a+b`` -> one entity with a composite key."""
    out: dict[str, list[str]] = {}
    for item in entities:
        keys = [k.strip() for k in item.split("+") if k.strip()]
        missing = [k for k in keys if k not in columns]
        if not keys or missing:
            raise DraftError(f"--entities {item!r}: {', '.join(missing) or 'empty'} not in the dataset contract "
                             f"(columns: {', '.join(columns)})")
        name = "_".join(feature_name(re.sub(r"_?id$", "", k, flags=re.IGNORECASE) or k) for k in keys)
        out[name] = keys
    if not out:
        raise DraftError("--entities: name at least one column the rows are grouped by (e.g. --entities store,region)")
    return out


def _unique(name: str, taken: set[str]) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}_{n}", n + 1
    taken.add(out)
    return out


def _request_features(request: Sequence[str], columns: dict[str, Any], timestamp: str,
                      taken: set[str], notes: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Request features of the columns known at prediction time, and the numeric ones."""
    features: dict[str, Any] = {}
    numeric: list[str] = []
    for column in request:
        rule = columns[column]
        if rule.type in ("int", "float", "bool") and not (rule.type != "bool" and is_id_like(column)):
            features[_unique(feature_name(column), taken)] = {"fn": "value", "column": column}
            if rule.type != "bool" and calendar_token(column) is None:
                numeric.append(column)
        elif rule.type == "string" and rule.allowed:
            features[_unique(feature_name(f"{column}_code"), taken)] = {"fn": "category", "column": column}
        else:
            notes.append(f"{column}: {rule.type} without an allowed set: not a request feature "
                         "(make it an entity, or add a python feature)")
    for fn in ("hour", "day_of_week"):
        features[_unique(f"event_{fn}", taken)] = {"fn": fn, "column": timestamp}
    return features, numeric


def _aggregations(entity: str, numeric: Sequence[str], taken: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for window in ("1d", "7d"):
        out[_unique(f"{entity}_count_{window}", taken)] = {"fn": "count", "window": window, "default": 0}
    for column in numeric:
        for fn in ("mean", "max"):
            out[_unique(f"{entity}_{feature_name(column)}_{fn}_7d", taken)] = {
                "fn": fn, "column": column, "window": "7d"}
    return out


def draft_use_case(data: DataSpec, *, label: str, task: TaskType, entities: Sequence[str],
                   request: Sequence[str] | None = None, name: str | None = None,
                   label_name: str | None = None, owner: str | None = None,
                   dataset_section: dict[str, Any] | None = None) -> Draft:
    """A complete use-case spec on ``data``'s dataset; raises :class:`DraftError` (one line).

    ``dataset_section``: the ``dataset:`` mapping as written in the dataset spec's file (kept
    as it is); default: ``data.dataset`` serialized.
    """
    dataset = data.dataset
    columns = dataset.contract.columns
    name = name or data.name
    if not re.match(NAME, name):
        raise DraftError(f"--name {name!r}: use lower-case letters, digits and '_', starting with a letter")
    label_section, label_columns = _label(label, columns, label_name)
    if task == "regression" and "column" in label_section and columns[label].type not in ("int", "float"):
        raise DraftError(f"--task regression needs a numeric label; {label!r} is {columns[label].type}")
    keyed = _entities(entities, columns)
    entity_columns = {c for keys in keyed.values() for c in keys}
    excluded = label_columns | set(dataset.key_columns) | {dataset.timestamp} | entity_columns
    if request is None:
        request = [c for c, r in columns.items() if c not in excluded and r.type != "datetime"]
    for column in request:
        if column not in columns:
            raise DraftError(f"--request {column!r} is not in the dataset contract (columns: {', '.join(columns)})")
        if column in label_columns:
            raise DraftError(f"--request {column!r} is read by the label: it is not known at prediction time")
    notes: list[str] = []
    taken = set(keyed)
    features, numeric = _request_features(request, columns, dataset.timestamp, taken, notes)
    entity_specs = {e: {"keys": keys, "aggregations": _aggregations(e, numeric, taken)}
                    for e, keys in keyed.items()}
    monitored = [n for n, f in features.items() if f["fn"] == "value"][:8]
    monitored += [n for e in entity_specs.values() for n in e["aggregations"] if n.endswith("_count_7d")]
    spec: dict[str, Any] = {
        "name": name,
        "model_name": name.replace("_", "-") + "-model",
        "owner": owner or data.owner,
        "dataset": dataset_section or dataset.model_dump(mode="json", exclude_none=True),
        "task": task,
        "label": label_section,
        "features": {"entities": entity_specs, "request": features},
        "training": {
            "lookback_days": 30,
            "split": {"train": 0.7, "validation": 0.15, "holdout": 0.15},
            "seed": 42,
            "candidates": {"xgboost": {"params": {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.1}}},
            "search": {"trials": 0},
        },
        "monitoring": {"drift_share_threshold": 0.3, "min_rows": 200, "features": monitored},
    }
    if label_columns & set(request):
        notes.append("the label's columns are not request features")
    notes.append("no label-rate aggregation: add one with fn: share and the label's delay once known")
    return Draft(spec=spec, notes=notes)


def to_yaml(spec: dict[str, Any]) -> str:
    """YAML a reviewer reads like the hand-written specs: small mappings on one line."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def mapping(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
        leaf = all(not isinstance(v, dict) and not (isinstance(v, list) and len(v) > 12) for v in data.values())
        return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=leaf and len(data) <= 8)

    def sequence(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
        flat = all(not isinstance(v, dict | list) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flat)

    Dumper.add_representer(dict, mapping)
    Dumper.add_representer(list, sequence)
    return yaml.dump(spec, Dumper=Dumper, sort_keys=False, width=110, allow_unicode=True)
