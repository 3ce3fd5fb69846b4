"""The one Arrow encoding of a :class:`~clustergnn.mutations.MutationBatch`: schema, encoder, decoder.

============  ====================================  =======================================================
column        Arrow type                            meaning
============  ====================================  =======================================================
``kind``      ``int8``, not null                    a :class:`~clustergnn.mutations.MutationKind`
``src``       ``int64``, not null                   the vertex, or the edge's source
``dst``       ``int64``, not null                   the edge's destination; ``-1`` for vertex mutations
``features``  ``fixed_size_list<float32>[F]``       non-null exactly on ADD_VERTEX / UPDATE_FEATURES rows
============  ====================================  =======================================================

**Width without feature rows.**  A table with no feature-bearing row is written with ``F = 1``
(:data:`NO_FEATURE_WIDTH`), all null: a zero-width fixed-size list is legal Arrow but not every
implementation handles it, and the width of an all-null column means nothing.  Reading, an all-null
``features`` column carries no width (:attr:`MutationColumns.feature_dim` is ``None``); the batch built
from it gets the width its reader expects (``feature_dim``, default 0).

Everything that carries mutations as Arrow uses this module: ``MutationBatch.to_arrow``/``from_arrow``,
the Kafka wire format (``streams/wire.py`` adds only its envelope: schema-version metadata, IPC stream
framing, compression, and decode errors as dead-letter reasons) and the gateway's ``ApplyRequest``.

Decoding never raises on bad input: :func:`decode` returns :class:`MutationColumns` or a
:class:`CodecError` quoting the bad value.  It is vectorised: Arrow buffers are viewed as numpy arrays
(zero-copy where Arrow allows), no per-row Python code.

>>> from clustergnn.mutations import MutationBatch
>>> cols = decode(encode(MutationBatch.add_edges([1, 2], [3, 4])))
>>> cols.src.tolist(), cols.feature_dim
([1, 2], None)
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from clustergnn.errors import MutationError
from clustergnn.mutations import MutationBatch, MutationKind, edge_kinds_mask, feature_kinds_mask

ID_COLUMNS: dict[str, pa.DataType] = {"kind": pa.int8(), "src": pa.int64(), "dst": pa.int64()}
"""The integer columns and their exact types."""

FEATURES = "features"
COLUMNS: tuple[str, ...] = (*ID_COLUMNS, FEATURES)

_FEATURES_TYPE = "fixed_size_list<float32>[F]"

NO_FEATURE_WIDTH = 1
"""``F`` written for a table without feature rows (see the module docstring)."""


class CodecErrorCode(str, enum.Enum):
    """Why a table was rejected.  The values are a subset of the wire format's dead-letter reasons."""

    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    BAD_TYPE = "bad_type"
    BAD_VALUE = "bad_value"
    UNKNOWN_KIND = "unknown_kind"
    FEATURE_WIDTH = "feature_width"
    NON_FINITE = "non_finite"


@dataclass(frozen=True)
class CodecError:
    """A rejected table: a machine-readable ``code`` and a message quoting the bad value."""

    code: CodecErrorCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


@dataclass(frozen=True, eq=False)
class MutationColumns:
    """Decoded mutations as numpy columns (cheap to concatenate across tables or records).

    ``features`` is ``(n_with_features, F)`` float32, one row per ADD_VERTEX / UPDATE_FEATURES mutation
    in order; ``feature_dim`` is ``F``, or ``None`` when there is no such mutation.  The arrays may be
    read-only views of Arrow buffers.
    """

    kind: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    features: np.ndarray
    feature_dim: int | None

    def __len__(self) -> int:
        return len(self.kind)

    def to_batch(self, feature_dim: int | None = None) -> MutationBatch:
        return columns_to_batch([self], feature_dim)


def _empty_columns() -> MutationColumns:
    e = np.zeros(0, dtype=np.int64)
    return MutationColumns(np.zeros(0, dtype=np.int8), e, e.copy(), np.zeros((0, 0), np.float32), None)


def columns_to_batch(parts: Sequence[MutationColumns], feature_dim: int | None = None) -> MutationBatch:
    """One :class:`MutationBatch` holding ``parts`` in order (all valid).

    ``feature_dim`` is the width of the batch's features when no part has feature rows.  Parts must
    agree on their width (the consumer pins one per stream): ``ValueError`` quoting the widths if not.
    """
    widths = {p.feature_dim for p in parts if p.feature_dim is not None}
    if len(widths) > 1:
        raise ValueError(f"parts disagree on feature width: {sorted(widths)}")
    width = widths.pop() if widths else (feature_dim or 0)
    if not parts:
        return MutationBatch.empty(width)
    if len(parts) == 1:
        p = parts[0]
        # zero-copy views of Arrow buffers are read-only; the batch's users (torch) want their own memory
        kind, src, dst = (a if a.flags.writeable else a.copy() for a in (p.kind, p.src, p.dst))
        feats = [p.features] if p.feature_dim is not None else []
    else:
        kind = np.concatenate([p.kind for p in parts])
        src = np.concatenate([p.src for p in parts])
        dst = np.concatenate([p.dst for p in parts])
        feats = [p.features for p in parts if p.feature_dim is not None and len(p.features)]
    if feats:
        f = feats[0] if len(feats) == 1 else np.concatenate(feats)
        if not f.flags.writeable:
            f = f.copy()
        features = torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32))
    else:
        features = torch.zeros(0, width)
    # MutationBatch re-checks kinds and feature-row counts: cheap, vectorised, and a last line of defence
    return MutationBatch(kind, src, dst, features)


# ----------------------------------------------------------------------------- encoding


def schema(width: int, metadata: Mapping[str, str] | None = None) -> pa.Schema:
    """The schema of a table whose features are ``width`` wide, with optional schema ``metadata``."""
    return pa.schema(
        [
            pa.field("kind", pa.int8(), nullable=False),
            pa.field("src", pa.int64(), nullable=False),
            pa.field("dst", pa.int64(), nullable=False),
            pa.field(FEATURES, pa.list_(pa.float32(), width), nullable=True),
        ],
        metadata=dict(metadata) if metadata else None,
    )


def encode_columns(
    kind: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    features: np.ndarray,
    metadata: Mapping[str, str] | None = None,
) -> pa.RecordBatch:
    """Columns as one record batch; ``features`` holds the rows of the feature-bearing mutations only.

    ``MutationError`` (a ``ValueError``) if feature rows are less than 1 wide.
    """
    n = len(kind)
    has = feature_kinds_mask(kind)
    n_feat = int(has.sum())
    if n_feat:
        width = int(features.shape[1])
        if width < 1:
            raise MutationError(f"feature-bearing mutations need a feature width >= 1, got {width}")
        if n_feat == n:
            dense = np.ascontiguousarray(features, dtype=np.float32)
        else:
            dense = np.zeros((n, width), dtype=np.float32)
            dense[has] = features
        values = pa.array(dense.reshape(-1), type=pa.float32())
        feats = pa.FixedSizeListArray.from_arrays(values, width, mask=pa.array(~has) if n_feat < n else None)
    else:
        width = NO_FEATURE_WIDTH
        feats = pa.nulls(n, type=pa.list_(pa.float32(), width))
    ids = [pa.array(col, type=typ) for col, typ in zip((kind, src, dst), ID_COLUMNS.values())]
    return pa.RecordBatch.from_arrays([*ids, feats], schema=schema(width, metadata))


def encode(batch: MutationBatch, metadata: Mapping[str, str] | None = None) -> pa.RecordBatch:
    """``batch`` as one record batch (see the module docstring for the schema)."""
    return encode_columns(batch.kind, batch.src, batch.dst, batch.features.numpy(), metadata)


# ----------------------------------------------------------------------------- decoding


def check_schema(sch: pa.Schema) -> CodecError | None:
    """``None`` if ``sch`` has exactly the four columns (any order) with exactly their types."""
    names = sch.names
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        return CodecError(CodecErrorCode.MISSING_FIELD, f"columns {missing} are missing; got {names}")
    extra = [c for c in names if c not in COLUMNS]
    if extra or len(names) != len(COLUMNS):
        return CodecError(CodecErrorCode.EXTRA_FIELD, f"unexpected columns {extra or names}; allowed: {list(COLUMNS)}")
    for name, typ in ID_COLUMNS.items():
        got = sch.field(name).type
        if got != typ:
            return CodecError(CodecErrorCode.BAD_TYPE, f"column {name!r} must be {typ}, got {got}")
    ftype = sch.field(FEATURES).type
    if not pa.types.is_fixed_size_list(ftype) or ftype.value_type != pa.float32():
        return CodecError(CodecErrorCode.BAD_TYPE, f"column 'features' must be {_FEATURES_TYPE}, got {ftype}")
    return None


def conform(table: pa.Table | pa.RecordBatch) -> pa.Table | CodecError:
    """``table`` in the exact schema, for lenient readers (the gateway, ``MutationBatch.from_arrow``):
    the four columns in order, other columns dropped, other integer id types and other float feature
    types cast (values that do not fit are rejected).  The Kafka wire format converts nothing."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        has = table.column_names
        return CodecError(CodecErrorCode.MISSING_FIELD, f"arrow table lacks columns {missing}; has {has}")
    table = table.select(list(COLUMNS))
    for name, typ in ID_COLUMNS.items():
        got = table.schema.field(name).type
        if not pa.types.is_integer(got):
            return CodecError(CodecErrorCode.BAD_TYPE, f"column {name!r} must hold integers ({typ}), got {got}")
    ftype = table.schema.field(FEATURES).type
    if not pa.types.is_fixed_size_list(ftype) or not pa.types.is_floating(ftype.value_type):
        return CodecError(CodecErrorCode.BAD_TYPE, f"column 'features' must be {_FEATURES_TYPE}, got {ftype}")
    target = pa.schema([pa.field(f.name, f.type) for f in schema(ftype.list_size)])  # nulls: decode names them
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return CodecError(CodecErrorCode.BAD_VALUE, f"columns do not fit their types {target.types}: {exc}")


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def decode(table: pa.Table | pa.RecordBatch) -> MutationColumns | CodecError:
    """The mutations of ``table`` (exact schema, see :func:`check_schema`), or why it is invalid:
    kinds, ``dst == -1`` on vertex rows, features present exactly on feature rows, at least 1 wide,
    without nulls and finite there."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    bad_schema = check_schema(table.schema)
    if bad_schema is not None:
        return bad_schema
    cols = {name: _column(table, name) for name in COLUMNS}
    for name in ID_COLUMNS:
        if cols[name].null_count:
            return CodecError(CodecErrorCode.BAD_VALUE, f"column {name!r} holds {cols[name].null_count} nulls")
    n = table.num_rows
    if n == 0:
        return _empty_columns()
    kind = cols["kind"].to_numpy(zero_copy_only=True)
    src = cols["src"].to_numpy(zero_copy_only=True)
    dst = cols["dst"].to_numpy(zero_copy_only=True)
    bad_kind = (kind < 0) | (kind >= len(MutationKind))
    if bad_kind.any():
        i = int(np.flatnonzero(bad_kind)[0])
        allowed = [int(k) for k in MutationKind]
        return CodecError(CodecErrorCode.UNKNOWN_KIND, f"row {i} has kind {int(kind[i])}; allowed: {allowed}")
    is_edge = edge_kinds_mask(kind)
    if not is_edge.all():
        bad_dst = ~is_edge & (dst != -1)
        if bad_dst.any():
            i = int(np.flatnonzero(bad_dst)[0])
            name = MutationKind(int(kind[i])).name
            return CodecError(CodecErrorCode.BAD_VALUE, f"row {i} ({name}) has dst {int(dst[i])}; must be -1")
    has = feature_kinds_mask(kind)
    fcol = cols[FEATURES]
    n_feat = int(has.sum())
    if fcol.null_count == n and n_feat == 0:  # the common edge-only table: nothing more to look at
        return MutationColumns(kind, src, dst, np.zeros((0, 0), np.float32), None)
    valid = fcol.is_valid().to_numpy(zero_copy_only=False)
    if not np.array_equal(valid, has):
        i = int(np.flatnonzero(valid != has)[0])
        what = "lacks" if has[i] else "must not carry"
        code = CodecErrorCode.MISSING_FIELD if has[i] else CodecErrorCode.EXTRA_FIELD
        return CodecError(
            code,
            f"row {i} ({MutationKind(int(kind[i])).name}) {what} features; "
            "they go exactly on ADD_VERTEX/UPDATE_FEATURES rows",
        )
    width = fcol.type.list_size
    if width < 1:
        return CodecError(CodecErrorCode.FEATURE_WIDTH, f"feature rows must be at least 1 wide, got {fcol.type}")
    child = fcol.values.slice(fcol.offset * width, n * width)
    if child.null_count:  # slots under null rows may be null (pa.nulls does that); values in feature rows may not
        child_valid = child.is_valid().to_numpy(zero_copy_only=False).reshape(n, width)
        bad_rows = has & ~child_valid.all(axis=1)
        if bad_rows.any():
            i = int(np.flatnonzero(bad_rows)[0])
            name = MutationKind(int(kind[i])).name
            return CodecError(CodecErrorCode.BAD_VALUE, f"row {i} ({name}) has null feature values")
    dense = child.to_numpy(zero_copy_only=False).reshape(n, width)  # zero-copy unless the child has nulls
    feats = dense if n_feat == n else dense[has]
    finite = np.isfinite(feats)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        value = float(feats[row][~finite[row]][0])
        return CodecError(CodecErrorCode.NON_FINITE, f"feature row {row} holds a non-finite value {value!r}")
    return MutationColumns(kind, src, dst, feats, width)
