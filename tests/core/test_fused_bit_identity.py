"""The fused CPU kernels against the plain torch path, cache by cache, after every batch.

Two engines take the same seeded random stream (vertex additions and removals, edge additions and
removals, feature updates), one with the fused kernels and one built and fed inside
``cpu_kernels.disabled()``.  What holds (``clustergnn/aggregate/sum.py`` and ``attention.py`` say why):

* bit-identical caches (``torch.equal`` on every ``h``, ``msg``, ``agg``, ``selfc``) when both engines
  apply the same structure edits (``fence_removals``: every batch goes run by run in both) and every
  fused step does the torch path's arithmetic: sum deltas (``sum_rows`` adds the terms in the order of
  the scattered adds), the ``SUM``/``MEAN``/bias-free ``RIGHT_NORM`` fused finishes, SAGE mean's
  gathered finish, and the max rule;
* within 1e-6 relative, not bit for bit: ``SYM_NORM`` (``torch.pow(d, -0.5)`` and the kernel's
  ``1 / sqrt(d)`` differ in the last bit for some degrees) and any GraphConv norm with a bias
  (``torch.addcmul`` is a fused multiply-add, the kernel rounds twice); SAGE gcn and GIN mean with an
  ``apply_func`` (the fused path rounds the float64 aggregate to float32 before the rule's division);
  GAT (the fused softmax normalises once at the end);
* within 1e-6 relative for every model when a batch's stretches mix edge additions and removals: the
  fused engine applies such a stretch as its net effect (``clustergnn.transaction``), which reorders
  the sums' terms and the adjacency blocks and drops edges added and removed again, where the torch
  engine goes run by run.

Once two rows differ in a bit, which rows propagate differs too, so the tolerance covers the caches
downstream of the first difference.
"""

from __future__ import annotations

import pytest
import torch

from clustergnn import Engine, cpu_kernels
from clustergnn._dgl import dglnn
from clustergnn.propagation import DELTA_COST
from tests.core.gen import random_stream
from tests.core.models import F_IN, build, randomize

pytestmark = pytest.mark.skipif(
    not cpu_kernels.enabled(), reason="no fused kernels (numba missing or CLUSTERGNN_KERNELS=torch)"
)

REL_TOL = 1e-6

# every fused step of these is the torch path's arithmetic
EXACT = {
    "sage-mean": lambda: build("sage-mean"),  # widening (gather_mean_self + addmm), then narrowing (MEAN)
    "sage-pool": lambda: build("sage-pool"),  # the max rule
    "gin-sum-mean-max": lambda: randomize(
        [  # fused SUM and MEAN finishes, then the max rule
            dglnn.GINConv(None, "sum", learn_eps=True),
            dglnn.GINConv(None, "mean", init_eps=0.2),
            dglnn.GINConv(None, "max", init_eps=0.1),
        ],
        seed=0,
    ),
    "graphconv-right": lambda: randomize(
        [  # RIGHT_NORM without a bias; SUM + bias; weight after the sum
            dglnn.GraphConv(F_IN, 4, norm="right", bias=False),
            dglnn.GraphConv(4, 4, norm="none"),
            dglnn.GraphConv(4, 7, norm="right"),
        ],
        seed=0,
    ),
}
# fused and torch round differently here (see the module docstring)
CLOSE = {
    "graphconv-both": lambda: build("graphconv-both"),  # SYM_NORM: pow(d, -0.5) vs 1 / sqrt(d); addcmul's FMA
    "graphconv-right-bias": lambda: randomize([dglnn.GraphConv(F_IN, 4, norm="right")], seed=0),  # FMA
    "sage-gcn": lambda: build("sage-gcn"),  # aggregate rounded to float32 before the division
    "gin": lambda: build("gin"),  # GIN mean with apply_func: the same
    "gat": lambda: build("gat"),  # softmax normalised once at the end
}


def caches(eng: Engine) -> dict[str, torch.Tensor]:
    return {
        f"{name}[{li}]": t
        for name in ("h", "msg", "agg", "selfc")
        for li, t in enumerate(getattr(eng, name))
        if t is not None
    }


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    return float((got.double() - ref.double()).abs().max() / max(1.0, float(ref.abs().max())))


def run_both(layers: list[torch.nn.Module], fence_removals: bool, check) -> None:
    """Feed both engines the same stream (small batches: the delta paths; larger ones: recomputation) and
    ``check(batch index, fused caches, torch caches)`` after every batch."""
    for batch_size, seed in ((3, 11), (24, 12)):
        init, batches = random_stream(
            seed=seed,
            n_vertices=50,
            n_batches=8,
            batch_size=batch_size,
            feature_dim=F_IN,
            fence_removals=fence_removals,
        )
        fused = Engine.from_layers(layers, F_IN)
        assert fused.fused
        fused.bulk_load(init)
        with cpu_kernels.disabled():
            plain = Engine.from_layers(layers, F_IN)
            assert not plain.fused
            plain.bulk_load(init)
        for i, batch in enumerate(batches):
            fused.apply(batch)
            with cpu_kernels.disabled():
                plain.apply(batch)
            got, want = caches(fused), caches(plain)
            assert got.keys() == want.keys()
            check(f"batch size {batch_size}, batch {i}", got, want)


@pytest.fixture(params=[DELTA_COST, 0], ids=["natural", "delta-only"])
def delta_cost(request, monkeypatch) -> int:
    """``0`` makes every sum and max layer take its incremental update, never a recompute of its rows."""
    import clustergnn.propagation as propagation_mod

    monkeypatch.setattr(propagation_mod, "DELTA_COST", request.param)
    return request.param


@pytest.mark.parametrize("model", sorted(EXACT))
def test_fused_caches_are_bit_identical(model: str, delta_cost: int) -> None:
    def check(where: str, got: dict, want: dict) -> None:
        for name in want:
            assert torch.equal(got[name], want[name]), (
                f"{model}, {where}: {name} differs (relative {rel_error(got[name], want[name]):.1e})"
            )

    run_both(EXACT[model](), fence_removals=True, check=check)


@pytest.mark.parametrize("model", sorted(CLOSE))
def test_fused_caches_round_differently_within_tolerance(model: str, delta_cost: int) -> None:
    def check(where: str, got: dict, want: dict) -> None:
        for name in want:
            err = rel_error(got[name], want[name])
            assert err <= REL_TOL, f"{model}, {where}: {name} relative error {err:.1e} > {REL_TOL}"

    run_both(CLOSE[model](), fence_removals=True, check=check)


@pytest.mark.parametrize("model", sorted(EXACT) + sorted(CLOSE))
def test_net_effect_stretches_stay_within_tolerance(model: str) -> None:
    layers = {**EXACT, **CLOSE}[model]()

    def check(where: str, got: dict, want: dict) -> None:
        for name in want:
            err = rel_error(got[name], want[name])
            assert err <= REL_TOL, f"{model}, {where}: {name} relative error {err:.1e} > {REL_TOL}"

    run_both(layers, fence_removals=False, check=check)


def test_drift_refreshes_are_bit_identical(monkeypatch) -> None:
    """A drifting float32 sum's refresh (``Propagation._budget_drift``): the fused path reads the rows'
    in-edges straight from the blocks (``sum.refresh_rows``), the torch path recomputes them with a CSR
    product; at widths where that product adds a row's terms in order (``refresh_is_recompute``) the two
    agree bit for bit.  The budgets are cut to one rounding so that rows are refreshed all the time."""
    import clustergnn.propagation as propagation_mod
    from clustergnn.aggregate import sum as sum_family

    monkeypatch.setattr(propagation_mod, "DRIFT_MIN", 1)
    monkeypatch.setattr(propagation_mod, "DRIFT_MAX", 1)
    refreshed = []
    kernel = sum_family.refresh_rows
    monkeypatch.setattr(sum_family, "refresh_rows", lambda *a: (refreshed.append(len(a[2])), kernel(*a))[1])
    layers = randomize([dglnn.SAGEConv(F_IN, 7, "mean"), dglnn.SAGEConv(7, 5, "mean")], seed=3)
    assert sum_family.refresh_is_recompute(torch.zeros(1, 7), 10)  # (so the fused path takes the kernel)

    def check(where: str, got: dict, want: dict) -> None:
        for name in want:
            assert torch.equal(got[name], want[name]), (
                f"{where}: {name} differs (relative {rel_error(got[name], want[name]):.1e})"
            )

    run_both(layers, fence_removals=True, check=check)
    assert sum(refreshed) > 0, "no row was refreshed: the test did not reach the kernel"


@pytest.mark.parametrize("d", [1, 3, 4, 7, 8, 16, 47, 128])
def test_refresh_is_recompute_only_where_it_is(d: int) -> None:
    """``refresh_rows`` on random blocks (with slack between them) is the in-order float32 sum of each row's
    terms, widened where the table is float64, and equals ``recompute`` bit for bit wherever
    ``refresh_is_recompute`` says so (at some widths torch's CSR product adds in another order: there
    the fused path keeps the product)."""
    import numpy as np

    from clustergnn.aggregate import sum as sum_family
    from clustergnn.kernels import EdgeIndex

    rng = np.random.default_rng(d)
    n = 300
    msg = (rng.standard_normal((n, d)) * 10.0 ** rng.integers(-3, 4, (n, 1))).astype(np.float32)
    length = rng.integers(0, 50, n).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(length + 3)[:-1]]).astype(np.int64)  # blocks with slack
    pool = rng.integers(0, n, int(start[-1] + length[-1] + 3)).astype(np.int32)
    slots = rng.permutation(n)[:120].astype(np.int64)
    trows = rng.permutation(n)[:120].astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(length[slots])]).astype(np.int64)
    src = np.concatenate([pool[start[s] : start[s] + length[s]] for s in slots]).astype(np.int64)
    want = sum_family.recompute(torch.from_numpy(msg), EdgeIndex(torch.from_numpy(src), torch.from_numpy(indptr)))
    in_order = np.zeros((len(slots), d), dtype=np.float32)  # each term added to a float32 sum, in block order
    for i in range(len(slots)):
        for e in range(indptr[i], indptr[i + 1]):
            in_order[i] += msg[src[e]]
    for dtype in (np.float32, np.float64):
        agg = np.full((n, d), np.nan, dtype=dtype)
        sum_family.refresh_rows(agg, msg, slots, trows, start, length, pool)
        assert np.array_equal(agg[trows], in_order.astype(dtype)), f"width {d}: not the in-order float32 sums"
        if sum_family.refresh_is_recompute(torch.from_numpy(msg), len(src)):
            assert np.array_equal(agg[trows], want.numpy().astype(dtype)), f"width {d}: differs from recompute"
