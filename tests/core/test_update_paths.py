"""The update paths chosen where fan-out or width is large (docs/engine.md, "Updates where fan-out or
width is large"): the fused sum delta by pull (``aggregate.sum.update_pulled``) and SAGE mean's square
layers past the first, which multiply before the sum.

* Forced on every sum layer (its costs set to 0), the pull leaves every cache bit-identical to the
  plain torch path's scattered adds, as the push kernel does (``test_fused_bit_identity.py``), and the
  outputs within tolerance of DGL's forward; the step counters show that it ran.
* A model with square SAGE-mean layers (8 -> 8 -> 8 -> 5) matches DGL's forward, fused and plain, with
  the message of every layer past the first premultiplied (and so a self-term table there).
"""

from __future__ import annotations

import pytest
import torch

import clustergnn.engine as engine_mod
import clustergnn.propagation as propagation_mod
from clustergnn import Engine, MutationBatch, cpu_kernels, steptimes
from clustergnn._dgl import dglnn
from tests.core.gen import random_stream
from tests.core.models import F_IN, randomize
from tests.core.test_engine_exact import assert_matches_dgl
from tests.core.test_fused_bit_identity import EXACT, caches, rel_error

needs_kernels = pytest.mark.skipif(not cpu_kernels.enabled(), reason="no fused kernels")


def square_sage() -> list[torch.nn.Module]:
    return randomize(
        [dglnn.SAGEConv(F_IN, 8, "mean"), dglnn.SAGEConv(8, 8, "mean"), dglnn.SAGEConv(8, 5, "mean")], seed=1
    )


@pytest.fixture(params=["pull", "push-rows-from-blocks"])
def force_pull(request, monkeypatch) -> str:
    """``pull``: every fused sum layer takes the pull (never the push delta nor a recompute of its
    rows); ``push-rows-from-blocks``: the affected rows are read from the out-blocks (as for a large
    batch), then the push delta runs after all.  The plain torch engine takes its delta
    (``DELTA_COST = 0``), so that both add the same terms."""
    monkeypatch.setattr(propagation_mod, "DELTA_COST", 0)
    monkeypatch.setattr(propagation_mod, "PULL_MIN_TERMS", 0)
    monkeypatch.setattr(propagation_mod, "PULL_DELTA", request.param == "pull")
    cost = 0.0 if request.param == "pull" else float("inf")
    monkeypatch.setattr(propagation_mod, "PULL_SCAN_COST", cost)
    monkeypatch.setattr(propagation_mod, "PULL_HIT_COST", cost)
    return request.param


def stream(fence_removals: bool, batch_size: int, seed: int):
    return random_stream(
        seed=seed, n_vertices=50, n_batches=8, batch_size=batch_size, feature_dim=F_IN, fence_removals=fence_removals
    )


@needs_kernels
@pytest.mark.parametrize("model", ["sage-mean", "gin-sum-mean-max", "graphconv-right", "square-sage"])
def test_pull_is_bit_identical_to_the_torch_path(model: str, force_pull: str, monkeypatch) -> None:
    # the pull finishes and stores the rows it updates: only where a layer keeps its output
    monkeypatch.setattr(engine_mod, "DROP_DERIVED_OUTPUTS", False)
    layers = square_sage() if model == "square-sage" else EXACT[model]()
    steptimes.enable()
    steptimes.reset()
    try:
        for batch_size, seed in ((3, 11), (24, 12)):
            init, batches = stream(True, batch_size, seed)
            fused = Engine.from_layers(layers, F_IN)
            fused.bulk_load(init)
            with cpu_kernels.disabled():
                plain = Engine.from_layers(layers, F_IN)
                plain.bulk_load(init)
            for i, batch in enumerate(batches):
                fused.apply(batch)
                with cpu_kernels.disabled():
                    plain.apply(batch)
                got, want = caches(fused), caches(plain)
                for name in want:
                    assert torch.equal(got[name], want[name]), (
                        f"{model}, batch size {batch_size}, batch {i}: {name} differs "
                        f"(relative {rel_error(got[name], want[name]):.1e})"
                    )
            assert_matches_dgl(fused, layers)
        pulled = sum(v for k, v in steptimes.counts().items() if k.endswith("pulled_rows"))
        assert (pulled > 0) == (force_pull == "pull"), f"pulled rows: {pulled}"
    finally:
        steptimes.enable(False)


@needs_kernels
def test_pull_with_net_effect_stretches_matches_dgl(force_pull: str) -> None:
    layers = EXACT["sage-mean"]()
    init, batches = stream(False, 24, 13)
    eng = Engine.from_layers(layers, F_IN)
    eng.bulk_load(init)
    for batch in batches:
        eng.apply(batch)
        assert_matches_dgl(eng, layers)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "torch"])
def test_square_sage_layers_premultiply_past_the_first(fused: bool) -> None:
    if fused and not cpu_kernels.enabled():
        pytest.skip("no fused kernels")
    layers = square_sage()
    ctx = cpu_kernels.disabled() if not fused else torch.no_grad()
    with ctx:
        eng = Engine.from_layers(layers, F_IN)
        assert [getattr(r, "lin_before", None) for r in eng.rules] == [False, True, True]
        assert eng.selfc[0] is None and eng.selfc[1] is not None
        init, batches = stream(True, 24, 14)
        eng.bulk_load(init)
        for batch in batches:
            eng.apply(batch)
            assert_matches_dgl(eng, layers)
        eng.apply(MutationBatch.add_edges(eng.vertex_ids()[:5], eng.vertex_ids()[5:10]))
        assert_matches_dgl(eng, layers)


@needs_kernels
def test_pull_adds_a_rows_terms_in_source_order() -> None:
    """Where the order of the terms changes the float64 sum (1e30 + 1 - 1e30), the pull adds them in the
    push kernel's order (sources in ``srcs`` order), whatever the order of the row's in-edges."""
    import numpy as np

    from clustergnn.aggregate.sum import _MEAN, _NO_BUDGET, pull_rows, sum_rows

    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    none = i64()
    srcs = i64(0, 1, 2)
    m_new = np.array([[1e30], [1.0], [-1e30]], dtype=np.float32)
    rows, deg = i64(3), i64(3)
    out = {}
    for name in ("push", "pull"):
        agg, msg, h = np.zeros((4, 1)), np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32)
        posmap, changed = np.full(4, -1, dtype=np.int64), np.zeros(1, dtype=bool)
        common = (agg, msg, rows, none, none, none, none, srcs, m_new)
        tail = (posmap, True, h, deg, _MEAN, np.zeros((0, 0), np.float32), np.zeros(0, np.float32), False, changed)
        if name == "push":  # vertex 3's in-edges come from 0, 1, 2 (out-blocks of the sources)
            sum_rows(*common, i64(0, 1, 2, 3), i64(3, 3, 3), *tail, *_NO_BUDGET)
        else:  # in-block of 3 in another order: 2, 0, 1
            pull_rows(*common, i64(0, 0, 0, 0), i64(0, 0, 0, 3), np.array([2, 0, 1], dtype=np.int32), *tail)
        out[name] = agg[3, 0]
    assert out["push"] == 0.0  # (1e30 + 1) - 1e30 in float64
    assert out["pull"] == out["push"]
