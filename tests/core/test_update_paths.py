"""The update paths chosen where fan-out or width is large (docs/engine.md, "Updates where fan-out or
width is large"): the fused sum delta by pull (``aggregate.sum.update_pulled``) and SAGE mean's square
layers past the first, which multiply before the sum.

* Forced on every sum layer and batch (its costs set to 0), the pull leaves every cache within 1e-6
  relative of the plain torch path's (it adds a row's terms in in-edge order, so not bit for bit), and the
  outputs within tolerance of DGL's forward; the step counters show that it ran.  Reading the affected
  rows from the out-blocks and then pushing leaves every cache bit-identical to the torch path's.
* The pull kernel itself: a row's terms whatever the order of its in-edges, and (``PULL_DM_F32``, on by
  default) the float32 deltas' rounding added to the row's drift budget; a long in-block (several scan
  windows, hits added four at a time and the one to three left) over wide rows sums every term.
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
from tests.core.test_fused_bit_identity import EXACT, REL_TOL, caches, rel_error

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
def test_forced_paths_match_the_torch_path(model: str, force_pull: str, monkeypatch) -> None:
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
                    where = f"{model}, batch size {batch_size}, batch {i}: {name}"
                    if force_pull == "pull":  # another order of the float64 additions
                        assert rel_error(got[name], want[name]) <= REL_TOL, where
                    else:
                        assert torch.equal(got[name], want[name]), (
                            f"{where} differs (relative {rel_error(got[name], want[name]):.1e})"
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


def _pull(srcs, m_new, msg, in_pool, agg0, dm_dtype, drift=None):
    """``pull_rows`` on vertex 3 of a 4-vertex graph whose in-block is ``in_pool``; returns the row's
    float32 aggregate (a 1-wide float32 sum) and its drift budget."""
    import numpy as np

    from clustergnn.aggregate.sum import _MEAN, _NO_BUDGET, _aligned_rows, pull_rows

    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    none = i64()
    agg, h = np.full((4, 1), agg0, np.float32), np.zeros((4, 1), np.float32)
    posmap, changed = np.full(4, -1, dtype=np.int64), np.zeros(1, dtype=bool)
    d = np.zeros(4, np.float32)
    budget = _NO_BUDGET if drift is None else (d, 1024, 1024, 2.0**-24, np.zeros(1, dtype=bool))
    pull_rows(
        agg, msg.copy(), i64(3), none, none, none, none, srcs, m_new,
        i64(0, 0, 0, 0), i64(0, 0, 0, len(in_pool)), np.array(in_pool, dtype=np.int32),
        posmap, True, h, i64(len(in_pool)), _MEAN, np.zeros((0, 0), np.float32), np.zeros(0, np.float32),
        False, changed, _aligned_rows(len(srcs), 1, dm_dtype), *budget,
    )  # fmt: skip
    assert (posmap == -1).all()
    return float(agg[3, 0]), float(d[3])


@needs_kernels
def test_pull_finds_a_rows_terms_in_any_in_edge_order() -> None:
    """Every changed source among a row's in-edges adds its delta once per in-edge (a multi-edge
    twice), sources that did not change add nothing, whatever the order of the in-block."""
    import numpy as np

    srcs = np.array([0, 2], dtype=np.int64)
    m_new = np.array([[3.0], [10.0]], dtype=np.float32)
    msg = np.array([[1.0], [5.0], [2.0], [0.0]], dtype=np.float32)
    for block in ([0, 1, 2], [2, 1, 0], [2, 0, 2, 1]):
        want = 7.0 + sum({0: 2.0, 2: 8.0}.get(u, 0.0) for u in block)
        for dt in (np.float32, np.float64):
            assert _pull(srcs, m_new, msg, block, 7.0, dt)[0] == want


@needs_kernels
@pytest.mark.parametrize("n_in", [1, 3, 4, 7, 1301])  # 1301: three scan windows, a remainder of hits
def test_pull_sums_every_term_of_a_long_in_block(n_in: int) -> None:
    """Rows 5 wide (deltas padded to whole lines), sources drawn with repeats from 40 vertices of which
    17 changed: each row's float64 sum, rounded once, is the exact sum of its terms within one float32
    rounding plus (float32 deltas) the rounding of each term, which the drift budget covers."""
    import numpy as np

    from clustergnn.aggregate.sum import _MEAN, _aligned_rows, pull_rows

    rng = np.random.default_rng(n_in)
    nv, d = 41, 5
    msg = rng.standard_normal((nv, d)).astype(np.float32)
    srcs = np.sort(rng.choice(nv - 1, 17, replace=False)).astype(np.int64)
    m_new = rng.standard_normal((17, d)).astype(np.float32)
    m_new[::3] = msg[srcs[::3]] * np.float32(1.0 + 2.0**-20)  # small deltas (exact in float32 or not)
    block = rng.integers(0, nv - 1, n_in).astype(np.int32)
    dmap = {int(u): m_new[j].astype(np.float64) - msg[u].astype(np.float64) for j, u in enumerate(srcs)}
    agg0 = rng.standard_normal(d).astype(np.float32)
    exact = agg0.astype(np.float64) + sum((dmap.get(int(u), np.zeros(d)) for u in block), np.zeros(d))
    r = nv - 1  # the row: the last vertex, whose in-block is ``block``
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    for dt in (np.float32, np.float64):
        agg = np.zeros((nv, d), np.float32)
        agg[r] = agg0
        drift = np.zeros(nv, np.float32)
        start, length = np.zeros(nv, np.int64), np.zeros(nv, np.int64)
        length[r] = n_in
        pull_rows(
            agg, msg.copy(), i64(r), i64(), i64(), i64(), i64(), srcs, m_new, start, length, block,
            np.full(nv, -1, np.int64), False, np.zeros((0, 0), np.float32), i64(n_in), _MEAN,
            np.zeros((0, 0), np.float32), np.zeros(0, np.float32), False, np.zeros(1, bool),
            _aligned_rows(len(srcs), d, dt), drift, 1 << 20, 1 << 20, 2.0**-24, np.zeros(1, bool),
        )  # fmt: skip
        got = agg[r].astype(np.float64)
        own = np.abs(got).max() * 2.0**-24  # the row's one rounding, at its size
        assert drift[r] >= own * (1 - 1e-6)
        assert np.abs(got - exact).max() <= drift[r] * (1 + 1e-6)
        if dt is np.float64:  # exact deltas: the sum is the exact one rounded once (to float64 rounding)
            assert np.abs(got - exact).max() <= own * (1 + 1e-6)
        else:  # the float32 deltas' rounding budgeted where a term could not be held
            errs = [np.abs(dmap[int(u)].astype(np.float32) - dmap[int(u)]).max() for u in block if int(u) in dmap]
            assert drift[r] >= own + sum(errs) * (1 - 1e-6) - 1e-30


@needs_kernels
def test_pull_budgets_its_float32_deltas() -> None:
    """A delta that float32 cannot hold (1 + 2^-20 - 2^-30 needs 31 bits) is rounded once, and that
    rounding is added to the row's drift budget on top of the row's own; in float64 it is exact and
    the budget is the row's rounding alone."""
    import numpy as np

    srcs = np.array([0], dtype=np.int64)
    m_new = np.array([[1.0 + 2.0**-20]], dtype=np.float32)
    msg = np.array([[2.0**-30], [0.0], [0.0], [0.0]], dtype=np.float32)
    exact = 1.0 + 2.0**-20 - 2.0**-30
    v32, b32 = _pull(srcs, m_new, msg, [0], 0.0, np.float32, drift=True)
    v64, b64 = _pull(srcs, m_new, msg, [0], 0.0, np.float64, drift=True)
    own = float(np.float32(v64)) * 2.0**-24  # the row's one rounding, at its size
    assert b64 == pytest.approx(own, rel=1e-6)
    assert b32 >= own + abs(float(np.float32(exact)) - exact) * (1 - 1e-6)
    assert abs(v32 - exact) <= b32 and abs(v64 - exact) <= b64


@needs_kernels
@pytest.mark.parametrize("per_owner", [3, 400])  # below and above _NEIGHBOURS_PARALLEL neighbours in all
def test_affected_rows_from_the_blocks_are_every_live_neighbour(per_owner: int) -> None:
    """``unique_live_neighbours`` (the affected rows of a large batch, read from the out-blocks): the
    sorted distinct live values and neighbours, serial for few neighbours, per-thread bitmaps for many."""
    import numpy as np

    rng = np.random.default_rng(5)
    n, owners_n = 5000, 300
    length = np.zeros(n, dtype=np.int64)
    length[:owners_n] = rng.integers(0, 2 * per_owner, owners_n)
    start = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)
    pool = rng.integers(0, n, int(length.sum())).astype(np.int32)
    live = rng.random(n) < 0.9
    owners = rng.choice(owners_n, 200, replace=False).astype(np.int64)
    values = rng.integers(0, n, 50).astype(np.int64)
    bits = np.zeros(n // 64 + 1, dtype=np.uint64)
    got = cpu_kernels.unique_live_neighbours(values, start, length, pool, owners, live, bits)
    nbrs = np.concatenate([pool[start[u] : start[u] + length[u]] for u in owners]).astype(np.int64)
    want = np.unique(np.concatenate([values, nbrs]))
    assert np.array_equal(got, want[live[want]])
    assert not bits.any()  # left all zero for the next call


@needs_kernels
def test_abs_max_row_is_the_branchy_max_bit_for_bit() -> None:
    """``cpu_kernels.abs_max_row`` (an unsigned max of the bits, vectorised) against the loop it replaces in
    the drift budget, ``big = |x| if |x| > big``, from 0: NaNs skipped, -0 as 0, infinities, subnormals,
    every magnitude float32 has."""
    import numpy as np

    rng = np.random.default_rng(5)
    for case in range(600):
        a = (rng.standard_normal((3, int(rng.integers(1, 200)))) * 10.0 ** rng.integers(-45, 38)).astype(np.float32)
        row = a[1]
        if case % 3 == 0:
            row[rng.integers(0, len(row), 2)] = np.nan
        if case % 5 == 0:
            row[rng.integers(0, len(row))] = -np.inf
        if case % 7 == 0:
            row[:] = -0.0
        if case % 11 == 0:
            row[:] = np.nan
        big = np.float32(0.0)
        for x in row:
            if abs(x) > big:
                big = abs(x)
        got = cpu_kernels.abs_max_row(a, 1)
        assert np.float32(got).tobytes() == big.tobytes(), (case, got, big)


@needs_kernels
def test_images_changed_serial_and_parallel_agree() -> None:
    """``_store_images``' test, on one core and on both (a wide batch's rows): a row changed where an entry
    of its message or its self term differs (by one ulp, by 1.0), and only there; a -0 against a 0 is no
    change (they are equal, as the torch path's ``!=`` says too)."""
    import numpy as np

    from clustergnn.aggregate import sum as sum_family

    rng = np.random.default_rng(2)
    n, d, ds = 5000, 128, 47
    msg = rng.standard_normal((n, d)).astype(np.float32)
    selfc = rng.standard_normal((n, ds)).astype(np.float32)
    rows = rng.permutation(n)[:1500].astype(np.int64)
    m, s = msg[rows].copy(), selfc[rows].copy()
    want = rng.random(len(rows)) < 0.3
    for i in np.flatnonzero(want):
        if i % 3 == 0:
            s[i, rng.integers(ds)] = np.nextafter(s[i, 0], np.float32(np.inf))
        elif i % 3 == 1:
            m[i, rng.integers(d)] += np.float32(1.0)
        else:
            msg[rows[i], 5] = np.float32(0.0)
            m[i, 5] = np.float32(-0.0)  # equal as floats: != does not see it
            want[i] = False
    for kernel in (sum_family.images_changed, sum_family.images_changed_parallel):
        got = np.zeros(len(rows), dtype=bool)
        kernel(msg, selfc, rows, m, s, got)
        assert np.array_equal(got, want), kernel


def test_members_is_isin_for_row_sets() -> None:
    import numpy as np

    from clustergnn.graph import members

    rng = np.random.default_rng(4)
    for case in range(500):
        values = np.unique(rng.integers(0, 60, int(rng.integers(0, 40))))
        if case % 4 == 0:
            values = rng.permutation(values)  # not sorted: np.isin's answer all the same
        probe = rng.integers(-5, 70, int(rng.integers(0, 25)))
        assert np.array_equal(members(values, probe), np.isin(values, probe)), (values, probe)
