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
