"""Routing and split-by-owner (clustergnn/partition.py): every mutation goes to exactly one owner, the
owner of its routing vertex, and each owner sees its mutations in batch order with their features."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn.mutations import MutationBatch, MutationKind
from clustergnn.partition import HashPartitionMap, TablePartitionMap, route, routing_ids, split_by_owner
from tests.batches import assert_same

F = 3


def test_edges_route_by_destination_everything_else_by_its_vertex() -> None:
    kind = np.array([k for k in MutationKind], dtype=np.int8)
    src = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    dst = np.array([-1, -1, 22, 23, -1], dtype=np.int64)
    assert routing_ids(kind, src, dst).tolist() == [10, 11, 22, 23, 14]
    assert route(MutationBatch.add_edges([1, 2], [3, 4])).tolist() == [3, 4]
    assert route(MutationBatch.remove_vertices([7])).tolist() == [7]


def test_split_keeps_features_with_their_mutations_and_skips_empty_owners() -> None:
    feats = torch.arange(6, dtype=torch.float32).view(3, 2)
    b = MutationBatch.concat([MutationBatch.add_vertices([0, 1, 2], feats), MutationBatch.add_edges([0], [2])])
    parts = split_by_owner(b, HashPartitionMap(4))
    assert sorted(parts) == [0, 1, 2]  # nothing routes to 3
    torch.testing.assert_close(parts[2].features, feats[2:3])
    assert parts[2].kind.tolist() == [MutationKind.ADD_VERTEX, MutationKind.ADD_EDGE]
    assert split_by_owner(MutationBatch.empty(), HashPartitionMap(4)) == {}
    one = MutationBatch.add_edges([5, 6], [1, 1])
    assert split_by_owner(one, HashPartitionMap(4))[1] is one  # a batch with one owner is not copied


ids = st.integers(min_value=-(2**40), max_value=2**40)


@st.composite
def batches(draw: st.DrawFn) -> MutationBatch:
    n = draw(st.integers(0, 40))
    kinds = draw(st.lists(st.sampled_from(list(MutationKind)), min_size=n, max_size=n))
    src = np.array(draw(st.lists(ids, min_size=n, max_size=n)), dtype=np.int64)
    dst = np.array(draw(st.lists(ids, min_size=n, max_size=n)), dtype=np.int64)
    dst = np.where([k.is_edge for k in kinds], dst, -1).astype(np.int64) if n else dst
    nf = sum(k.has_features for k in kinds)
    feats = torch.arange(nf * F, dtype=torch.float32).reshape(nf, F)  # distinct rows: misplaced rows show
    return MutationBatch(np.array(kinds, dtype=np.int8), src, dst, feats)


@st.composite
def partition_maps(draw: st.DrawFn) -> HashPartitionMap | TablePartitionMap:
    p = draw(st.integers(1, 8))
    if draw(st.booleans()):
        return HashPartitionMap(p)
    table_ids = draw(st.lists(ids, max_size=10, unique=True))
    owners = draw(st.lists(st.integers(0, p - 1), min_size=len(table_ids), max_size=len(table_ids)))
    return TablePartitionMap(p, np.array(table_ids, dtype=np.int64), np.array(owners, dtype=np.int32))


@settings(max_examples=150, deadline=None)
@given(batches(), partition_maps())
def test_property_every_mutation_goes_to_exactly_one_owner_in_order(b: MutationBatch, pmap) -> None:
    parts = split_by_owner(b, pmap)
    owners = pmap.owner(route(b))
    # exactly one owner each: the parts hold every mutation once, each in the part of its routing vertex
    assert sum(len(part) for part in parts.values()) == len(b)
    assert set(parts) == set(owners.tolist())
    for p, part in parts.items():
        assert 0 <= p < pmap.num_partitions and len(part) > 0
        assert (pmap.owner(route(part)) == p).all()
        # batch order kept: the part is exactly the batch's mutations of owner p, in order, with features
        assert_same(part, b.subset(owners == p))
    # and the parts together are the batch, reordered only across owners
    rows = np.concatenate([np.flatnonzero(owners == p) for p in sorted(parts)]) if parts else np.zeros(0, np.int64)
    assert_same(MutationBatch.concat([parts[p] for p in sorted(parts)]) if parts else b, b.take(rows))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_property_subset_is_take_of_the_mask(b: MutationBatch) -> None:
    mask = np.arange(len(b)) % 3 != 1
    part = b.subset(mask)
    assert len(part) == int(mask.sum()) and part.feature_dim == b.feature_dim
    frow = b.feature_row_index()[mask]
    torch.testing.assert_close(part.features, b.features[torch.from_numpy(frow[frow >= 0])])
