"""The cache tables an engine does not keep (docs/engine.md, "Memory per vertex"), and why it stays exact.

* ``msg[0]`` is ``h[0]`` where layer 0's message is its input itself: a batch that updates a source's
  features overwrites its message before layer 0 runs, and the delta rule needs the old one (the sum's
  ``m'_u - m_u`` and ``E-`` terms, the max rule's suspect tests).  The batches below update sources
  with out-edges and, in the same batch, remove their edges, remove them, update them twice, add
  edges from them: without the pre-batch rows written back, each is off (checked against DGL).
* ``selfc[l]`` is not kept for a widening SAGE mean, nor for GIN outside the fused finish: the self
  term is recomputed at finish from the layer's input.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch
from clustergnn._dgl import dglnn
from tests.core.gen import random_stream
from tests.core.kernel_modes import kernels
from tests.core.models import F_IN, build, randomize
from tests.core.test_engine_exact import assert_matches_dgl

# layer 0's message is its input (msg0 is h0), with each aggregation family and finish
ALIASED = {
    "sage-mean": lambda: build("sage-mean"),  # widening mean: also no selfc0
    "sage-gcn-widening": lambda: randomize([dglnn.SAGEConv(F_IN, 9, "gcn"), dglnn.SAGEConv(9, 4, "mean")], 0),
    "gin": lambda: build("gin"),  # apply_func: the rule's finish
    "gin-plain": lambda: build("gin-plain"),  # the fused SUM finish
    "gin-max": lambda: randomize([dglnn.GINConv(None, "max", init_eps=0.1), dglnn.SAGEConv(F_IN, 3, "mean")], 0),
    "graphconv-none": lambda: randomize(
        [dglnn.GraphConv(F_IN, 8, norm="none"), dglnn.GraphConv(8, 3, norm="right")], 0
    ),
    "graphconv-right-noweight": lambda: randomize(
        [dglnn.GraphConv(F_IN, F_IN, norm="right", weight=False), dglnn.SAGEConv(F_IN, 4, "mean")], 0
    ),
}
NOT_ALIASED = ("sage-pool", "graphconv-both", "gat", "mixed")


def _feats(rng: np.random.Generator, k: int) -> torch.Tensor:
    return torch.from_numpy(rng.standard_normal((k, F_IN)).astype(np.float32))


def _tricky_batches(eng: Engine, rng: np.random.Generator) -> Iterator[MutationBatch]:
    """Batches that update the features of sources with out-edges and, in the same batch, change
    those sources' edges or remove them (each built from the engine's current graph)."""

    def out_edge() -> tuple[int, int]:
        g = eng.graph
        slots = g.alive_slots()
        slots = slots[g.out_degree(slots) > 0]
        u = int(rng.choice(slots))
        _, d = g.out_edges(np.array([u]))
        return int(g.ext_of[u]), int(g.ext_of[d[0]])

    def some_vertex() -> int:
        return int(rng.choice(eng.vertex_ids()))

    def batch(*parts: MutationBatch) -> MutationBatch:
        return MutationBatch.concat(list(parts))

    u, v = out_edge()  # update, then remove one of its out-edges
    yield batch(MutationBatch.update_features([u], _feats(rng, 1)), MutationBatch.remove_edges([u], [v]))
    u, v = out_edge()  # remove the edge first, then update
    yield batch(MutationBatch.remove_edges([u], [v]), MutationBatch.update_features([u], _feats(rng, 1)))
    u, _ = out_edge()  # update twice, then remove the vertex
    yield batch(
        MutationBatch.update_features([u], _feats(rng, 1)),
        MutationBatch.update_features([u], _feats(rng, 1)),
        MutationBatch.remove_vertices([u]),
    )
    u, v = out_edge()  # update, add an edge, remove another, update again (twice in one run too)
    w = some_vertex()
    yield batch(
        MutationBatch.update_features([u], _feats(rng, 1)),
        MutationBatch.add_edges([u], [w]),
        MutationBatch.remove_edges([u], [v]),
        MutationBatch.update_features([u, u], _feats(rng, 2)),
    )
    # several sources at once, one of them removed; a new vertex with edges, updated in the same batch
    us = np.unique([out_edge()[0] for _ in range(4)])
    new = int(eng.vertex_ids().max()) + 1000
    w = some_vertex()
    yield batch(
        MutationBatch.update_features(us, _feats(rng, len(us))),
        MutationBatch.add_vertices([new], _feats(rng, 1)),
        MutationBatch.add_edges([new, int(us[0]), new], [w, new, int(us[-1])]),
        MutationBatch.remove_vertices([int(us[-1])]),
        MutationBatch.update_features([new, int(us[0])], _feats(rng, 2)),
    )


@pytest.mark.parametrize("which", ["fused", "torch"])
@pytest.mark.parametrize("delta_cost", [0, None])  # 0: every layer takes the delta rule, never a recompute
@pytest.mark.parametrize("model", [*ALIASED, *NOT_ALIASED])
def test_feature_updates_with_edge_changes_in_one_batch_match_dgl(
    model: str, delta_cost: int | None, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if delta_cost is not None:
        monkeypatch.setattr("clustergnn.propagation.DELTA_COST", delta_cost)
    layers = ALIASED[model]() if model in ALIASED else build(model)
    rng = np.random.default_rng(1)
    with kernels(which):
        init, batches = random_stream(3, n_vertices=40, n_batches=4, batch_size=30, feature_dim=F_IN)
        eng = Engine.from_layers(layers, F_IN, capacity=16)
        eng.bulk_load(init)
        assert (eng.msg[0] is eng.h[0]) == (model in ALIASED)
        kept = [t is not None for t in eng.selfc]
        assert kept == [r.has_self_term and not r.self_term_at_finish for r in eng.rules]
        if model in ("sage-mean", "gin"):
            assert not kept[0]
        for b in batches:  # valid from the initial graph: first
            eng.apply(b)
            assert_matches_dgl(eng, layers)
        for b in _tricky_batches(eng, rng):
            eng.apply(b)
            assert_matches_dgl(eng, layers)
        assert (eng.msg[0] is eng.h[0]) == (model in ALIASED)  # also after the tables grew


@pytest.mark.parametrize("model", ["sage-mean", "gin-plain"])
def test_collaborative_and_khop_with_an_aliased_message(model: str) -> None:
    layers = ALIASED[model]()
    rng = np.random.default_rng(2)
    init, _ = random_stream(4, n_vertices=30, n_batches=0, batch_size=1, feature_dim=F_IN)
    for kw in ({"collaborative": True}, {"mode": "khop"}):
        eng = Engine.from_layers(layers, F_IN, capacity=16, **kw)
        eng.bulk_load(init)
        for b in _tricky_batches(eng, rng):
            eng.apply(b)
            assert_matches_dgl(eng, layers)


def test_a_single_aliased_layer_finished_on_read() -> None:
    """One GIN layer, collaborative: layer 0 is the deferred last layer (messages put, finished on read)."""
    layers = randomize([dglnn.GINConv(None, "sum", learn_eps=True)], 0)
    rng = np.random.default_rng(3)
    init, _ = random_stream(5, n_vertices=30, n_batches=0, batch_size=1, feature_dim=F_IN)
    eng = Engine.from_layers(layers, F_IN, capacity=16, collaborative=True)
    eng.bulk_load(init)
    assert eng.msg[0] is eng.h[0]
    for b in _tricky_batches(eng, rng):
        eng.apply(b)
        assert_matches_dgl(eng, layers)


def test_a_state_with_the_tables_no_longer_kept_is_read() -> None:
    """A state written before these cuts has ``msg0`` (= ``h0``) and ``selfc0``: it is read, and the
    restored engine goes on exactly like one restored from a state without them."""
    layers = build("sage-mean")
    init, batches = random_stream(6, n_vertices=30, n_batches=2, batch_size=20, feature_dim=F_IN)
    eng = Engine.from_layers(layers, F_IN, capacity=16)
    eng.bulk_load(init)
    arrays, meta = eng.export_state()
    assert "msg0" not in arrays and "selfc0" not in arrays and "selfc1" in arrays
    rules = eng.rules
    old = dict(arrays, msg0=arrays["h0"].copy(), selfc0=np.zeros((len(arrays["h0"]), 9), np.float32))
    a, b = Engine.from_state(rules, arrays, meta), Engine.from_state(rules, old, meta)
    for batch in batches:
        a.apply(batch)
        b.apply(batch)
        for name in ("h", "agg"):
            for ta, tb in zip(getattr(a, name), getattr(b, name), strict=True):
                assert ta is None or torch.equal(ta, tb)
    assert_matches_dgl(b, layers)
