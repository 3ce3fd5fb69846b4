"""The Arrow encoding of a :class:`~clustergnn.mutations.MutationBatch` (one schema, two layouts of its
``features`` column): schema, encoder, decoder.

============  ====================================  =======================================================
column        Arrow type                            meaning
============  ====================================  =======================================================
``kind``      ``int8``, not null                    a :class:`~clustergnn.mutations.MutationKind`
``src``       ``int64``, not null                   the vertex, or the edge's source
``dst``       ``int64``, not null                   the edge's destination; ``-1`` for vertex mutations
``features``  one of the two layouts below           values exactly on ADD_VERTEX / UPDATE_FEATURES rows
============  ====================================  =======================================================

**Two layouts of ``features``** (:class:`FeatureLayout`):

* ``FIXED``: ``fixed_size_list<float32>[F]``, non-null exactly on feature rows.  Every row, null or not,
  occupies ``F`` slots of the child array, so an edge row next to 64-wide feature rows still costs
  256 bytes of zeros.  The Kafka wire format's schema version 1, ``MutationBatch.to_arrow`` and the
  gateway's ``ApplyRequest.arrow_ipc`` (the default here, so those contracts are unchanged).
* ``LIST``: ``list<float32>``; a feature row holds exactly ``F`` values, every other row holds none
  (null, or an empty list: its two offsets are equal), so a row without features costs one 4-byte
  offset.  The child array holds the feature rows' values back to back, in row order, and nothing
  else.  The Kafka wire format's schema version 2 (what producers write).

Why a variable-size list rather than vertex and edge rows in separate records or per-kind columns:
one table stays one ordered batch (row order is apply order, and a transaction's part is one record),
``list<float32>`` is in every Arrow implementation, and decoding stays a contiguous zero-copy view
because rows without features may hold no values.

**Width without feature rows.**  ``FIXED``: a table with no feature-bearing row is written with
``F = 1`` (:data:`NO_FEATURE_WIDTH`), all null: a zero-width fixed-size list is legal Arrow but not
every implementation handles it, and the width of an all-null column means nothing.  ``LIST`` has no
width in its type.  Reading either, a table without feature rows carries no width
(:attr:`MutationColumns.feature_dim` is ``None``); the batch built from it gets the width its reader
expects (``feature_dim``, default 0).

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

NO_FEATURE_WIDTH = 1
"""``F`` written for a ``FIXED`` table without feature rows (see the module docstring)."""


class FeatureLayout(str, enum.Enum):
    """How the ``features`` column holds the feature rows (see the module docstring)."""

    FIXED = "fixed"  # fixed_size_list<float32>[F]: every row occupies F values (wire schema version 1)
    LIST = "list"  # list<float32>: only feature rows hold values (wire schema version 2)

    @property
    def type_name(self) -> str:
        return "fixed_size_list<float32>[F]" if self is FeatureLayout.FIXED else "list<float32>"


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


def features_type(width: int, layout: FeatureLayout = FeatureLayout.FIXED) -> pa.DataType:
    """The Arrow type of ``features`` in ``layout`` (``width`` matters only for ``FIXED``)."""
    return pa.list_(pa.float32(), width) if layout is FeatureLayout.FIXED else pa.list_(pa.float32())


def schema(
    width: int, metadata: Mapping[str, str] | None = None, layout: FeatureLayout = FeatureLayout.FIXED
) -> pa.Schema:
    """The schema of a table whose features are ``width`` wide, with optional schema ``metadata``."""
    return pa.schema(
        [
            pa.field("kind", pa.int8(), nullable=False),
            pa.field("src", pa.int64(), nullable=False),
            pa.field("dst", pa.int64(), nullable=False),
            pa.field(FEATURES, features_type(width, layout), nullable=True),
        ],
        metadata=dict(metadata) if metadata else None,
    )


def encode_columns(
    kind: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    features: np.ndarray,
    metadata: Mapping[str, str] | None = None,
    layout: FeatureLayout = FeatureLayout.FIXED,
) -> pa.RecordBatch:
    """Columns as one record batch; ``features`` holds the rows of the feature-bearing mutations only.

    ``LIST`` writes null on the rows without features (they occupy no values).  ``MutationError``
    (a ``ValueError``) if feature rows are less than 1 wide.
    """
    n = len(kind)
    has = feature_kinds_mask(kind)
    n_feat = int(has.sum())
    width = int(features.shape[1]) if n_feat else NO_FEATURE_WIDTH
    if n_feat and width < 1:
        raise MutationError(f"feature-bearing mutations need a feature width >= 1, got {width}")
    if layout is FeatureLayout.LIST:
        # offsets[i] = width * (feature rows before row i): feature rows take `width` values, others none
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(has, out=offsets[1:])
        offsets *= width
        values = np.ascontiguousarray(features, dtype=np.float32).reshape(-1) if n_feat else np.zeros(0, np.float32)
        feats = pa.ListArray.from_arrays(
            pa.array(offsets, type=pa.int32()),
            pa.array(values, type=pa.float32()),
            mask=pa.array(~has) if n_feat < n else None,
        )
    elif n_feat:
        if n_feat == n:
            dense = np.ascontiguousarray(features, dtype=np.float32)
        else:
            dense = np.zeros((n, width), dtype=np.float32)
            dense[has] = features
        values = pa.array(dense.reshape(-1), type=pa.float32())
        feats = pa.FixedSizeListArray.from_arrays(values, width, mask=pa.array(~has) if n_feat < n else None)
    else:
        feats = pa.nulls(n, type=features_type(width))
    ids = [pa.array(col, type=typ) for col, typ in zip((kind, src, dst), ID_COLUMNS.values())]
    return pa.RecordBatch.from_arrays([*ids, feats], schema=schema(width, metadata, layout))


def encode(
    batch: MutationBatch, metadata: Mapping[str, str] | None = None, layout: FeatureLayout = FeatureLayout.FIXED
) -> pa.RecordBatch:
    """``batch`` as one record batch (see the module docstring for the schema)."""
    return encode_columns(batch.kind, batch.src, batch.dst, batch.features.numpy(), metadata, layout)


# ----------------------------------------------------------------------------- decoding


def layout_of(ftype: pa.DataType) -> FeatureLayout | None:
    """The layout whose type ``ftype`` is (any child field name), or ``None``."""
    if pa.types.is_fixed_size_list(ftype) and ftype.value_type == pa.float32():
        return FeatureLayout.FIXED
    if pa.types.is_list(ftype) and ftype.value_type == pa.float32():
        return FeatureLayout.LIST
    return None


def check_schema(sch: pa.Schema, layout: FeatureLayout = FeatureLayout.FIXED) -> CodecError | None:
    """``None`` if ``sch`` has exactly the four columns (any order) with exactly their types, the
    ``features`` column in ``layout``."""
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
    if layout_of(ftype) is not layout:
        return CodecError(CodecErrorCode.BAD_TYPE, f"column 'features' must be {layout.type_name}, got {ftype}")
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
        return CodecError(
            CodecErrorCode.BAD_TYPE, f"column 'features' must be {FeatureLayout.FIXED.type_name}, got {ftype}"
        )
    target = pa.schema([pa.field(f.name, f.type) for f in schema(ftype.list_size)])  # nulls: decode names them
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        return CodecError(CodecErrorCode.BAD_VALUE, f"columns do not fit their types {target.types}: {exc}")


def _column(table: pa.Table, name: str) -> pa.Array:
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def decode(
    table: pa.Table | pa.RecordBatch, layout: FeatureLayout = FeatureLayout.FIXED
) -> MutationColumns | CodecError:
    """The mutations of ``table`` (exact schema in ``layout``, see :func:`check_schema`), or why it is
    invalid: kinds, ``dst == -1`` on vertex rows, features present exactly on feature rows, at least 1
    wide, all the same width, without nulls and finite there."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    bad_schema = check_schema(table.schema, layout)
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
    read = _fixed_features if layout is FeatureLayout.FIXED else _list_features
    got = read(cols[FEATURES], kind, has)
    if isinstance(got, CodecError):
        return got
    feats, width = got
    if width is not None:
        finite = np.isfinite(feats)
        if not finite.all():
            row = int(np.flatnonzero(~finite.all(axis=1))[0])
            value = float(feats[row][~finite[row]][0])
            return CodecError(CodecErrorCode.NON_FINITE, f"feature row {row} holds a non-finite value {value!r}")
    return MutationColumns(kind, src, dst, feats, width)


_NO_FEATURES = (np.zeros((0, 0), np.float32), None)


def _placement_error(kind: np.ndarray, i: int, has_features: bool) -> CodecError:
    what = "lacks" if has_features else "must not carry"
    return CodecError(
        CodecErrorCode.MISSING_FIELD if has_features else CodecErrorCode.EXTRA_FIELD,
        f"row {i} ({MutationKind(int(kind[i])).name}) {what} features; "
        "they go exactly on ADD_VERTEX/UPDATE_FEATURES rows",
    )


def _null_values_error(kind: np.ndarray, i: int) -> CodecError:
    return CodecError(CodecErrorCode.BAD_VALUE, f"row {i} ({MutationKind(int(kind[i])).name}) has null feature values")


def _fixed_features(fcol: pa.Array, kind: np.ndarray, has: np.ndarray) -> tuple[np.ndarray, int | None] | CodecError:
    """``FIXED``: the feature rows ``(n_feat, F)`` and ``F``; non-null exactly on feature rows."""
    n = len(kind)
    n_feat = int(has.sum())
    if fcol.null_count == n and n_feat == 0:  # the common edge-only table: nothing more to look at
        return _NO_FEATURES
    valid = fcol.is_valid().to_numpy(zero_copy_only=False)
    if not np.array_equal(valid, has):
        i = int(np.flatnonzero(valid != has)[0])
        return _placement_error(kind, i, bool(has[i]))
    width = fcol.type.list_size
    if width < 1:
        return CodecError(CodecErrorCode.FEATURE_WIDTH, f"feature rows must be at least 1 wide, got {fcol.type}")
    child = fcol.values.slice(fcol.offset * width, n * width)
    if child.null_count:  # slots under null rows may be null (pa.nulls does that); values in feature rows may not
        child_valid = child.is_valid().to_numpy(zero_copy_only=False).reshape(n, width)
        bad_rows = has & ~child_valid.all(axis=1)
        if bad_rows.any():
            return _null_values_error(kind, int(np.flatnonzero(bad_rows)[0]))
    dense = child.to_numpy(zero_copy_only=False).reshape(n, width)  # zero-copy unless the child has nulls
    return (dense if n_feat == n else dense[has]), width


def _list_features(fcol: pa.Array, kind: np.ndarray, has: np.ndarray) -> tuple[np.ndarray, int | None] | CodecError:
    """``LIST``: the feature rows ``(n_feat, F)`` and ``F``.  Feature rows are non-null with ``F >= 1``
    values each (the first one's length sets ``F``); other rows hold no values (null or empty: equal
    offsets), so the feature values are one contiguous run of the child array, viewed without a copy."""
    offsets = fcol.offsets.to_numpy(zero_copy_only=False)  # n + 1 raw offsets (the slice's own)
    lengths = np.diff(offsets)
    n_feat = int(has.sum())
    carries = ~has & (lengths != 0)
    if carries.any():  # a null row's segment may legally span values in Arrow; here it must not (they cost bytes)
        return _placement_error(kind, int(np.flatnonzero(carries)[0]), False)
    if n_feat == 0:
        return _NO_FEATURES
    if fcol.null_count:
        lacks = has & ~fcol.is_valid().to_numpy(zero_copy_only=False)
        if lacks.any():
            return _placement_error(kind, int(np.flatnonzero(lacks)[0]), True)
    feat_rows = np.flatnonzero(has)
    first = int(feat_rows[0])
    width = int(lengths[first])
    if width < 1:
        name = MutationKind(int(kind[first])).name
        return CodecError(
            CodecErrorCode.FEATURE_WIDTH, f"feature rows must be at least 1 wide; row {first} ({name}) holds {width}"
        )
    wrong = lengths[feat_rows] != width
    if wrong.any():
        i = int(feat_rows[np.flatnonzero(wrong)[0]])
        name = MutationKind(int(kind[i])).name
        return CodecError(
            CodecErrorCode.FEATURE_WIDTH,
            f"row {i} ({name}) holds {int(lengths[i])} features; row {first} holds {width}: all feature rows of a "
            "record must be equally wide",
        )
    # every length is now >= 0, so the offsets ascend; a corrupt end offset must still stay inside the child
    start, stop = int(offsets[0]), int(offsets[-1])
    if start < 0 or stop > len(fcol.values):
        return CodecError(
            CodecErrorCode.BAD_VALUE, f"feature offsets [{start}, {stop}) exceed the {len(fcol.values)} values"
        )
    child = fcol.values.slice(start, stop - start)
    if child.null_count:  # only feature rows span values here
        row_valid = child.is_valid().to_numpy(zero_copy_only=False).reshape(n_feat, width).all(axis=1)
        return _null_values_error(kind, int(feat_rows[np.flatnonzero(~row_valid)[0]]))
    return child.to_numpy(zero_copy_only=True).reshape(n_feat, width), width
