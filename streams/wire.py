"""The Kafka wire format of graph mutations: encode and decode one Kafka record.

The normative description, written for producers in other languages, is ``docs/wire-format.md``.  In
short, a record's value is one of

* **Arrow**: an Arrow IPC *stream* (it starts with the continuation marker ``FF FF FF FF``) whose
  schema carries the metadata ``clustergnn.schema_version`` and exactly the columns ``kind: int8``,
  ``src: int64``, ``dst: int64`` and ``features`` -- a whole batch of mutations per record.  Version
  ``"2"`` (written by default): ``features: list<float32>``, ``F`` values on feature rows and none on
  the others, so a row without features costs one offset.  Version ``"1"`` (still read, and written
  on request for consumers not yet upgraded): ``features: fixed_size_list<float32>[F]``, null on rows
  without features, which still occupy ``F`` zeros each;
* **JSON**: one UTF-8 JSON object (``{"v": 1, "op": "add_edge", "src": 1, "dst": 2}``) -- one
  mutation per record, for hand-written producers and ``kcat``.

Every mutation routes to the owner of its *routing vertex*: the destination of an edge mutation, the
vertex itself otherwise.  A record must sit in the Kafka partition ``owner(routing vertex)``; a JSON
record's key is the routing vertex in ASCII decimal.

The Arrow table itself is the core's one encoding of a batch (:mod:`clustergnn.codec`, which also
says which ``F`` a record without feature rows gets); this module adds only the envelope: the
schema-version metadata, IPC stream framing, compression, JSON, and routing checks.  Routing is
:mod:`clustergnn.partition`'s (``routing_ids``, ``split_by_owner``).

Decoding never raises on bad input: :func:`decode_record` returns a :class:`DecodedRecord` or a
:class:`DecodeError` (the reason, quoting the bad value), which the consumer dead-letters.
Decoding Arrow is vectorised: Arrow buffers are viewed as numpy arrays, no per-row Python code.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from clustergnn import codec
from clustergnn.codec import FeatureLayout, MutationColumns
from clustergnn.mutations import KIND_NAMES, MutationBatch, MutationKind, edge_kinds_mask, feature_kinds_mask
from clustergnn.partition import PartitionMap, routing_ids

ARROW_LAYOUTS: dict[int, FeatureLayout] = {1: FeatureLayout.FIXED, 2: FeatureLayout.LIST}
"""Arrow schema versions this code reads, and the layout of ``features`` each one has."""

ARROW_SCHEMA_VERSION = 2
"""The Arrow schema version written by default (metadata ``clustergnn.schema_version``)."""

JSON_SCHEMA_VERSION = 1
"""The one JSON version (``"v"``): a JSON record carries one mutation, so it never had null feature
slots, and schema version 2 left it as it was."""

SCHEMA_VERSION_KEY = "clustergnn.schema_version"
"""Arrow schema metadata key holding the schema version as ASCII decimal."""

JSON_EDGE_FIELDS = frozenset({"v", "op", "src", "dst"})
JSON_VERTEX_FIELDS = frozenset({"v", "op", "id"})
JSON_FEATURE_FIELDS = frozenset({"v", "op", "id", "features"})

_ARROW_LAYOUT_BY_TEXT = {str(v).encode(): layout for v, layout in ARROW_LAYOUTS.items()}
_ARROW_MAGIC = b"\xff\xff\xff\xff"
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

Format = Literal["arrow", "json"]
Compression = Literal["none", "lz4", "zstd"]
ArrowSchemaVersion = Literal[1, 2]


class DecodeErrorCode(str, enum.Enum):
    """Why a record was rejected.  The value is the ``dlq.reason`` header of its dead letter."""

    NOT_ARROW_OR_JSON = "not_arrow_or_json"
    BAD_ARROW = "bad_arrow"
    BAD_JSON = "bad_json"
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    BAD_TYPE = "bad_type"
    BAD_VALUE = "bad_value"
    UNKNOWN_KIND = "unknown_kind"
    FEATURE_WIDTH = "feature_width"
    NON_FINITE = "non_finite"
    BAD_KEY = "bad_key"
    KEY_MISMATCH = "key_mismatch"
    PARTITION_MISMATCH = "partition_mismatch"
    DECODE_FAILED = "decode_failed"  # the decoder itself raised (a bug): the record is kept in the DLQ
    # rejected after decoding, by the partition owner (the payload is the record re-encoded as Arrow)
    INVALID_MUTATION = "invalid_mutation"  # e.g. an edge to a vertex that does not exist, a duplicate vertex
    UNKNOWN_VERTEX = "unknown_vertex"  # an edge from a remote vertex that never appeared in time
    TXN_ABORTED = "txn_aborted"  # a valid part of a transaction another part of which was rejected
    BAD_TXN_TAG = "bad_txn_tag"  # a clustergnn.txn header that does not parse or does not name this partition


H_TXN = "clustergnn.txn"
"""Kafka record header of a transaction's part: ``"<id>;<partition>,<partition>,..."``
(:class:`clustergnn.txn.TxnTag`)."""


@dataclass(frozen=True)
class DecodeError:
    """A rejected record: a machine-readable ``code`` and a message quoting the bad value."""

    code: DecodeErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


DecodedRecord = MutationColumns
"""The mutations of one valid record (:class:`clustergnn.codec.MutationColumns`); ``feature_dim`` is
``None`` when the record has no feature rows.  :func:`clustergnn.codec.columns_to_batch` joins records."""


# ----------------------------------------------------------------------------- encoding


def encode_arrow_columns(
    kind: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    features: np.ndarray,
    compression: Compression = "none",
    schema_version: ArrowSchemaVersion = ARROW_SCHEMA_VERSION,
) -> bytes:
    """Encode columns (``features``: rows of the feature-bearing mutations only) as one Arrow record:
    the core's table (:func:`clustergnn.codec.encode_columns`) in the layout of ``schema_version``,
    with that version in the schema metadata, as an IPC stream."""
    layout = ARROW_LAYOUTS.get(schema_version)
    if layout is None:
        raise ValueError(f"schema_version must be one of {sorted(ARROW_LAYOUTS)}, got {schema_version!r}")
    metadata = {SCHEMA_VERSION_KEY: str(schema_version)}
    rb = codec.encode_columns(kind, src, dst, features, metadata=metadata, layout=layout)
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    with pa.ipc.new_stream(sink, rb.schema, options=options) as writer:
        writer.write_batch(rb)
    return sink.getvalue().to_pybytes()


def encode_arrow(
    batch: MutationBatch,
    compression: Compression = "none",
    schema_version: ArrowSchemaVersion = ARROW_SCHEMA_VERSION,
) -> bytes:
    """Encode a whole batch as one Arrow record value (the caller routes it:
    :func:`clustergnn.partition.split_by_owner`)."""
    return encode_arrow_columns(batch.kind, batch.src, batch.dst, batch.features.numpy(), compression, schema_version)


def encode_json_columns(
    kind: np.ndarray, src: np.ndarray, dst: np.ndarray, features: np.ndarray
) -> list[tuple[bytes, bytes]]:
    """One ``(key, value)`` JSON record per mutation; the key is the routing vertex in ASCII decimal."""
    names = [k.name.lower() for k in MutationKind]
    is_edge = edge_kinds_mask(kind).tolist()
    has = feature_kinds_mask(kind).tolist()
    routes = routing_ids(kind, src, dst).tolist()
    feats = features.tolist() if len(features) else []
    out: list[tuple[bytes, bytes]] = []
    fi = 0
    rows = zip(kind.tolist(), src.tolist(), dst.tolist(), is_edge, has, routes)
    for k, s, d, e, h, r in rows:  # JSON is per-row by nature
        if e:
            obj: dict[str, Any] = {"v": JSON_SCHEMA_VERSION, "op": names[k], "src": s, "dst": d}
        else:
            obj = {"v": JSON_SCHEMA_VERSION, "op": names[k], "id": s}
            if h:
                obj["features"] = feats[fi]
                fi += 1
        out.append((str(r).encode(), json.dumps(obj, separators=(",", ":")).encode()))
    return out


def encode_json(batch: MutationBatch) -> list[tuple[bytes, bytes]]:
    return encode_json_columns(batch.kind, batch.src, batch.dst, batch.features.numpy())


# ----------------------------------------------------------------------------- decoding


def sniff_format(value: bytes | None) -> Format | None:
    """``"arrow"`` for an Arrow IPC stream, ``"json"`` for a JSON object, else ``None``."""
    if not value:
        return None
    if value[:4] == _ARROW_MAGIC:
        return "arrow"
    if value.lstrip(b" \t\r\n")[:1] == b"{":
        return "json"
    return None


def _preview(value: bytes | None, limit: int = 40) -> str:
    if value is None:
        return "None"
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def decode_arrow(value: bytes) -> DecodedRecord | DecodeError:
    """Decode an Arrow record value: the IPC stream and schema version here, the table's schema (the
    ``features`` layout of its version), kinds, feature placement, widths and finiteness by
    :func:`clustergnn.codec.decode`."""
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(value))
        schema = reader.schema
        table = reader.read_all()
    except (pa.ArrowException, OSError, ValueError) as exc:
        return DecodeError(
            DecodeErrorCode.BAD_ARROW, f"not a readable Arrow IPC stream ({exc}); starts {_preview(value)}"
        )
    meta = schema.metadata or {}
    version = meta.get(SCHEMA_VERSION_KEY.encode())
    if version is None:
        return DecodeError(
            DecodeErrorCode.UNKNOWN_SCHEMA_VERSION,
            f"schema metadata lacks {SCHEMA_VERSION_KEY!r}; has {sorted(k.decode(errors='replace') for k in meta)}",
        )
    layout = _ARROW_LAYOUT_BY_TEXT.get(version)
    if layout is None:
        return DecodeError(
            DecodeErrorCode.UNKNOWN_SCHEMA_VERSION,
            f"schema version {version.decode(errors='replace')!r} is not supported; "
            f"allowed: {[str(v) for v in ARROW_LAYOUTS]}",
        )
    decoded = codec.decode(table, layout)
    if isinstance(decoded, codec.CodecError):
        return DecodeError(DecodeErrorCode(decoded.code.value), decoded.message)
    return decoded


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _reject_constant(token: str) -> float:
    raise ValueError(f"{token} is not allowed")


def decode_json(value: bytes) -> DecodedRecord | DecodeError:
    """Decode a JSON record value: exactly one mutation object (see ``docs/wire-format.md``)."""
    try:
        obj = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        return DecodeError(DecodeErrorCode.BAD_JSON, f"invalid JSON ({exc}); starts {_preview(value)}")
    if not isinstance(obj, dict):
        return DecodeError(DecodeErrorCode.BAD_JSON, f"a record must be one JSON object, got {type(obj).__name__}")
    if "v" not in obj:
        return DecodeError(DecodeErrorCode.MISSING_FIELD, f"field 'v' (schema version) is missing; got {sorted(obj)}")
    if obj["v"] != JSON_SCHEMA_VERSION or not _is_int(obj["v"]):
        return DecodeError(
            DecodeErrorCode.UNKNOWN_SCHEMA_VERSION,
            f"schema version {obj['v']!r} is not supported; allowed: [{JSON_SCHEMA_VERSION}]",
        )
    if "op" not in obj:
        return DecodeError(DecodeErrorCode.MISSING_FIELD, f"field 'op' is missing; got {sorted(obj)}")
    op = obj["op"]
    kind = KIND_NAMES.get(op) if isinstance(op, str) else None
    if kind is None:
        return DecodeError(DecodeErrorCode.UNKNOWN_KIND, f"op {op!r} is unknown; allowed: {sorted(KIND_NAMES)}")
    fields = JSON_EDGE_FIELDS if kind.is_edge else JSON_FEATURE_FIELDS if kind.has_features else JSON_VERTEX_FIELDS
    keys = set(obj)
    if missing := sorted(fields - keys):
        return DecodeError(DecodeErrorCode.MISSING_FIELD, f"{op} lacks fields {missing}; needs {sorted(fields)}")
    if extra := sorted(keys - fields):
        return DecodeError(
            DecodeErrorCode.EXTRA_FIELD, f"{op} has unexpected fields {extra}; allowed: {sorted(fields)}"
        )
    ids = ("src", "dst") if kind.is_edge else ("id",)
    for name in ids:
        x = obj[name]
        if not _is_int(x):
            return DecodeError(DecodeErrorCode.BAD_TYPE, f"field {name!r} must be an integer vertex id, got {x!r}")
        if not _INT64_MIN <= x <= _INT64_MAX:
            return DecodeError(DecodeErrorCode.BAD_VALUE, f"field {name!r} = {x} does not fit in int64")
    if kind.is_edge:
        src, dst = obj["src"], obj["dst"]
    else:
        src, dst = obj["id"], -1
    feats = np.zeros((0, 0), dtype=np.float32)
    width: int | None = None
    if kind.has_features:
        raw = obj["features"]
        if not isinstance(raw, list) or not raw:
            return DecodeError(
                DecodeErrorCode.BAD_TYPE, f"field 'features' must be a non-empty list of numbers, got {raw!r}"
            )
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
            bad = next(x for x in raw if not isinstance(x, (int, float)) or isinstance(x, bool))
            return DecodeError(DecodeErrorCode.BAD_TYPE, f"field 'features' must hold numbers, got {bad!r}")
        try:
            with np.errstate(over="ignore"):
                feats = np.asarray(raw, dtype=np.float32).reshape(1, -1)
        except OverflowError:
            return DecodeError(DecodeErrorCode.NON_FINITE, "field 'features' holds an integer too large for float32")
        if not np.isfinite(feats).all():
            i = int(np.flatnonzero(~np.isfinite(feats[0]))[0])
            shown = raw[i] if not math.isfinite(float(raw[i])) else f"{raw[i]!r} (overflows float32)"
            return DecodeError(DecodeErrorCode.NON_FINITE, f"features[{i}] is non-finite: {shown}")
        width = feats.shape[1]
    return DecodedRecord(
        np.array([int(kind)], dtype=np.int8),
        np.array([src], dtype=np.int64),
        np.array([dst], dtype=np.int64),
        feats,
        width,
    )


def parse_key(key: bytes | None) -> int | DecodeError:
    """A JSON record's key: the routing vertex id in ASCII decimal (optional leading ``-``)."""
    if key is None:
        return DecodeError(DecodeErrorCode.BAD_KEY, "a JSON record needs a key (its routing vertex id), got none")
    try:
        text = key.decode("ascii")
    except UnicodeDecodeError:
        return DecodeError(DecodeErrorCode.BAD_KEY, f"key {_preview(key)} is not ASCII decimal")
    body = text[1:] if text.startswith("-") else text
    if not body.isdigit() or not body.isascii():
        return DecodeError(DecodeErrorCode.BAD_KEY, f"key {text!r} is not an ASCII decimal vertex id")
    v = int(text)
    if not _INT64_MIN <= v <= _INT64_MAX:
        return DecodeError(DecodeErrorCode.BAD_KEY, f"key {text!r} does not fit in int64")
    return v


def decode_record(
    value: bytes | None,
    key: bytes | None,
    partition: int,
    partition_map: PartitionMap,
    feature_dim: int | None = None,
) -> DecodedRecord | DecodeError:
    """Decode and validate one Kafka record read from ``partition``.

    Beyond the format checks of :func:`decode_arrow` / :func:`decode_json`: feature rows must be
    ``feature_dim`` wide (when given), every mutation must route to ``partition``, and a JSON
    record's key must name the mutation's routing vertex.  A rejected record changes nothing.
    """
    fmt = sniff_format(value)
    if fmt is None or value is None:
        return DecodeError(
            DecodeErrorCode.NOT_ARROW_OR_JSON,
            f"value is neither an Arrow IPC stream nor a JSON object; starts {_preview(value)}",
        )
    key_id: int | None = None
    if fmt == "json":
        parsed_key = parse_key(key)
        if isinstance(parsed_key, DecodeError):
            return parsed_key
        key_id = parsed_key
        decoded = decode_json(value)
    else:
        decoded = decode_arrow(value)
    if isinstance(decoded, DecodeError):
        return decoded
    if feature_dim is not None and decoded.feature_dim is not None and decoded.feature_dim != feature_dim:
        return DecodeError(
            DecodeErrorCode.FEATURE_WIDTH, f"features are {decoded.feature_dim} wide; expected {feature_dim}"
        )
    if len(decoded) == 0:
        return decoded
    route = routing_ids(decoded.kind, decoded.src, decoded.dst)
    if key_id is not None:
        if int(partition_map.owner(np.array([key_id], dtype=np.int64))[0]) != partition:
            return DecodeError(
                DecodeErrorCode.PARTITION_MISMATCH,
                f"key {key_id} is owned by partition {int(partition_map.owner(np.array([key_id]))[0])}, "
                f"but the record is in partition {partition}",
            )
        if int(route[0]) != key_id:
            return DecodeError(
                DecodeErrorCode.KEY_MISMATCH, f"key {key_id} is not the routing vertex {int(route[0])} of the mutation"
            )
    else:
        owners = partition_map.owner(route)
        wrong = owners != partition
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            return DecodeError(
                DecodeErrorCode.PARTITION_MISMATCH,
                f"{int(wrong.sum())} of {len(route)} mutations do not route to partition {partition}; "
                f"first: row {i}, routing vertex {int(route[i])} is owned by partition {int(owners[i])}",
            )
    return decoded
