"""Differential tests: after any valid mutation stream, every cache equals DGL's own full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustergnn import Engine, MutationBatch, cpu_kernels
from clustergnn._dgl import dgl
from clustergnn.engine import MODES
from clustergnn.reference import dgl_forward
from tests.core.models import F_IN, MODELS, build

REL_TOL = 1e-5


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max(1, max |ref|): fp32 relative error at the scale of the embeddings."""
    if ref.numel() == 0:
        return 0.0
    return float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))


def assert_matches_dgl(eng: Engine, layers) -> None:
    g, x, ids = eng.to_dgl()
    refs = dgl_forward(layers, g, x)
    for li, ref in enumerate(refs):
        got = eng.embeddings(ids, layer=li)
        err = rel_error(got, ref)
        assert err <= REL_TOL, (
            f"layer {li}: relative error {err:.3e} > {REL_TOL} ({g.num_nodes()} vertices, {g.num_edges()} edges)"
        )


class GraphModel:
    """A plain-Python model of the graph, used only to draw valid mutations."""

    def __init__(self, n: int, edges: list[tuple[int, int]]) -> None:
        self.vertices = set(range(n))
        self.edges = list(edges)
        self.next_id = n + 1000

    def draw_mutation(self, data: st.DataObject) -> MutationBatch:
        verts = sorted(self.vertices)
        ops = ["add_edge", "add_vertex", "update"]
        if self.edges:
            ops += ["remove_edge", "remove_edge"]
        if len(verts) > 2:
            ops.append("remove_vertex")
        op = data.draw(st.sampled_from(ops))

        def feat(k: int) -> torch.Tensor:
            values = st.lists(st.floats(-3, 3, width=32), min_size=F_IN * k, max_size=F_IN * k)
            return torch.tensor(data.draw(values), dtype=torch.float32).view(k, F_IN)

        if op == "add_vertex":
            v = self.next_id
            self.next_id += 1
            self.vertices.add(v)
            return MutationBatch.add_vertices([v], feat(1))
        if op == "update":
            v = data.draw(st.sampled_from(verts))
            return MutationBatch.update_features([v], feat(1))
        if op == "add_edge":
            u, v = data.draw(st.sampled_from(verts)), data.draw(st.sampled_from(verts))
            self.edges.append((u, v))
            return MutationBatch.add_edges([u], [v])
        if op == "remove_edge":
            i = data.draw(st.integers(0, len(self.edges) - 1))
            u, v = self.edges.pop(i)
            return MutationBatch.remove_edges([u], [v])
        v = data.draw(st.sampled_from(verts))
        self.vertices.discard(v)
        self.edges = [(a, b) for a, b in self.edges if a != v and b != v]
        return MutationBatch.remove_vertices([v])


def initial_graph(data: st.DataObject) -> tuple[dgl.DGLGraph, torch.Tensor, list[tuple[int, int]]]:
    n = data.draw(st.integers(1, 12), label="n")
    edges = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=30), label="edges")
    src = torch.tensor([e[0] for e in edges], dtype=torch.int64)
    dst = torch.tensor([e[1] for e in edges], dtype=torch.int64)
    g = dgl.graph((src, dst), num_nodes=n)
    seed = data.draw(st.integers(0, 2**16), label="feature seed")
    x = torch.randn(n, F_IN, generator=torch.Generator().manual_seed(seed))
    return g, x, edges


@pytest.mark.parametrize("mode", [*MODES, "collaborative"])
@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_random_streams_match_dgl(model: str, mode: str, data: st.DataObject) -> None:
    layers = build(model, seed=data.draw(st.integers(0, 100), label="weight seed"))
    g, x, edges = initial_graph(data)
    if mode == "collaborative":
        eng = Engine.from_dgl(layers, g, x, collaborative=True)
    else:
        eng = Engine.from_dgl(layers, g, x, mode=mode)
    assert_matches_dgl(eng, layers)
    state = GraphModel(g.num_nodes(), edges)
    for _ in range(data.draw(st.integers(1, 4), label="batches")):
        k = data.draw(st.integers(1, 12), label="batch size")
        eng.apply(MutationBatch.concat([state.draw_mutation(data) for _ in range(k)]))
        assert_matches_dgl(eng, layers)


@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_torch_kernels_match_dgl(model: str, data: st.DataObject) -> None:
    """The plain torch path (CUDA's, and CPU's without numba) stays exact where the CPU uses fused kernels."""
    layers = build(model, seed=data.draw(st.integers(0, 100), label="weight seed"))
    g, x, edges = initial_graph(data)
    with cpu_kernels.disabled():
        eng = Engine.from_dgl(layers, g, x)
        assert not eng.fused
        state = GraphModel(g.num_nodes(), edges)
        for _ in range(data.draw(st.integers(1, 4), label="batches")):
            k = data.draw(st.integers(1, 12), label="batch size")
            eng.apply(MutationBatch.concat([state.draw_mutation(data) for _ in range(k)]))
            assert_matches_dgl(eng, layers)


def test_empty_batch_changes_nothing() -> None:
    layers = build("sage-mean")
    g = dgl.graph(([0, 1], [1, 2]), num_nodes=3)
    eng = Engine.from_dgl(layers, g, torch.randn(3, F_IN))
    before = eng.embeddings([0, 1, 2])
    res = eng.apply(MutationBatch.empty(F_IN))
    assert res.changed_per_layer == [0, 0]
    assert torch.equal(eng.embeddings([0, 1, 2]), before)


def test_isolated_vertices_self_loops_and_multi_edges() -> None:
    for name in sorted(MODELS):
        layers = build(name, seed=3)
        g = dgl.graph(([0, 0, 0, 1, 2], [1, 1, 0, 1, 3]), num_nodes=6)  # 4, 5 isolated; 0->0, 1->1 loops
        eng = Engine.from_dgl(layers, g, torch.randn(6, F_IN))
        assert_matches_dgl(eng, layers)
        eng.apply(
            MutationBatch.concat(
                [
                    MutationBatch.remove_edges([0], [1]),  # one of two parallel copies
                    MutationBatch.add_edges([5, 5, 5], [5, 5, 4]),
                    MutationBatch.remove_edges([0], [0]),
                    MutationBatch.update_features([4], torch.full((1, F_IN), -2.0)),
                ]
            )
        )
        assert_matches_dgl(eng, layers)


def test_remove_and_readd_same_id_in_one_batch() -> None:
    layers = build("sage-pool", seed=1)
    g = dgl.graph(([0, 1, 2], [1, 2, 0]), num_nodes=3)
    eng = Engine.from_dgl(layers, g, torch.randn(3, F_IN))
    eng.apply(
        MutationBatch.concat(
            [
                MutationBatch.remove_vertices([1]),
                MutationBatch.add_vertices([1], torch.randn(1, F_IN)),
                MutationBatch.add_edges([1, 1], [0, 1]),
            ]
        )
    )
    assert_matches_dgl(eng, layers)
    g2, _, ids = eng.to_dgl()
    assert sorted(ids.tolist()) == [0, 1, 2] and g2.num_edges() == 3


def test_external_ids_and_large_ids() -> None:
    layers = build("sage-mean")
    ids = np.array([10, -5, 2**40, 7], dtype=np.int64)
    g = dgl.graph(([0, 1, 2], [1, 2, 3]), num_nodes=4)
    eng = Engine.from_dgl(layers, g, torch.randn(4, F_IN), vertex_ids=ids)
    eng.apply(MutationBatch.add_edges([2**40, -5], [10, 2**40]))
    assert_matches_dgl(eng, layers)
    assert eng.embeddings([2**40, -5]).shape == (2, 4)


def test_incremental_does_less_work_than_khop() -> None:
    """Propagation stops where outputs do not change: a no-op feature update reaches fewer rows.

    Change detection is bit-exact, and BLAS may round a row differently depending on how many rows it
    multiplies at once (MKL's AVX-512 path rounded all 5 re-finished rows of random weights differently
    from the build's 200-row GEMM, so nothing stopped).  So layer 0 computes exactly here: integer
    features and self weights, no neighbour weight and no bias, whatever the GEMM's blocking."""
    layers = build("sage-mean")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layers[0].fc_self.weight.copy_(torch.randint(-2, 3, layers[0].fc_self.weight.shape, generator=gen))
        layers[0].fc_neigh.weight.zero_()
        layers[0].fc_self.bias.zero_()
    g = dgl.graph(
        (torch.randint(0, 200, (1000,), generator=gen), torch.randint(0, 200, (1000,), generator=gen)), num_nodes=200
    )
    x = torch.randint(-4, 5, (200, F_IN), generator=gen).float()
    inc = Engine.from_dgl(layers, g, x)
    khop = Engine.from_dgl(layers, g, x, mode="khop")
    same = MutationBatch.update_features([5], x[5:6].clone())
    r_inc, r_khop = inc.apply(same), khop.apply(same)
    assert r_inc.changed_per_layer[0] < r_inc.affected_per_layer[0]
    assert r_khop.affected_per_layer[1] > r_inc.affected_per_layer[1]
    assert r_khop.changed_per_layer[1] == r_khop.affected_per_layer[1]
