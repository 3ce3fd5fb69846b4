"""MutationBatch: columnar batches, Arrow round trips, runs; the partition map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from clustergnn import MutationBatch, MutationError, MutationKind
from clustergnn.partition import HashPartitionMap, TablePartitionMap


def mixed() -> MutationBatch:
    return MutationBatch.concat(
        [
            MutationBatch.add_vertices([1, 2], torch.arange(6, dtype=torch.float32).view(2, 3)),
            MutationBatch.add_edges([1], [2], bidirectional=True),
            MutationBatch.update_features([2], torch.full((1, 3), -1.0)),
            MutationBatch.remove_edges([2], [1]),
            MutationBatch.remove_vertices([1]),
        ]
    )


def test_concat_keeps_order_and_features_follow_their_mutations() -> None:
    b = mixed()
    assert b.kind.tolist() == [0, 0, 2, 2, 4, 3, 1]
    assert b.src.tolist() == [1, 2, 1, 2, 2, 2, 1] and b.dst.tolist() == [-1, -1, 2, 1, -1, 1, -1]
    assert b.feature_row_index().tolist() == [0, 1, -1, -1, 2, -1, -1]
    assert [(k.name, a, z) for k, a, z in b.runs()] == [
        ("ADD_VERTEX", 0, 2),
        ("ADD_EDGE", 2, 4),
        ("UPDATE_FEATURES", 4, 5),
        ("REMOVE_EDGE", 5, 6),
        ("REMOVE_VERTEX", 6, 7),
    ]
    tail = b.slice(4, 7)
    assert tail.features.tolist() == [[-1.0, -1.0, -1.0]] and len(tail) == 3


@pytest.mark.parametrize(
    "batch",
    [mixed(), MutationBatch.add_edges([5, 6], [7, 8]), MutationBatch.remove_vertices([3]), MutationBatch.empty(4)],
    ids=["mixed", "edges-only", "removals", "empty"],
)
def test_arrow_round_trip(batch: MutationBatch) -> None:
    back = MutationBatch.from_arrow(batch.to_arrow())
    assert np.array_equal(back.kind, batch.kind) and np.array_equal(back.src, batch.src)
    assert np.array_equal(back.dst, batch.dst) and torch.equal(
        back.features, batch.features.reshape(back.features.shape)
    )


def test_arrow_rejects_features_on_edge_rows() -> None:
    import pyarrow as pa

    t = mixed().to_arrow()
    feats = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(21, np.float32)), 3)  # no nulls at all
    with pytest.raises(MutationError, match="exactly on ADD_VERTEX/UPDATE_FEATURES rows"):
        MutationBatch.from_arrow(t.set_column(3, "features", feats))


def test_unknown_kind_and_mismatched_columns() -> None:
    with pytest.raises(MutationError, match="unknown mutation kind 9"):
        MutationBatch(np.array([9], np.int8), np.zeros(1, np.int64), np.zeros(1, np.int64), torch.zeros(0, 0))
    with pytest.raises(MutationError, match="differ in length"):
        MutationBatch(np.array([2], np.int8), np.zeros(2, np.int64), np.zeros(1, np.int64), torch.zeros(0, 0))
    with pytest.raises(MutationError, match="different feature widths"):
        MutationBatch.concat(
            [MutationBatch.add_vertices([1], torch.zeros(1, 2)), MutationBatch.add_vertices([2], torch.zeros(1, 3))]
        )
    assert MutationKind.ADD_EDGE.is_edge and MutationKind.UPDATE_FEATURES.has_features


@given(st.integers(1, 64), st.lists(st.integers(-(2**62), 2**62), max_size=200))
def test_every_vertex_has_exactly_one_owner(p: int, ids: list[int]) -> None:
    owners = HashPartitionMap(p).owner(np.array(ids, dtype=np.int64))
    assert owners.shape == (len(ids),) and ((owners >= 0) & (owners < p)).all()
    assert np.array_equal(owners, HashPartitionMap(p).owner(np.array(ids, dtype=np.int64)))  # deterministic
    table = TablePartitionMap(
        p, np.array(sorted(set(ids))[:10], dtype=np.int64), np.zeros(min(10, len(set(ids))), np.int32)
    )
    t_owners = table.owner(np.array(ids, dtype=np.int64))
    assert ((t_owners >= 0) & (t_owners < p)).all()


def test_partition_map_errors() -> None:
    with pytest.raises(ValueError, match="num_partitions must be an integer >= 1, got 0"):
        HashPartitionMap(0)
    with pytest.raises(ValueError, match="owner 5 is outside"):
        TablePartitionMap(2, np.array([1]), np.array([5]))
    with pytest.raises(ValueError, match="vertex 1 is assigned more than once"):
        TablePartitionMap(2, np.array([1, 1]), np.array([0, 1]))
    assert HashPartitionMap(4).owner(np.array([-1, 5]))[0] == 3
