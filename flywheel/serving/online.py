"""Entity features from Feast's online store for one use case, read in one round trip.

Any entity keys: a view's entity is one join column or several (a composite key: several
Feast entities on one view), each an int64 or a string. On Redis every view and row is one
pipelined ``HMGET`` (one network round trip); other online stores get one ``online_read``
per view.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from flywheel.core.spec import PipelineSpec

Columns = dict[str, Any]  # feature -> float64 array (NaN = missing) or list (None = missing)


@dataclass(frozen=True)
class View:
    """One feature view of the use case's feature service, as the reader needs it."""

    name: str
    entity: str  # the spec's entity name ("user"): the miss flags and metric labels use it
    join_keys: tuple[str, ...]  # in the view's own order
    kinds: tuple[str, ...]  # "int64" | "string" per join key
    features: tuple[str, ...]


def _kind(value_type: Any) -> str:
    name = getattr(value_type, "name", str(value_type))
    if name in ("INT64", "INT32"):
        return "int64"
    if name == "STRING":
        return "string"
    raise ValueError(f"entity value type {name} is not served (int64 or string join keys)")


def _value(kind: str, value: Any) -> Any:
    from feast.protos.feast.types.Value_pb2 import Value

    return Value(int64_val=int(value)) if kind == "int64" else Value(string_val=str(value))


def entity_key(join_keys: Sequence[str], kinds: Sequence[str], values: Sequence[Any]) -> Any:
    """Feast's ``EntityKey`` proto of one row's join-key values."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey

    return EntityKey(join_keys=list(join_keys),
                     entity_values=[_value(k, v) for k, v in zip(kinds, values, strict=True)])


class OnlineFeatures:
    """A use case's entity features, the feature service resolved once at start-up.

    A read goes straight to the online store Feast configured (its key encoding, its field
    hashing, its value protos), skipping the per-call registry lookups and response building
    of ``FeatureStore.get_online_features``.
    """

    def __init__(self, store: Any, spec: PipelineSpec, *, timeout_s: float = 1.0) -> None:
        service = store.get_feature_service(spec.feature_service)
        entities = {e.name: e for e in store.list_entities()}
        by_keys = {frozenset(e.keys): name for name, e in spec.features.entities.items()}
        self.store, self.config = store, store.config
        self.online = store._get_provider().online_store
        self.views: list[tuple[View, Any]] = []
        for projection in service.feature_view_projections:
            fv = store.get_feature_view(projection.name)
            keys = tuple(entities[e].join_key for e in fv.entities)
            kinds = tuple(_kind(entities[e].value_type) for e in fv.entities)
            view = View(fv.name, by_keys.get(frozenset(keys), fv.name), keys, kinds,
                        tuple(f.name for f in projection.features))
            self.views.append((view, fv))
        self.columns = [f for v, _ in self.views for f in v.features]
        self.join_keys = list(dict.fromkeys(k for v, _ in self.views for k in v.join_keys))
        self.redis = type(self.online).__name__ == "RedisOnlineStore"
        self._reader = RedisHashReader(self.online, self.config, self.views, timeout_s=timeout_s) \
            if self.redis else None

    def fetch(self, rows: Sequence[Mapping[str, Any]]) -> tuple[Columns, dict[str, np.ndarray]]:
        """:meth:`fetch_keys` of rows (``[{"<join key>": value, ...}, ...]``)."""
        return self.fetch_keys({key: [r[key] for r in rows] for key in self.join_keys})

    def fetch_keys(self, keys: Mapping[str, Sequence[Any]]) -> tuple[Columns, dict[str, np.ndarray]]:
        """Feature columns and, per entity, which rows missed (no feature of its view found).

        ``keys`` holds one column per join key. A feature column is a float64 array (NaN where
        missing) or a list (``None`` where missing). Raises whatever the store raises when down.
        """
        if self._reader is not None:
            return self._reader.read(keys)
        columns: Columns = {}
        misses: dict[str, np.ndarray] = {}
        for view, fv in self.views:
            values = [keys[k] for k in view.join_keys]
            n = len(values[0])
            ek = [entity_key(view.join_keys, view.kinds, row) for row in zip(*values, strict=True)]
            reply = self.online.online_read(self.config, fv, ek, list(view.features))
            for feature in view.features:
                columns[feature] = [_python(got.get(feature)) if got else None for _, got in reply]
            # Missed = no feature of the view (SQLite answers no row at all).
            missing = [np.fromiter((v is None for v in columns[f]), dtype=bool, count=n) for f in view.features]
            misses[view.entity] = np.logical_and.reduce(missing) if missing else np.ones(n, bool)
        return columns, misses

    def frame(self, rows: Sequence[Mapping[str, Any]]) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        columns, misses = self.fetch(rows)
        return pd.DataFrame(columns, columns=self.columns), misses


_INT64_TAG = struct.pack("<II", 4, 8)  # ValueType.INT64, 8 bytes


class KeyEncoder:
    """Feast's serialized entity keys (version 3) of a view's join keys, built column-wise.

    The layout is a header (key count and sorted key names) then, per sorted key, type, length
    and value bytes. It is checked against Feast's own ``serialize_entity_key`` at start-up on
    probe values; any other layout falls back to it per row.
    """

    def __init__(self, join_keys: Sequence[str], kinds: Sequence[str], version: int) -> None:
        from feast.infra.key_encoding_utils import serialize_entity_key

        pairs = sorted(zip(join_keys, kinds, strict=True)) if len(join_keys) > 1 else list(zip(join_keys, kinds,
                                                                                                strict=True))
        self.keys = tuple(k for k, _ in pairs)
        self.kinds = tuple(k for _, k in pairs)
        self.version = version
        self.header = struct.pack("<I", len(pairs)) + b"".join(
            struct.pack("<II", 2, len(k.encode())) + k.encode() for k in self.keys)  # ValueType.STRING
        self.fixed = all(k == "int64" for k in self.kinds)  # every key the same length
        self.size = len(self.header) + 16 * len(self.keys) if self.fixed else 0
        self._feast = serialize_entity_key
        self.native = self._check()

    def _probe(self, i: int) -> list[Any]:
        ints = (0, 1, 12, 2**40 + 7, 2**63 - 1, -5)
        texts = ("", "a", "JFK", "Zürich", "x" * 300, "N12")
        return [ints[i] if k == "int64" else texts[i] for k in self.kinds]

    def _check(self) -> bool:
        for i in range(6):
            values = self._probe(i)
            theirs = self._feast(entity_key(self.keys, self.kinds, values),
                                 entity_key_serialization_version=self.version)
            if self._native({k: [v] for k, v in zip(self.keys, values, strict=True)})[0] != theirs:
                return False
        return True

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> list[bytes]:
        """One serialized key per row of ``columns`` (one column per join key)."""
        if self.native:
            return self._native(columns)
        rows = zip(*(columns[k] for k in self.keys), strict=True)
        return [self._feast(entity_key(self.keys, self.kinds, row), entity_key_serialization_version=self.version)
                for row in rows]

    def _native(self, columns: Mapping[str, Sequence[Any]]) -> list[bytes]:
        if self.fixed:
            raw = self.fixed_block(columns)
            return [raw[i:i + self.size] for i in range(0, len(raw), self.size)]
        parts = []
        for kind, key in zip(self.kinds, self.keys, strict=True):
            if kind == "int64":
                parts.append([_INT64_TAG + struct.pack("<q", int(v)) for v in columns[key]])
            else:
                parts.append([struct.pack("<II", 2, len(b)) + b for b in (str(v).encode() for v in columns[key])])
        return [self.header + b"".join(p) for p in zip(*parts, strict=True)]

    def fixed_block(self, columns: Mapping[str, Sequence[Any]], *, before: bytes = b"",
                    after: bytes = b"") -> bytes:
        """All rows' keys (int64 keys only) as one block, each framed by ``before``/``after``:
        built in numpy, no Python per row."""
        values = [np.asarray(columns[k], dtype="<i8") for k in self.keys]
        n = len(values[0]) if values else 0
        width = len(before) + self.size + len(after)
        block = np.empty((n, width), dtype=np.uint8)
        head = before + self.header
        block[:, :len(head)] = np.frombuffer(head, dtype=np.uint8)
        at = len(head)
        for v in values:
            block[:, at:at + 8] = np.frombuffer(_INT64_TAG, dtype=np.uint8)
            block[:, at + 8:at + 16] = v.view(np.uint8).reshape(n, 8)
            at += 16
        if after:
            block[:, at:] = np.frombuffer(after, dtype=np.uint8)
        return block.tobytes()


class OnlineStoreUnavailable(RuntimeError):
    """The online store did not answer within the serving timeout (down, or hung): the request
    gets a 503 naming it, never a hang and never a silent default."""


class RedisHashReader:
    """Feast's Redis layout, read with one hand-packed pipeline and decoded column-wise.

    Feast stores an entity as a hash at ``serialize_entity_key(key) + project`` with one field
    per feature (murmur3 of ``view:feature``) holding a ``ValueProto``. The ``HMGET`` commands of
    every view and row are packed as RESP bytes (int64 keys: in one numpy block) and sent on one
    connection (one round trip); replies are parsed by redis-py (hiredis when installed).
    Values are decoded per column: doubles in one numpy call, others by protobuf.
    """

    def __init__(self, online: Any, config: Any, views: list[tuple[View, Any]], *, timeout_s: float = 1.0) -> None:
        self.client = online._get_client(config.online_store)
        # Feast's client waits forever on a hung Redis, and redis-py 6 retries a connect 3 times with
        # backoff (about 10 s): every connection gets the serving timeout and no retry of its own
        # (_roundtrip retries once).
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.client.connection_pool.connection_kwargs.update(
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))
        self.project = config.project.encode()
        self.views = [view for view, _ in views]
        self._commands: list[HmgetCommand] = []
        for view, fv in views:
            _, fields = online._generate_hset_keys_for_features(fv, list(view.features))
            blob = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in (_bytes(f) for f in fields))
            encoder = KeyEncoder(view.join_keys, view.kinds, config.entity_key_serialization_version)
            self._commands.append(HmgetCommand(2 + len(fields), b"\r\n" + blob, encoder))

    def packed(self, keys: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Sequence[Any]]]) -> bytes:
        """The RESP bytes of every view's ``HMGET`` s: ``keys`` for all views, or one mapping per view."""
        parts = []
        per_view = [keys] * len(self._commands) if isinstance(keys, Mapping) else list(keys)
        for command, keys in zip(self._commands, per_view, strict=True):
            encoder = command.encoder
            if encoder.native and encoder.fixed:  # header + key + project + fields, every row in numpy
                head = command.header(encoder.size + len(self.project))
                parts.append(encoder.fixed_block(keys, before=head, after=self.project + command.fields))
                continue
            for key in encoder.encode(keys):
                parts.append(command.header(len(key) + len(self.project)) + key + self.project + command.fields)
        return b"".join(parts)

    def _roundtrip(self, packed: bytes, n: int) -> list[Any]:
        """Send all commands, read ``n`` replies; one reconnect+retry when a pooled connection is stale."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        pool = self.client.connection_pool
        for attempt in (1, 2):
            conn = None
            try:
                conn = pool.get_connection()  # connects (and says hello) when the pool has none idle
                conn.send_packed_command([packed])
                return [conn.read_response() for _ in range(n)]
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if conn is not None:
                    conn.disconnect()
                if attempt == 2:
                    raise OnlineStoreUnavailable(f"the online store (Redis) is unavailable: {exc}") from exc
            except BaseException:
                if conn is not None:
                    conn.disconnect()  # the connection's reply stream is out of step: never reuse it
                raise
            finally:
                if conn is not None:
                    pool.release(conn)
        raise AssertionError("unreachable")

    def read(self, keys: Mapping[str, Sequence[Any]]) -> tuple[Columns, dict[str, np.ndarray]]:
        n_rows = len(next(iter(keys.values()))) if keys else 0
        # Each distinct entity of a view is read once (a batch repeats merchants, users...).
        plans = [distinct({k: keys[k] for k in view.join_keys}, n_rows) for view in self.views]
        replies = self._roundtrip(self.packed([unique for unique, _, _ in plans]),
                                  sum(count for _, _, count in plans))
        columns: Columns = {}
        misses: dict[str, np.ndarray] = {}
        start = 0
        for view, (_, inverse, count) in zip(self.views, plans, strict=True):
            rows = replies[start:start + count]
            start += count
            if inverse is not None:
                rows = [rows[i] for i in inverse]
            # Missed = no feature of the view in the hash (the last field is Feast's timestamp).
            misses[view.entity] = np.fromiter((not any(r[:-1]) for r in rows), dtype=bool, count=n_rows)
            # Rows of HMGET replies to columns in C (zip), then decoded a column at a time.
            for feature, raw in zip(view.features, zip(*rows, strict=True), strict=False):
                columns[feature] = decode_values(raw)
        return columns, misses


def distinct(keys: Mapping[str, Sequence[Any]], n: int) -> tuple[Mapping[str, Sequence[Any]], list[int] | None, int]:
    """The distinct rows of key columns: (their columns, each row's index among them or None when
    every row is distinct, how many). First occurrences keep their order."""
    if n < 2:
        return keys, None, n
    names = list(keys)
    index: dict[Any, int] = {}
    inverse = [index.setdefault(row, len(index)) for row in zip(*(keys[k] for k in names), strict=True)]
    if len(index) == n:
        return keys, None, n
    rows = list(index)
    return {k: [row[j] for row in rows] for j, k in enumerate(names)}, inverse, len(rows)


@dataclass(frozen=True)
class HmgetCommand:
    """One view's ``HMGET key field…`` in RESP: the field part is fixed, the key varies."""

    args: int  # HMGET, the key and the fields
    fields: bytes  # "\r\n" ending the key, then every field as a RESP bulk string
    encoder: KeyEncoder

    def header(self, key_len: int) -> bytes:
        return b"*%d\r\n$5\r\nHMGET\r\n$%d\r\n" % (self.args, key_len)


def _bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


_DOUBLE_TAG = 0x29  # ValueProto field 5 (double_val), wire type 1 (64-bit): 1 tag byte + 8 bytes
_unpack_double = struct.Struct("<d").unpack_from


def decode_values(raw: Sequence[bytes | None]) -> Any:
    """One column of Redis replies (serialized ``ValueProto`` or nothing) as Python values: a
    float64 array (NaN where missing) when there are many and all present ones are doubles, else
    a list with ``None`` where missing."""
    if len(raw) > 8:
        values = [b for b in raw if b]
        if values and all(len(b) == 9 and b[0] == _DOUBLE_TAG for b in values):
            doubles = np.frombuffer(b"".join(values), dtype=np.uint8).reshape(-1, 9)[:, 1:].copy().view("<f8")
            if len(values) == len(raw):
                return doubles.ravel()
            out = np.full(len(raw), np.nan)
            out[[bool(b) for b in raw]] = doubles.ravel()
            return out
    return [_decode_value(b) for b in raw]


def _decode_value(raw: bytes | None) -> Any:
    """One serialized ``ValueProto``: doubles by hand, others by protobuf, remembered by their
    bytes (counts and country codes repeat endlessly; the memo is bounded)."""
    if not raw:
        return None
    if raw[0] == _DOUBLE_TAG and len(raw) == 9:
        return _unpack_double(raw, 1)[0]
    value = _DECODED.get(raw, _UNSEEN)
    if value is _UNSEEN:
        from feast.protos.feast.types.Value_pb2 import Value

        if len(_DECODED) >= _DECODED_MAX:
            _DECODED.clear()
        value = _DECODED[raw] = _python(Value.FromString(raw))
    return value


_DECODED: dict[bytes, Any] = {}  # serialized ValueProto -> its (immutable) Python value
_DECODED_MAX = 65_536
_UNSEEN = object()


def _python(value: Any) -> Any:
    if value is None:
        return None
    kind = value.WhichOneof("val")
    return None if kind in (None, "null_val") else getattr(value, kind)
