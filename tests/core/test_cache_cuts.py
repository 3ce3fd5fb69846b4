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


def _exact_sums(eng: Engine, li: int, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``li``'s sums of ``rows`` over their in-edges in float64 (exact for these few terms), and a
    float32 recompute's own rounding bound, ``(indeg + 1) u sum |m_u|``, per row."""
    msg = eng.msg[li].double()
    exact, slack = [], []
    for r in rows:
        src = eng.graph.inn.gather_csr(np.array([r]))[1]
        m = msg[torch.from_numpy(src.astype(np.int64))]
        exact.append(m.sum(0))
        slack.append((len(src) + 1) * 2.0**-24 * float(m.abs().amax(1).sum()))
    return torch.stack(exact), torch.tensor(slack, dtype=torch.float64)


@pytest.mark.parametrize("which", ["fused", "torch"])
@pytest.mark.parametrize("refresh", [True, False])
@pytest.mark.parametrize("model", ["sage-mean", "graphconv-none"])
def test_float32_sums_stay_within_their_drift_bound(
    model: str, refresh: bool, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long stream of +/- deltas on the same rows: an edge from a source with 10^4-sized features is
    added to and removed from four rows, over and over (each add rounds those float32 sums to 10^4's
    ulp).  With the refresh, every row stays within its budget of the exact sum and the engine matches
    DGL; without it (``DRIFT_MIN``/``DRIFT_MAX`` huge) the rounding stays in the sums and the final embeddings
    are off by more than the tolerance, so this test can fail."""
    from clustergnn.reference import dgl_forward
    from tests.core.test_engine_exact import REL_TOL, rel_error

    monkeypatch.setattr("clustergnn.propagation.DELTA_COST", 0)  # the delta rule always (a recompute resets rows)
    if not refresh:
        monkeypatch.setattr("clustergnn.propagation.DRIFT_MIN", 2**62)
        monkeypatch.setattr("clustergnn.propagation.DRIFT_MAX", 2**62)
    layers = ALIASED[model]() if model in ALIASED else build(model)
    rng = np.random.default_rng(11)
    n, big, targets = 24, 0, np.array([5, 6, 7, 8])
    feats = rng.standard_normal((n, F_IN)).astype(np.float32)
    feats[big] *= 1e4
    src = rng.integers(1, n, 120)
    dst = rng.integers(1, n, 120)
    with kernels(which):
        eng = Engine.from_layers(layers, F_IN, capacity=16)
        eng.bulk_load(
            MutationBatch.concat(
                [MutationBatch.add_vertices(np.arange(n), torch.from_numpy(feats)), MutationBatch.add_edges(src, dst)]
            )
        )
        assert all(a is None or a.dtype == torch.float32 for a in eng.agg)
        assert [d is not None for d in eng.drift] == [a is not None for a in eng.agg]
        slots = eng.graph.slots_of(targets)
        for i in range(150):
            eng.apply(MutationBatch.add_edges(np.full(4, big), targets))
            eng.apply(MutationBatch.remove_edges(np.full(4, big), targets))
            if refresh and i % 25 == 0:  # layer 0's messages are the features: the bound, row by row
                exact, slack = _exact_sums(eng, 0, slots)
                err = (eng.agg[0][torch.from_numpy(slots)].double() - exact).abs().amax(1)
                assert (err <= eng.drift[0][torch.from_numpy(slots)].double() + slack).all(), (i, err)
        eng.apply(MutationBatch.remove_vertices([big]))  # DGL's outputs are then all small
        g, x, ids = eng.to_dgl()
        refs = dgl_forward(layers, g, x)
        err = max(rel_error(eng.embeddings(ids, layer=li), ref) for li, ref in enumerate(refs))
    if refresh:
        assert err <= REL_TOL, err
    else:
        assert err > REL_TOL, f"the stream did not drift without the refresh ({err:.2e}): it tests nothing"


def test_hidden_layer_kept_as_its_images_and_read_back() -> None:
    """A narrowing SAGE mean keeps its input only as ``msg`` and ``selfc``: ``h[1]`` is not kept, reads of
    layer 1 finish layer 0 again; its output ``h[2]`` is finished on read; and a state written with ``h1``,
    ``h2`` and float64 sums (no ``drift``) is read."""
    layers = build("sage-mean")  # 6 -> 9 -> 4: layer 1 narrows
    init, batches = random_stream(8, n_vertices=30, n_batches=6, batch_size=20, feature_dim=F_IN)
    eng = Engine.from_layers(layers, F_IN, capacity=16)
    eng.bulk_load(init)
    assert eng.h[1] is None and eng.h[2] is None and eng.h[0] is not None  # h2 is finished on read
    assert all(a.dtype == torch.float32 for a in eng.agg)
    arrays, meta = eng.export_state()
    assert "h1" not in arrays and {"drift0", "drift1"} <= set(arrays)
    ids = eng.graph.ext_of[arrays["slots"]]
    old = {k: v for k, v in arrays.items() if not k.startswith("drift")}
    old |= {f"agg{li}": arrays[f"agg{li}"].astype(np.float64) for li in range(2)}
    old["h1"] = eng.embeddings(ids, layer=1).numpy()
    old["h2"] = eng.embeddings(ids, layer=2).numpy()
    restored = Engine.from_state(eng.rules, old, meta)
    assert restored.h[1] is None and all(a.dtype == torch.float32 for a in restored.agg)
    for li in range(2):  # the float64 rows rounded once, their budget that rounding's bound
        big = restored.agg[li].abs().amax(dim=1)
        assert torch.equal(restored.drift[li], big * 2.0**-24)
    for batch in batches:
        restored.apply(batch)
        assert_matches_dgl(restored, layers)
    full = Engine.from_layers(layers, F_IN, capacity=16, mode="full")  # a full engine keeps every h
    full.bulk_load(init)
    assert all(h is not None for h in full.h)
