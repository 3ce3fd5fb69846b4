"""The core Arrow codec of a MutationBatch (clustergnn/codec.py): round trips, the one no-feature width,
bad tables as error values, and the lenient reader behind ``MutationBatch.from_arrow``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn import codec
from clustergnn.errors import MutationError
from clustergnn.mutations import MutationBatch, MutationKind
from tests.batches import assert_same


def mixed(width: int = 3) -> MutationBatch:
    f = torch.arange(3 * width, dtype=torch.float32).view(3, width)
    return MutationBatch.concat(
        [
            MutationBatch.add_vertices([1, 2], f[:2]),
            MutationBatch.add_edges([1], [2], bidirectional=True),
            MutationBatch.update_features([2], f[2:]),
            MutationBatch.remove_edges([2], [1]),
            MutationBatch.remove_vertices([1]),
        ]
    )


@pytest.mark.parametrize(
    "batch",
    [
        mixed(),
        mixed(1),
        MutationBatch.add_vertices([4], torch.ones(1, 5)),
        MutationBatch.add_edges([5, 6], [7, 8]),
        MutationBatch.remove_vertices([3]),
        MutationBatch.empty(),
        MutationBatch.empty(4),
    ],
    ids=["mixed", "mixed-F1", "features-only", "edges-only", "removals", "empty", "empty-F4"],
)
def test_round_trip_with_and_without_features(batch: MutationBatch) -> None:
    cols = codec.decode(codec.encode(batch))
    assert isinstance(cols, codec.MutationColumns), cols
    assert_same(cols.to_batch(), batch)
    assert_same(MutationBatch.from_arrow(batch.to_arrow()), batch)
    has_rows = batch.features.shape[0] > 0
    assert cols.feature_dim == (batch.feature_dim if has_rows else None)


def test_one_width_without_feature_rows() -> None:
    for b in (MutationBatch.add_edges([1], [2]), MutationBatch.empty(), MutationBatch.empty(64)):
        assert codec.encode(b).schema.field("features").type.list_size == codec.NO_FEATURE_WIDTH == 1
        assert b.to_arrow().schema.field("features").type.list_size == 1
    # reading, an all-null column carries no width: the reader says which it wants
    t = MutationBatch.add_edges([1], [2]).to_arrow()
    assert MutationBatch.from_arrow(t).feature_dim == 0
    assert MutationBatch.from_arrow(t, feature_dim=8).feature_dim == 8
    # a zero-width column (older gateway clients wrote one) reads the same
    zero = t.set_column(3, "features", pa.nulls(1, type=pa.list_(pa.float32(), 0)))
    assert_same(MutationBatch.from_arrow(zero), MutationBatch.add_edges([1], [2]))


def test_metadata_goes_on_the_schema() -> None:
    rb = codec.encode(mixed(), metadata={"k": "v"})
    assert rb.schema.metadata == {b"k": b"v"}


def test_encoding_features_of_width_zero_is_refused() -> None:
    bad = MutationBatch(np.array([MutationKind.ADD_VERTEX], np.int8), np.array([1]), np.array([-1]), torch.zeros(1, 0))
    with pytest.raises(MutationError, match="width >= 1, got 0"):
        codec.encode(bad)


def _table(**cols: pa.Array) -> pa.Table:
    base = codec.encode(mixed())
    t = pa.Table.from_batches([base])
    for name, col in cols.items():
        t = t.set_column(t.schema.get_field_index(name), name, col)
    return t


@pytest.mark.parametrize(
    ("table", "code", "needle"),
    [
        (_table().drop_columns(["dst"]), codec.CodecErrorCode.MISSING_FIELD, "['dst']"),
        (_table().append_column("x", pa.array([0] * 7)), codec.CodecErrorCode.EXTRA_FIELD, "['x']"),
        (_table(src=pa.array([1] * 7, pa.int32())), codec.CodecErrorCode.BAD_TYPE, "int32"),
        (_table(kind=pa.array([0, 0, 2, 2, 4, 3, 9], pa.int8())), codec.CodecErrorCode.UNKNOWN_KIND, "kind 9"),
        (_table(dst=pa.array([5, -1, 2, 1, -1, 1, -1], pa.int64())), codec.CodecErrorCode.BAD_VALUE, "dst 5"),
        (_table(src=pa.array([1, None, 1, 2, 2, 2, 1], pa.int64())), codec.CodecErrorCode.BAD_VALUE, "1 nulls"),
    ],
    ids=["missing", "extra", "type", "kind", "dst", "null-id"],
)
def test_bad_tables_are_values_not_exceptions(table: pa.Table, code: codec.CodecErrorCode, needle: str) -> None:
    err = codec.decode(table)
    assert isinstance(err, codec.CodecError) and err.code == code and needle in err.message, err


def test_feature_placement_and_finiteness() -> None:
    t = _table()
    dense = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(21, np.float32)), 3)  # no nulls at all
    err = codec.decode(t.set_column(3, "features", dense))
    assert err.code == codec.CodecErrorCode.EXTRA_FIELD and "row 2 (ADD_EDGE)" in err.message
    nan = np.zeros(21, np.float32)
    nan[4] = np.nan
    mask = pa.array([k not in (0, 4) for k in mixed().kind.tolist()])
    err = codec.decode(t.set_column(3, "features", pa.FixedSizeListArray.from_arrays(pa.array(nan), 3, mask=mask)))
    assert err.code == codec.CodecErrorCode.NON_FINITE and "row 1" in err.message


def test_lenient_reader_casts_what_fits_and_names_what_does_not() -> None:
    t = pa.table(
        {
            "extra": [1],
            "kind": pa.array([MutationKind.ADD_VERTEX], pa.int64()),
            "src": pa.array([7], pa.int32()),
            "dst": [-1],
            "features": pa.FixedSizeListArray.from_arrays(pa.array([0.5, 1.5], pa.float64()), 2),
        }
    )
    b = MutationBatch.from_arrow(t)
    assert b.src.tolist() == [7] and b.features.tolist() == [[0.5, 1.5]]
    with pytest.raises(MutationError, match="lacks columns"):
        MutationBatch.from_arrow(t.drop_columns(["src"]))
    with pytest.raises(MutationError, match="300"):
        MutationBatch.from_arrow(t.set_column(1, "kind", pa.array([300], pa.int64())))
    with pytest.raises(MutationError, match="must hold integers"):
        MutationBatch.from_arrow(t.set_column(2, "src", pa.array(["7"])))


def test_columns_to_batch_joins_parts_and_rejects_width_disagreement() -> None:
    a, b = codec.decode(codec.encode(mixed())), codec.decode(codec.encode(MutationBatch.add_edges([1], [2])))
    assert_same(codec.columns_to_batch([a, b]), MutationBatch.concat([mixed(), MutationBatch.add_edges([1], [2])]))
    assert codec.columns_to_batch([], feature_dim=5).feature_dim == 5
    c = codec.decode(codec.encode(mixed(2)))
    with pytest.raises(ValueError, match=r"disagree on feature width: \[2, 3\]"):
        codec.columns_to_batch([a, c])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(MutationKind)), max_size=25), st.integers(1, 6), st.integers(0, 2**31))
def test_property_round_trip(kinds: list[MutationKind], width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = len(kinds)
    kind = np.array(kinds, dtype=np.int8)
    dst = np.where([k.is_edge for k in kinds], rng.integers(-50, 50, n), -1).astype(np.int64)
    nf = sum(k.has_features for k in kinds)
    feats = torch.from_numpy(rng.standard_normal((nf, width)).astype(np.float32))
    b = MutationBatch(kind, rng.integers(-50, 50, n).astype(np.int64), dst, feats)
    assert_same(MutationBatch.from_arrow(b.to_arrow(), feature_dim=width), b)
