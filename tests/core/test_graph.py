"""Unit tests of the mutable graph store, against a plain multiset model."""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn import cpu_kernels
from clustergnn.graph import MutableGraph


def edge_multiset(g: MutableGraph) -> Counter:
    s, d = g.edges()
    out_s, out_d = g.out_edges(g.alive_slots())
    ins = Counter(zip(g.ext_of[s].tolist(), g.ext_of[d].tolist()))
    outs = Counter(zip(g.ext_of[out_s].tolist(), g.ext_of[out_d].tolist()))
    assert ins == outs, "in- and out-adjacency disagree"
    return ins


@pytest.mark.parametrize("kernels", [True, False], ids=["fused", "numpy"])
@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "rm", "vadd", "vrm"]), st.integers(0, 15), st.integers(0, 15)), max_size=150
    )
)
def test_graph_matches_multiset_model(kernels: bool, ops) -> None:
    with contextlib.nullcontext() if kernels else cpu_kernels.disabled():
        _check_multiset_model(ops)


def _check_multiset_model(ops) -> None:
    g = MutableGraph(capacity=4)
    verts: set[int] = set(range(8))
    g.add_vertices(np.arange(8))
    model: Counter = Counter()
    for op, a, b in ops:
        if op == "add" and a in verts and b in verts:
            g.add_edges_slots(g.slots_of([a]), g.slots_of([b]))
            model[(a, b)] += 1
        elif op == "rm" and model[(a, b)] > 0:
            g.remove_edges_slots(g.slots_of([a]), g.slots_of([b]))
            model[(a, b)] -= 1
        elif op == "vadd" and a not in verts:
            g.add_vertices([a])
            verts.add(a)
        elif op == "vrm" and a in verts:
            g.remove_vertices(np.array([a]))
            g.end_batch()
            verts.discard(a)
            model = Counter({k: v for k, v in model.items() if a not in k})
        assert edge_multiset(g) == +model
        assert set(g.ext_of[g.alive_slots()].tolist()) == verts
    g.inn.compact()
    g.out.compact()
    assert edge_multiset(g) == +model


def test_hub_growth_and_compaction_keep_bytes_per_edge_bounded() -> None:
    g = MutableGraph()
    n = 2000
    g.add_vertices(np.arange(n))
    rng = np.random.default_rng(0)
    for _ in range(20):  # many small appends: blocks relocate and leave garbage
        s, d = rng.integers(0, n, 5000), rng.zipf(1.5, 5000) % n
        g.add_edges_slots(s, d)
    e = g.num_edges
    assert e == 100_000
    assert g.structure_nbytes() / e <= 64
    assert (g.in_degree().sum(), g.out_degree().sum()) == (e, e)


def test_slots_are_not_reused_within_a_batch() -> None:
    g = MutableGraph()
    g.add_vertices(np.array([1, 2, 3]))
    slot_2 = int(g.slots_of([2])[0])
    g.remove_vertices(np.array([2]))
    (new_slot,) = g.add_vertices(np.array([4]))
    assert new_slot != slot_2
    g.end_batch()
    (reused,) = g.add_vertices(np.array([5]))
    assert reused == slot_2


@pytest.mark.skipif(not cpu_kernels.enabled(), reason="no fused kernels")
def test_fused_removal_keeps_the_block_order_of_the_numpy_path() -> None:
    """``remove_pairs`` (fused) drops each pair's first copies in block order and closes the gaps as
    ``find`` + ``rewrite`` do, entry for entry: blocks whose first removal is at their head, in their
    middle or at their end, multi-edges, and blocks no pair touches (left as they were)."""
    rng = np.random.default_rng(3)
    n = 60
    src = np.concatenate([rng.integers(0, n, 4000), np.zeros(300, np.int64)])  # vertex 0: a hub of sources
    dst = np.concatenate([rng.zipf(1.3, 4000) % n, rng.integers(0, n, 300)])  # low vertices: hubs' in-blocks
    graphs = []
    for kernels in (True, False):
        with contextlib.nullcontext() if kernels else cpu_kernels.disabled():
            g = MutableGraph()
            g.add_vertices(np.arange(n))
            g.add_edges_slots(src, dst)
            pick = np.random.default_rng(4).choice(len(src), 700, replace=False)
            g.remove_edges_slots(src[pick], dst[pick])
            graphs.append(g)
    fused, plain = graphs
    for adj in ("inn", "out"):
        a, b = getattr(fused, adj), getattr(plain, adj)
        for o in range(n):
            assert np.array_equal(_block(a, o), _block(b, o))


def _block(adj, o: int) -> np.ndarray:
    return adj.pool[adj.start[o] : adj.start[o] + adj.length[o]]


@pytest.mark.skipif(not cpu_kernels.enabled(), reason="no fused kernels")
def test_edge_copies_are_counted_in_either_block() -> None:
    """``count_edges_slots`` counts each edge in the shorter of its two blocks (a hub's in-block against
    a leaf's out-block, and the other way round): the multiset's copies, 0 for an absent edge."""
    rng = np.random.default_rng(7)
    n = 50
    src = np.concatenate([rng.integers(0, n, 3000), np.zeros(400, np.int64), rng.integers(0, n, 400)])
    dst = np.concatenate([rng.zipf(1.4, 3000) % n, rng.integers(0, n, 400), np.ones(400, np.int64)])
    g = MutableGraph()
    g.add_vertices(np.arange(n))
    g.add_edges_slots(src, dst)
    model = Counter(zip(src.tolist(), dst.tolist()))
    qs, qd = np.meshgrid(np.arange(n), np.arange(n))
    qs, qd = qs.ravel(), qd.ravel()
    by_out = g.out.length[qs] < g.inn.length[qd]
    assert by_out.any() and (~by_out).any()
    got = g.count_edges_slots(qs, qd)
    assert got.tolist() == [model[(a, b)] for a, b in zip(qs.tolist(), qd.tolist())]
