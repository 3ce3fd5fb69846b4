"""Bad input gets a clear error naming the bad value, and a rejected batch changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch, MutationError, UnknownVertexError, UnsupportedModelError
from clustergnn._dgl import dgl, dglnn
from tests.core.models import F_IN, build


def snapshot(eng: Engine) -> tuple:
    g, x, ids = eng.to_dgl()
    s, d = g.edges()
    order = np.lexsort((ids[d.numpy()], ids[s.numpy()]))
    embs = [eng.embeddings(np.sort(ids), layer=li) for li in range(eng.num_layers + 1)]
    return sorted(ids.tolist()), ids[s.numpy()][order].tolist(), ids[d.numpy()][order].tolist(), embs


def assert_same(a: tuple, b: tuple) -> None:
    assert a[:3] == b[:3]
    for x, y in zip(a[3], b[3]):
        assert torch.equal(x, y)


@pytest.fixture
def eng() -> Engine:
    g = dgl.graph(([0, 1, 2, 3], [1, 2, 3, 0]), num_nodes=4)
    return Engine.from_dgl(build("sage-pool"), g, torch.randn(4, F_IN, generator=torch.Generator().manual_seed(0)))


def good_prefix() -> MutationBatch:
    """A valid prefix that the bad tail must roll back."""
    return MutationBatch.concat(
        [
            MutationBatch.add_vertices([10], torch.ones(1, F_IN)),
            MutationBatch.add_edges([10, 0], [0, 10]),
            MutationBatch.remove_edges([0], [1]),
            MutationBatch.update_features([2], torch.zeros(1, F_IN)),
            MutationBatch.remove_vertices([3]),
        ]
    )


BAD = {
    "edge from unknown vertex": (MutationBatch.add_edges([99], [0]), "unknown source vertex id 99"),
    "edge to unknown vertex": (MutationBatch.add_edges([0], [77]), "unknown destination vertex id 77"),
    "edge to removed vertex": (MutationBatch.add_edges([0], [3]), "unknown destination vertex id 3"),
    "remove missing edge": (MutationBatch.remove_edges([2], [0]), "cannot remove edge 2 -> 0: it does not exist"),
    "remove edge twice": (MutationBatch.remove_edges([1, 1], [2, 2]), "only 1 of 2 copies exist"),
    "remove missing vertex": (MutationBatch.remove_vertices([42]), "unknown vertex id 42"),
    "remove vertex twice": (MutationBatch.remove_vertices([3]), "unknown vertex id 3"),
    "add existing vertex": (
        MutationBatch.add_vertices([1], torch.zeros(1, F_IN)),
        "cannot add vertex 1: it already exists",
    ),
    "add vertex twice": (MutationBatch.add_vertices([5, 5], torch.zeros(2, F_IN)), "cannot add vertex 5"),
    "wrong feature width": (
        MutationBatch.update_features([1], torch.zeros(1, F_IN + 1)),
        f"width {F_IN + 1}, the model expects {F_IN}",
    ),
    "update unknown vertex": (MutationBatch.update_features([1234], torch.zeros(1, F_IN)), "unknown vertex id 1234"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_batch_is_rejected_whole(eng: Engine, case: str) -> None:
    bad, message = BAD[case]
    before = snapshot(eng)
    with pytest.raises(MutationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        # a batch has one feature width, so the width case gets a feature-free valid prefix
        prefix = (
            good_prefix()
            if bad.feature_dim in (0, F_IN)
            else MutationBatch.concat([good_prefix().slice(3, 4), good_prefix().slice(5, 6)])
        )
        eng.apply(MutationBatch.concat([prefix, bad]))
    assert_same(snapshot(eng), before)
    eng.apply(good_prefix())  # and the engine still works afterwards
    assert eng.num_vertices == 4


def test_non_finite_and_wrong_dtype_features_are_rejected() -> None:
    with pytest.raises(MutationError, match="row 1 holds NaN or inf"):
        MutationBatch.add_vertices([1, 2], np.array([[0.0] * F_IN, [np.inf] * F_IN], dtype=np.float32))
    with pytest.raises(MutationError, match="float32, got dtype float64"):
        MutationBatch.update_features([1], np.zeros((1, F_IN)))
    with pytest.raises(MutationError, match="integer vertex ids"):
        MutationBatch.add_edges([0.5], [1.0])
    with pytest.raises(MutationError, match="differ in length"):
        MutationBatch.add_edges([1, 2], [3])


def test_nan_smuggled_past_the_constructor_is_caught(eng: Engine) -> None:
    b = MutationBatch.update_features([1], torch.zeros(1, F_IN))
    b.features[0, 0] = float("nan")  # tensors are mutable; the engine checks again
    before = snapshot(eng)
    with pytest.raises(MutationError, match="finite"):
        eng.apply(b)
    assert_same(snapshot(eng), before)


def test_reads_name_the_bad_id_and_layer(eng: Engine) -> None:
    with pytest.raises(UnknownVertexError, match="unknown vertex id 55"):
        eng.embeddings([0, 55])
    with pytest.raises(ValueError, match=r"layer must be in \[-3, 2\].*got 3"):
        eng.embeddings([0], layer=3)
    eng.apply(MutationBatch.remove_vertices([2]))
    with pytest.raises(UnknownVertexError, match="unknown vertex id 2"):
        eng.embeddings([2])


def test_unsupported_layers_are_named() -> None:
    g = dgl.graph(([0], [1]), num_nodes=2)
    with pytest.raises(UnsupportedModelError, match=r"torch.nn.modules.linear.Linear.*supported: dgl.nn.SAGEConv"):
        Engine.from_dgl([torch.nn.Linear(F_IN, 2)], g, torch.zeros(2, F_IN))
    with pytest.raises(UnsupportedModelError, match="aggregator_type='lstm'"):
        Engine.from_dgl([dglnn.SAGEConv(F_IN, 2, "lstm")], g, torch.zeros(2, F_IN))
    with pytest.raises(UnsupportedModelError, match="expects 5 input features, but gets 6"):
        Engine.from_dgl([dglnn.SAGEConv(5, 2, "mean")], g, torch.zeros(2, F_IN))
    with pytest.raises(ValueError, match="mode must be one of"):
        Engine.from_dgl(build("sage-mean"), g, torch.zeros(2, F_IN), mode="fast")


def _stretch(*muts: MutationBatch) -> MutationBatch:
    """Vertex and edge additions interleaved, as a stream delivers them (applied as one stretch)."""
    return MutationBatch.concat(list(muts))


def _v(i: int, fill: float = 1.0) -> MutationBatch:
    return MutationBatch.add_vertices([i], torch.full((1, F_IN), fill))


STRETCH_BAD = {
    "edge before its vertex": (
        _stretch(_v(20), MutationBatch.add_edges([20], [0]), MutationBatch.add_edges([0], [21]), _v(21)),
        "mutations [1, 3) (add_edge): unknown destination vertex id 21",
    ),
    "vertex added twice": (
        _stretch(_v(20), MutationBatch.add_edges([20], [0]), _v(20)),
        "mutations [2, 3) (add_vertex): cannot add vertex 20: it already exists",
    ),
    "removing an edge that is not there yet": (
        _stretch(
            _v(20),
            MutationBatch.add_edges([20], [0]),
            MutationBatch.remove_edges([0], [20]),
            MutationBatch.add_edges([0], [20]),
        ),
        "mutations [2, 3) (remove_edge): cannot remove edge 0 -> 20: it does not exist",
    ),
    "removing one copy too many": (
        _stretch(_v(20), MutationBatch.add_edges([20], [0]), MutationBatch.remove_edges([20, 20], [0, 0])),
        "mutations [2, 4) (remove_edge): cannot remove edge 20 -> 0: only 1 of 2 copies exist",
    ),
    "removing a graph edge twice": (
        _stretch(
            _v(20),
            MutationBatch.remove_edges([0], [1]),
            MutationBatch.add_edges([20], [0]),
            MutationBatch.remove_edges([0], [1]),
        ),
        "mutations [3, 4) (remove_edge): cannot remove edge 0 -> 1: it does not exist",
    ),
    "existing vertex": (
        _stretch(_v(20), MutationBatch.add_edges([20], [0]), _v(1)),
        "mutations [2, 3) (add_vertex): cannot add vertex 1: it already exists",
    ),
    # every vertex before every edge (a bulk load's shape): the vertices are added first, then undone
    "vertices first, then an edge to an unknown vertex": (
        _stretch(_v(20), _v(21), MutationBatch.add_edges([20, 21], [21, 30])),
        "mutations [2, 4) (add_edge): unknown destination vertex id 30",
    ),
    "vertices first, then removing a new vertex's missing edge": (
        _stretch(_v(20), _v(21), MutationBatch.add_edges([20], [0]), MutationBatch.remove_edges([21], [0])),
        "mutations [3, 4) (remove_edge): cannot remove edge 21 -> 0: it does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(STRETCH_BAD))
def test_bad_stretch_of_additions_is_rejected_whole(eng: Engine, case: str) -> None:
    """A stretch of interleaved additions is applied at once when valid; an invalid one is rejected
    whole, with the error that applying it mutation by mutation meets first."""
    bad, message = STRETCH_BAD[case]
    before = snapshot(eng)
    with pytest.raises(MutationError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        eng.apply(bad)
    assert_same(snapshot(eng), before)


def test_stretch_of_additions_equals_one_by_one(eng: Engine) -> None:
    """Interleaved vertex additions and edge additions and removals applied as one stretch (their net
    effect) give the same graph, slots and embeddings (the structure exactly, the values to float
    tolerance) as one mutation per batch."""
    muts = [
        _v(20, 0.5),
        MutationBatch.add_edges([20, 0], [0, 20]),
        MutationBatch.remove_edges([0], [1]),
        _v(21, -1.0),
        MutationBatch.add_edges([21, 21, 0], [20, 1, 1]),
        MutationBatch.remove_edges([20, 21], [0, 1]),
        _v(22, 2.0),
        MutationBatch.add_edges([22, 20, 2, 20], [21, 22, 22, 0]),
        MutationBatch.remove_edges([2], [3]),
    ]
    other = Engine.from_dgl(
        build("sage-pool"),
        dgl.graph(([0, 1, 2, 3], [1, 2, 3, 0]), num_nodes=4),
        torch.randn(4, F_IN, generator=torch.Generator().manual_seed(0)),
    )
    eng.apply(MutationBatch.concat(muts))
    for m in muts:
        other.apply(m)
    a, b = snapshot(eng), snapshot(other)
    assert a[:3] == b[:3]
    assert np.array_equal(eng.graph.lookup(np.arange(23)), other.graph.lookup(np.arange(23)))
    for x, y in zip(a[3], b[3]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_rejected_vertices_first_stretch_leaves_the_slots_as_they_were(eng: Engine) -> None:
    """The vertices-first stretch adds its vertices before looking its edges up; when the stretch is
    rejected they are undone, so the next batch gets the same slots as in an engine that never saw it."""
    other = Engine.from_dgl(
        build("sage-pool"),
        dgl.graph(([0, 1, 2, 3], [1, 2, 3, 0]), num_nodes=4),
        torch.randn(4, F_IN, generator=torch.Generator().manual_seed(0)),
    )
    eng.apply(MutationBatch.remove_vertices([2]))  # a free slot, reused by the next batch after this one
    other.apply(MutationBatch.remove_vertices([2]))
    with pytest.raises(MutationError, match="unknown destination vertex id 30"):
        eng.apply(_stretch(_v(20), _v(21), MutationBatch.add_edges([20, 21], [21, 30])))
    good = _stretch(_v(21), _v(20), _v(22), MutationBatch.add_edges([20, 21, 22], [21, 22, 0]))
    eng.apply(good)
    other.apply(good)
    ids = np.arange(23)
    assert np.array_equal(eng.graph.lookup(ids), other.graph.lookup(ids))
    assert_same(snapshot(eng), snapshot(other))
