"""The sum family: SAGE mean/gcn, GraphConv (every norm), GIN sum/mean.

STAG's additivity (https://arxiv.org/abs/2309.15875).  With ``S`` the vertices whose message changed,
``E+``/``E-`` the edges added/removed by the batch and ``G'`` the new graph,

    a'_v = a_v + sum_{(u,v) in G', u in S} (m'_u - m_u) + sum_{(u,v) in E+} m_u - sum_{(u,v) in E-} m_u

where ``m`` is the message before the batch (0 for new vertices).  Shapes: the aggregate table
``a`` is ``(capacity, msg_dim)`` **float64**; messages ``m`` are ``(capacity, msg_dim)`` float32.

Why it is exact: the identity holds for multisets, so an edge added and removed in one batch, a
multi-edge, or a vertex removed and re-added need no "net change"; only rounding differs from a
recompute, and ``m'_u - m_u`` of two float32 values is exact in float64, so a float64 aggregate drifts
orders of magnitude below fp32 tolerance after millions of deltas.  A from-scratch recompute
(:func:`recompute`) is a float32 segment sum, as DGL sums.

Variants of the same update, chosen by the engine per layer and batch:

* :func:`update` (torch, CPU and CUDA): three scattered adds (``index_add_``: ``E+``, then ``E-``, then
  the changed messages), or above :data:`SEGMENT_DELTA_MIN` contributions one destination-sorted
  segment sum plus one add per affected row.
* :func:`update_fused` (numba ``sum_rows``, CPU): the terms bucketed by row with a counting sort and
  added in the order the scattered adds add them, so the float64 aggregate is bit-identical to
  :func:`update`'s scattered adds (not to its segmented variant, which sums in another order); where
  the rule's finish has no matmul (:class:`FusedFinish`), the row is finished while it is in cache.
* :func:`update_pulled` (numba ``pull_rows``, CPU, single engines): the same terms found from the other
  side, each affected row scanning its in-edges for changed sources, for batches whose terms are a
  large share of the affected rows' in-edges.  A row's terms are added in in-edge order, four at a
  time (not bit-identical to the push: another order of float64 additions before the one rounding);
  the changed messages' deltas are float64 differences rounded once to float32, their rounding added
  to the row's drift budget (``PULL_DM_F32``, on; off: float64 deltas, as the push's).
* :func:`finish_gathered` (numba ``gather_mean_self`` or ``gather_mean`` + one ``addmm``): SAGE mean's
  widening finish.

Finish (the rule's ``finish``, or fused: :class:`~clustergnn.aggregate.base.FinishKind`).  What the
fused finish gives compared to the torch finish, per kind (``tests/core/test_fused_bit_identity.py``
checks each): ``SUM``, ``MEAN`` and ``RIGHT_NORM`` without a bias are bit-identical.  ``SYM_NORM``'s
scale ``1 / sqrt(d)`` and torch's ``pow(d, -0.5)`` differ in the last bit for some degrees, and with a
bias torch's ``addcmul(bias, a, c)`` is a fused multiply-add (one rounding) where the kernel rounds
the product, then the sum.  A sum rule without a fused finish (SAGE gcn, GIN with ``apply_func``,
GraphConv with the weight after the sum) gets its aggregate rows through :func:`gather_f32_rows`,
rounded to float32 before the rule's finish, where the torch path hands it float64 rows: SAGE gcn's
and GIN mean's divisions then round twice.  Each of these is 1 ulp at times, far below the
exactness tolerance; once a row differs, which rows propagate may differ too.

Example::

    edges = EdgeIndex.from_counts(src, counts)         # in-edges of n rows
    a = recompute(msg, edges)                          # (n, msg_dim) float32
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from clustergnn import cpu_kernels, steptimes
from clustergnn.aggregate.base import DeltaStep, FinishKind
from clustergnn.caches import LayerTables, Scratch, gather_rows, put_rows
from clustergnn.graph import argsort_stable
from clustergnn.kernels import DGL_MIN_EDGES, EdgeIndex, segment_sum

if TYPE_CHECKING:  # rules.py imports this module
    from clustergnn.rules import LayerRule

SEGMENT_DELTA_MIN = 32768  # contributions above which torch sum deltas go through a segment sum, not scattered adds
# finish kinds inside the kernels: numba freezes these module-level ints as constants
_SUM, _MEAN, _SYM_NORM = int(FinishKind.SUM), int(FinishKind.MEAN), int(FinishKind.SYM_NORM)
_NO_ROWS = np.zeros((0, 0), dtype=np.float32)  # "no self term" for the fused kernels
_NO_BIAS = np.zeros(0, dtype=np.float32)
_NO_BUDGET = (np.zeros(0, dtype=np.float32), 0, 0, 0.0, np.zeros(0, dtype=bool))  # sum_rows: no drift budget
_PULL_CHUNKS = 256  # chunks of about equal work in pull_rows' parallel loop (one accumulator each)
_PULL_ROW_WEIGHT = 16  # a row's own work in pull_rows (load, E+/E-, store, budget), in in-edges scanned
# pull_rows reads the changed messages' deltas as float32 with their rounding in the drift budget (half
# the bytes per term: at scale 21 / B = 10,000 the 8.5K sources' deltas are 1.6 MB in float32, inside a
# core's 2 MB L2, and 3.2 MB in float64, outside it; the pull measured ~20% faster, docs/engine.md), or
# as float64 (exact, as the push; no faster where the deltas fit L2 either way, e.g. at scale 19)
PULL_DM_F32 = True
_PULL_WINDOW = 512  # in-edges pull_rows scans before adding their hits' delta rows
_NARROW_CHUNK = 64  # rows per scratch row in sum_rows' float32 pass
RELU_FUNCTIONS = (torch.relu, torch.nn.functional.relu, torch.Tensor.relu)  # activations the kernels fuse


def recompute(msg: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
    """``(edges.n_rows, msg_dim)`` sums of ``msg`` over each row's in-edges, in ``msg``'s dtype (float32,
    as DGL sums; callers widen what they cache)."""
    return segment_sum(msg, edges)


_IN_ORDER: dict[tuple[int, torch.dtype], bool] = {}


def refresh_is_recompute(msg: torch.Tensor, n_edges: int) -> bool:
    """Whether ``refresh_rows`` (a float32 running sum of each row's terms, in block order) gives
    :func:`recompute`'s bits for rows of ``msg`` with ``n_edges`` in-edges in all.  Below
    ``kernels.DGL_MIN_EDGES`` recompute is torch's CSR product, which adds a row's terms in order at
    most widths but not all (at widths 4, 8 and 16 this torch's MKL kernels add them in another order):
    probed once per width and dtype, the kernel against the product on rows whose sums depend on the
    order.  From the threshold on it is DGL's ``copy_u_sum``, left to itself (its threads split a large
    refresh's rows)."""
    if n_edges >= DGL_MIN_EDGES or not cpu_kernels.AVAILABLE or msg.dtype != torch.float32:
        return False
    key = (int(msg.shape[1]), msg.dtype)
    if key not in _IN_ORDER:
        rng = np.random.default_rng(0)
        n, d = 256, key[0]
        table = (rng.standard_normal((n, d)) * 10.0 ** rng.integers(-3, 4, (n, 1))).astype(np.float32)
        deg = rng.integers(0, 40, 64)
        indptr = np.concatenate([[0], np.cumsum(deg)]).astype(np.int64)
        src = rng.integers(0, n, int(indptr[-1])).astype(np.int64)
        torch_sum = segment_sum(torch.from_numpy(table), EdgeIndex(torch.from_numpy(src), torch.from_numpy(indptr)))
        rows = np.arange(len(deg), dtype=np.int64)  # the same rows as blocks, summed by the kernel itself
        kernel_sum = np.empty((len(deg), d), dtype=np.float32)
        refresh_rows(kernel_sum, table, rows, rows, indptr[:-1], deg.astype(np.int64), src.astype(np.int32))
        _IN_ORDER[key] = bool(np.array_equal(torch_sum.numpy(), kernel_sum))
    return _IN_ORDER[key]


def _index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


def update(tables: LayerTables, step: DeltaStep, scratch: Scratch) -> None:
    """The torch update: ``a`` += the three STAG terms (float64), then ``msg[srcs] = m_new``."""
    agg, msg, ctx = tables.agg, tables.msg, step.ctx
    dev = msg.device
    if len(step.de) + len(ctx.add_src) + len(ctx.rem_src) >= SEGMENT_DELTA_MIN:
        _update_segmented(tables, step, scratch)
    elif agg.dtype != torch.float64:
        _update_narrow(tables, step, scratch)
    else:
        if ctx.add_src.size:
            agg.index_add_(0, _index(ctx.add_dst, dev), gather_rows(msg, _index(ctx.add_src, dev)).double())
        if ctx.rem_src.size:
            agg.index_add_(0, _index(ctx.rem_dst, dev), gather_rows(msg, _index(ctx.rem_src, dev)).double(), alpha=-1)
        if step.de.size:
            dm = step.m_new.double() - step.m_old.double()
            agg.index_add_(0, _index(step.de, dev), gather_rows(dm, _index(step.se_pos, dev)))
    put_rows(msg, _index(step.srcs, dev), step.m_new)


def _update_narrow(tables: LayerTables, step: DeltaStep, scratch: Scratch) -> None:
    """The scattered adds of :func:`update` for a float32 sum (``LayerRule.narrow_sum``): into the affected
    rows gathered in float64, then stored, so each row is rounded once per batch (the fused kernel's
    arithmetic, bit for bit).  Terms for rows outside ``step.rows`` (removed by the batch) are dropped:
    those rows are cleared."""
    agg, msg, ctx, rows = tables.agg, tables.msg, step.ctx, step.rows
    dev = msg.device
    if not rows.size:
        return
    idx = _index(rows, dev)
    acc = gather_rows(agg, idx).double()
    n = len(ctx.live)
    for srcs, dsts, alpha in ((ctx.add_src, ctx.add_dst, 1), (ctx.rem_src, ctx.rem_dst, -1)):
        if srcs.size:
            pos = scratch.positions(rows, dsts, n)
            ok = pos >= 0
            acc.index_add_(0, _index(pos[ok], dev), gather_rows(msg, _index(srcs[ok], dev)).double(), alpha=alpha)
    if step.de.size:
        pos = scratch.positions(rows, step.de, n)
        ok = pos >= 0
        dm = step.m_new.double() - step.m_old.double()
        acc.index_add_(0, _index(pos[ok], dev), gather_rows(dm, _index(step.se_pos[ok], dev)))
    put_rows(agg, idx, acc)


def _update_segmented(tables: LayerTables, step: DeltaStep, scratch: Scratch) -> None:
    """The same sum for large batches: one destination-sorted segment sum (a sparse product) over
    every contribution, then one add per affected row, instead of one scattered add per edge."""
    agg, msg, ctx, rows = tables.agg, tables.msg, step.ctx, step.rows
    dev = msg.device
    if not rows.size:  # every contribution goes to a removed row, which is cleared anyway
        return
    parts = [step.m_new.double() - step.m_old.double()]
    if ctx.add_src.size:
        parts.append(gather_rows(msg, _index(ctx.add_src, dev)).double())
    if ctx.rem_src.size:
        parts.append(-gather_rows(msg, _index(ctx.rem_src, dev)).double())
    table = torch.cat(parts)
    n_new, n_add = len(step.m_new), len(ctx.add_src)
    src_idx = np.concatenate([step.se_pos, n_new + np.arange(n_add), n_new + n_add + np.arange(len(ctx.rem_src))])
    dst = np.concatenate([step.de, ctx.add_dst, ctx.rem_dst])
    pos = scratch.positions(rows, dst, len(ctx.live))
    ok = pos >= 0  # contributions to removed rows are dropped: those rows are cleared anyway
    order = argsort_stable(pos[ok])
    seg, src_idx = pos[ok][order], src_idx[ok][order]
    delta = segment_sum(table, EdgeIndex.from_sorted_rows(_index(src_idx, dev), _index(seg, dev), len(rows)))
    idx = _index(rows, dev)
    put_rows(agg, idx, gather_rows(agg, idx) + delta)


@dataclass(frozen=True)
class FusedFinish:
    """Arguments of the fused finish in ``sum_rows``: ``h_v = act(self_v + kind(a_v, deg_v) + bias)``.

    Attributes:
        kind: how the aggregate is normalised.
        selfc: ``(capacity, out_dim)`` float32 self terms, or ``(0, 0)`` for none.
        bias: ``(out_dim,)`` float32, or ``(0,)`` for none.
        relu: apply ReLU (the engine's activation between layers).
    """

    kind: FinishKind
    selfc: np.ndarray
    bias: np.ndarray
    relu: bool


def fused_finish(rule: LayerRule, tables: LayerTables, relu: bool, activation: Callable | None) -> FusedFinish | None:
    """The fused finish where the rule's finish allows it (``LayerRule.fused_finish``) and the
    activation, if any, is ReLU; None where it does not."""
    spec = rule.fused_finish() if tables.agg is not None else None
    if spec is None or (relu and activation not in RELU_FUNCTIONS):
        return None
    if rule.has_self_term and tables.selfc is None:  # not cached (rule.self_term_at_finish): the rule's finish
        return None
    kind, bias = spec
    selfc = tables.selfc.numpy() if tables.selfc is not None else _NO_ROWS
    return FusedFinish(kind, selfc, bias.numpy() if bias is not None else _NO_BIAS, relu)


def update_fused(
    tables: LayerTables,
    step: DeltaStep,
    indeg: np.ndarray,
    scratch: Scratch,
    finish: FusedFinish | None,
    budget: tuple[np.ndarray, int, int, float] | None = None,
) -> np.ndarray:
    """The sum delta (and, with ``finish``, the finish) of a layer in one CPU kernel (``sum_rows``).
    ``budget``: for a float32 sum, ``(over, lo, hi, unit)``: the drift budget of each row
    (``Propagation._budget_drift``'s ``drift_budget``, the same float32 arithmetic) is taken in the same
    pass while the row is in cache, ``over[i]`` set where row ``i`` must be refreshed.
    Returns which ``step.rows`` changed (meaningful with ``finish`` only)."""
    i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
    ctx, rows = step.ctx, step.rows
    posmap = scratch.posmap(len(ctx.live))
    diff = np.zeros(len(rows), dtype=bool)
    if finish is None:
        kind, selfc, bias, relu = _SUM, _NO_ROWS, _NO_BIAS, False
    else:
        kind, selfc, bias, relu = int(finish.kind), finish.selfc, finish.bias, finish.relu
    sum_rows(
        tables.agg.numpy(),
        tables.msg.numpy(),
        i64(rows),
        i64(ctx.add_src),
        i64(ctx.add_dst),
        i64(ctx.rem_src),
        i64(ctx.rem_dst),
        i64(step.srcs),
        step.m_new.contiguous().numpy(),
        step.de_ptr,
        step.de,
        posmap,
        finish is not None,
        tables.h_out.numpy() if tables.h_out is not None else _NO_ROWS,  # None: finished by the caller
        indeg,
        kind,
        selfc,
        bias,
        relu,
        diff,
        *(_NO_BUDGET if budget is None else (tables.drift.numpy(), *budget[1:], budget[0])),
    )
    return diff


def update_pulled(
    tables: LayerTables,
    step: DeltaStep,
    indeg: np.ndarray,
    scratch: Scratch,
    finish: FusedFinish | None,
    in_start: np.ndarray,
    in_length: np.ndarray,
    in_pool: np.ndarray,
    budget: tuple[np.ndarray, int, int, float] | None = None,
) -> np.ndarray:
    """:func:`update_fused`'s result by the in-edges of the affected rows (``pull_rows``): each row scans
    its in-edges for changed sources instead of each changed source's out-edges being bucketed by row.
    The same terms, added in in-edge order (not bit-identical to :func:`update_fused`: another order of
    float64 additions before the one rounding); the drift budget (``budget``) is taken as by
    :func:`update_fused` (with :data:`PULL_DM_F32`, the changed messages' deltas are read as float32
    and their rounding is added to it).  A term for a vertex outside ``step.rows`` (removed by this batch, cleared
    afterwards) is not added, so not for an engine whose aggregates of other rows are kept (a
    partition's ghosts).  Returns which ``step.rows`` changed (meaningful with ``finish`` only)."""
    i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
    ctx, rows = step.ctx, step.rows
    diff = np.zeros(len(rows), dtype=bool)
    if finish is None:
        kind, selfc, bias, relu = _SUM, _NO_ROWS, _NO_BIAS, False
    else:
        kind, selfc, bias, relu = int(finish.kind), finish.selfc, finish.bias, finish.relu
    srcs, m_new = i64(step.srcs), step.m_new.contiguous().numpy()
    if srcs.size > 1 and not (srcs[1:] > srcs[:-1]).all():  # the kernel ranks the sources: sorted, distinct
        order = np.argsort(srcs, kind="stable")
        srcs, m_new = srcs[order], np.ascontiguousarray(m_new[order])
        assert (srcs[1:] > srcs[:-1]).all(), "a layer's changed sources are distinct"
    d = tables.msg.shape[1]
    dm = _aligned_rows(len(srcs), d, np.float32 if PULL_DM_F32 else np.float64)
    pull_rows(
        tables.agg.numpy(),
        tables.msg.numpy(),
        i64(rows),
        i64(ctx.add_src),
        i64(ctx.add_dst),
        i64(ctx.rem_src),
        i64(ctx.rem_dst),
        srcs,
        m_new,
        in_start,
        in_length,
        in_pool,
        scratch.posmap(len(ctx.live)),
        finish is not None,
        tables.h_out.numpy() if tables.h_out is not None else _NO_ROWS,  # None: finished by the caller
        indeg,
        kind,
        selfc,
        bias,
        relu,
        diff,
        dm,
        *(_NO_BUDGET if budget is None else (tables.drift.numpy(), *budget[1:], budget[0])),
    )
    return diff


def _aligned_rows(n: int, d: int, dtype: type) -> np.ndarray:
    """An uninitialised C-contiguous ``(n, d')`` array, ``d' >= d`` rounded up to whole 64-byte lines and
    the first row on a line boundary, so that a row is read in the fewest cache lines."""
    item = np.dtype(dtype).itemsize
    per_line = 64 // item
    dp = -(-d // per_line) * per_line
    buf = np.empty(n * dp + per_line, dtype=dtype)
    skip = (-buf.ctypes.data % 64) // item
    return buf[skip : skip + n * dp].reshape(n, dp)


def finish_gathered(
    rule: LayerRule, tables: LayerTables, rows: np.ndarray, indeg: np.ndarray, relu: bool, activation: Callable | None
) -> np.ndarray | None:
    """Finish a widening SAGE-mean layer (``self + mean @ W_neigh^T``, ``rule.fused_gather()``): the
    mean and self rows gathered in one kernel, one GEMM, the store fused with change detection.  Where
    the self term is not cached (``rule.self_term_at_finish``), it is ``rule.self_term`` of the gathered
    input rows, the same product the cache would have held.
    Returns the rows whose output changed; None where the rule's own finish is needed."""
    out = gathered_output(rule, tables, rows, indeg, relu, activation)
    if out is None:
        return None
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    diff = np.empty(len(rows), dtype=bool)
    cpu_kernels.store_changed(tables.h_out.numpy(), rows, out.contiguous().numpy(), relu, diff)
    return rows[diff]


def gathered_output(
    rule: LayerRule, tables: LayerTables, rows: np.ndarray, indeg: np.ndarray, relu: bool, activation: Callable | None
) -> torch.Tensor | None:
    """:func:`finish_gathered`'s output rows before the activation (``self + mean @ W_neigh^T``, the rule's
    finish); None where the rule's own finish is needed."""
    w = rule.fused_gather()
    if w is None or (relu and activation not in RELU_FUNCTIONS):
        return None
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    neigh = torch.empty(len(rows), tables.agg.shape[1])
    if tables.selfc is None:  # the self term is not cached (rule.self_term_at_finish): from the inputs
        gather_mean(tables.agg.numpy(), rows, indeg, neigh.numpy())
        out = rule.self_term(gather_rows(tables.h_in, torch.from_numpy(rows)))
    else:
        out = torch.empty(len(rows), tables.selfc.shape[1])
        gather_mean_self(tables.agg.numpy(), tables.selfc.numpy(), rows, indeg, neigh.numpy(), out.numpy())
    if steptimes.ON:
        steptimes.lmark("gather+self_gemm")
    out.addmm_(neigh, w.t())
    if steptimes.ON:
        steptimes.lmark("finish_gemm")
    return out


def update_and_finish_fused(
    rule: LayerRule,
    tables: LayerTables,
    step: DeltaStep,
    indeg: np.ndarray,
    relu: bool,
    activation: Callable | None,
    scratch: Scratch,
    finish_rows: Callable[[], torch.Tensor],
    pull: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    budget: tuple[np.ndarray, int, int, float] | None = None,
) -> np.ndarray:
    """A sum layer's whole fused step: :func:`update_fused` (or, given ``pull``, the in-adjacency's
    ``(start, length, pool)``, :func:`update_pulled`), then the fused finish where the rule has one,
    else :func:`finish_gathered`, else ``finish_rows()`` (the rule's torch finish of ``step.rows``) and
    the fused store (``budget``: :func:`update_fused`'s, taken by the pull too).  Returns the rows whose
    output changed."""
    fin = fused_finish(rule, tables, relu, activation)
    if pull is not None:
        diff = update_pulled(tables, step, indeg, scratch, fin, *pull, budget)
    else:
        diff = update_fused(tables, step, indeg, scratch, fin, budget)
    if steptimes.ON:
        steptimes.lmark("delta" if fin is None else "delta+finish")
    if fin is not None:
        return step.rows[diff]
    changed = finish_gathered(rule, tables, step.rows, indeg, relu, activation)
    if changed is not None:
        return changed
    rows = np.ascontiguousarray(step.rows, dtype=np.int64)
    diff = np.empty(len(rows), dtype=bool)
    cpu_kernels.store_changed(tables.h_out.numpy(), rows, finish_rows().contiguous().numpy(), False, diff)
    return step.rows[diff]


def gather_f32_rows(agg: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """``float32(agg[rows])`` for a float64 aggregate, in one pass (``gather_f32``)."""
    out = torch.empty(len(rows), agg.shape[1])
    gather_f32(agg.numpy(), np.ascontiguousarray(rows, dtype=np.int64), out.numpy())
    return out


if cpu_kernels.AVAILABLE:
    import numba

    from clustergnn.cpu_kernels import (
        PREFETCH_AHEAD,
        abs_max_row,
        balanced_bounds,
        jit,
        pjit,
        popcount,
        prefetch_ahead,
        prefetch_row,
        prefetch_span,
    )

    @jit
    def gather_f32(agg, rows, out):  # pragma: no cover - jitted
        d = agg.shape[1]
        n = rows.shape[0]
        for i in range(n):
            prefetch_ahead(agg, rows, i)
            r = rows[i]
            for k in range(d):
                out[i, k] = np.float32(agg[r, k])

    @pjit
    def gather_mean_self(agg, selfc, rows, deg, neigh, selfv):  # pragma: no cover - jitted
        """``neigh[i] = float32(agg[r] / max(deg_i, 1))`` (float64 division, as the torch finish) and
        ``selfv[i] = selfc[r]`` for ``r = rows[i]``: the inputs of SAGE-mean's ``self + neigh @ W^T``."""
        d, ds = agg.shape[1], selfc.shape[1]
        n = rows.shape[0]
        for i in numba.prange(n):
            prefetch_ahead(agg, rows, i)
            prefetch_ahead(selfc, rows, i)
            r = rows[i]
            dg = max(deg[i], 1)
            for k in range(d):
                neigh[i, k] = np.float32(agg[r, k] / dg)
            for k in range(ds):
                selfv[i, k] = selfc[r, k]

    @pjit
    def gather_mean(agg, rows, deg, neigh):  # pragma: no cover - jitted
        """``neigh[i] = float32(agg[r] / max(deg_i, 1))`` for ``r = rows[i]`` (``gather_mean_self``
        without the self rows)."""
        d = agg.shape[1]
        n = rows.shape[0]
        for i in numba.prange(n):
            prefetch_ahead(agg, rows, i)
            r = rows[i]
            dg = max(deg[i], 1)
            for k in range(d):
                neigh[i, k] = np.float32(agg[r, k] / dg)

    @jit
    def _finish_row(h, r, agg, dg, kind, selfc, has_self, bias, has_bias, relu):  # pragma: no cover - jitted
        """``h[r] = act(self[r] + norm(agg[r], deg) + bias)``; returns whether ``h[r]`` changed bit-for-bit.

        The arithmetic follows the rules' torch ``finish``: the mean divides in float64 and rounds once;
        the GraphConv norms round the sum to float32 and scale it in float32 (the scale and a bias round
        as the module docstring says, not always as torch's)."""
        d = h.shape[1]
        dg = max(dg, 1)
        if kind == _SYM_NORM:
            c = np.float32(1.0) / np.sqrt(np.float32(dg))
        else:
            c = np.float32(1.0) / np.float32(dg)
        diff = False
        for k in range(d):
            if kind == _MEAN:
                v = np.float32(agg[r, k] / dg)
            elif kind == _SUM:
                v = np.float32(agg[r, k])
            else:
                v = np.float32(agg[r, k]) * c
            if has_self:
                v = selfc[r, k] + v
            if has_bias:
                v = v + bias[k]
            if relu and v < 0:
                v = np.float32(0.0)
            if h[r, k] != v:
                diff = True
            h[r, k] = v
        return diff

    @pjit
    def drift_budget(agg, drift, rows, indeg, lo, hi, unit, over):  # pragma: no cover - jitted
        """A float32 sum's drift budget after an update of ``rows`` (``Propagation._budget_drift``, whose
        torch arithmetic this is, in float32 step by step): ``drift[r] += unit * max_k |agg[r, k]|``;
        ``over[i]``, and the budget reset, where it passes ``clamp(indeg[i], lo, hi)`` such units."""
        u = np.float32(unit)
        for i in numba.prange(rows.shape[0]):
            over[i] = _budget_row(agg, drift, rows[i], indeg[i], lo, hi, u, 0.0)

    @pjit
    def refresh_rows(agg, msg, slots, trows, start, length, pool):  # pragma: no cover - jitted
        """``agg[trows[i]] = sum of msg[u]`` over the in-edges ``u -> slots[i]`` (the in-adjacency's blocks
        ``start``/``length``/``pool``), each term added to a float32 running sum in block order, then
        stored (widened where ``agg`` is float64): the arithmetic of :func:`recompute` (torch's CSR
        product and DGL's ``copy_u_sum`` add a row's terms in order), bit for bit, read straight from the
        blocks (no CSR, no index tensors): a drifting row's refresh costs its in-edges, not the ~0.3 ms of
        building and running a sparse product for a few hundred rows."""
        d = msg.shape[1]
        n = slots.shape[0]
        per = max(1, min(16, n // 8))
        for ch in numba.prange((n + per - 1) // per):
            acc = np.empty(d, dtype=np.float32)
            for i in range(ch * per, min(n, (ch + 1) * per)):
                a, m = start[slots[i]], length[slots[i]]
                for k in range(d):
                    acc[k] = np.float32(0.0)
                for e in range(m):
                    if e + PREFETCH_AHEAD < m:
                        prefetch_row(msg, np.int64(pool[a + e + PREFETCH_AHEAD]))
                    u = pool[a + e]
                    for k in range(d):
                        acc[k] += msg[u, k]
                r = trows[i]
                for k in range(d):
                    agg[r, k] = acc[k]

    @jit
    def _budget_row(agg, drift, r, deg, lo, hi, u, extra):  # pragma: no cover - jitted
        """Row ``r``'s step of ``drift_budget`` (``u``: the float32 unit); True where it is over budget.
        ``extra`` (float64, >= 0): a further bound on the update's error (``pull_rows``' float32 deltas),
        added to the budget rounded up."""
        step = abs_max_row(agg, r) * u
        b = drift[r] + step
        if extra > 0.0:
            b = b + np.float32(extra * (1.0 + 2.0**-20))
        lim = np.float32(min(max(deg, lo), hi))
        if b > step * lim:
            drift[r] = np.float32(0.0)
            return True
        drift[r] = b
        return False

    def _images_changed(msg, selfc, rows, m, s, changed):  # pragma: no cover - jitted
        """``changed[i]``: whether ``m[i]`` differs bit for bit from ``msg[rows[i]]`` or ``s[i]`` from
        ``selfc[rows[i]]`` (``selfc`` ``(0, 0)``: no self term), ``Propagation._store_images``' test."""
        d, ds = msg.shape[1], selfc.shape[1]
        has_self = selfc.shape[0] > 0
        for i in numba.prange(rows.shape[0]):
            prefetch_ahead(msg, rows, i)
            if has_self:
                prefetch_ahead(selfc, rows, i)
            r = rows[i]
            diff = False
            for k in range(d):
                if m[i, k] != msg[r, k]:
                    diff = True
            if has_self:
                for k in range(ds):
                    if s[i, k] != selfc[r, k]:
                        diff = True
            changed[i] = diff

    # a layer's changed rows are usually few: one core (a parallel region costs more); a wide batch's
    # hundreds of rows (two random rows of 0.5 KB each at width 128) are worth both
    images_changed = jit(_images_changed)
    images_changed_parallel = pjit(_images_changed)
    IMAGES_PARALLEL_BYTES = 1 << 17  # rows x (message + self term) bytes from which both cores compare

    @jit
    def _add_terms_once(agg, msg, dm, r, lo, hi, ids, na, nr, add_src, rem_src, se_pos, acc):  # pragma: no cover
        """Row ``r`` of a float32 sum plus its terms ``ids[lo:hi]`` (``sum_rows``' numbering), added in
        float64 (``acc``: a ``(d,)`` scratch row) in ``sum_rows``' order, then rounded once: what the
        torch path's float64 scattered adds into the gathered rows give, bit for bit."""
        d = agg.shape[1]
        for k in range(d):
            acc[k] = agg[r, k]
        for t in range(lo, hi):
            c = ids[t]
            if c < na:
                u = add_src[c]
                for k in range(d):
                    acc[k] += np.float64(msg[u, k])
            elif c < na + nr:
                u = rem_src[c - na]
                for k in range(d):
                    acc[k] -= np.float64(msg[u, k])
            else:
                j = se_pos[c - na - nr]
                for k in range(d):
                    acc[k] += dm[j, k]
        for k in range(d):
            agg[r, k] = acc[k]

    def _sum_rows(
        agg,
        msg,
        rows,
        add_src,
        add_dst,
        rem_src,
        rem_dst,
        srcs,
        m_new,
        de_ptr,
        de,
        posmap,
        finish,
        h,
        deg,
        kind,
        selfc,
        bias,
        relu,
        changed,
        drift,
        lo,
        hi,
        unit,
        over,
    ):  # pragma: no cover - jitted
        """A sum layer's delta, and (``finish``) each affected row's output, in one pass over the rows.

        The terms (E+, E-, then changed messages in source order, each widened to float64) are bucketed
        by destination row with a counting sort (O(contributions + rows)), so each affected row of the
        float64 table is loaded once and updated in cache, the rows run in parallel (no two workers share
        a row), and each row is finished (``_finish_row``) while it is hot.  A row's terms are added in
        the order a sequential scatter adds them, so the sums are bit-identical to the torch path's.
        ``de`` lists the out-neighbours of ``srcs[j]`` at ``de[de_ptr[j]:de_ptr[j+1]]``; ``deg`` is each
        row's in-degree.  Terms for rows outside ``rows`` (vertices removed by the batch, cleared
        afterwards) are added serially.  ``posmap`` is an all -1 scratch array (left all -1).
        A float32 sum's rows are added into a float64 scratch row and rounded once; with ``drift``
        (``(0,)``: none) each row's drift budget is taken there too (``_budget_row``, ``over[i]``), before
        its finish.
        """
        d = agg.shape[1]
        n = rows.shape[0]
        na, nr, ne = add_src.shape[0], rem_src.shape[0], de.shape[0]
        for i in range(n):
            posmap[rows[i]] = i
        dm = np.empty((srcs.shape[0], d), dtype=np.float64)
        for j in range(srcs.shape[0]):  # small: one parallel region per call is what costs
            u = srcs[j]
            for k in range(d):
                dm[j, k] = np.float64(m_new[j, k]) - np.float64(msg[u, k])
        start = np.zeros(n + 1, dtype=np.int64)
        total = na + nr + ne
        pos = np.empty(total, dtype=np.int64)
        se_pos = np.empty(ne, dtype=np.int64)  # the source (index into srcs) of each out-edge entry
        j = 0
        for c in range(total):
            if c < na:
                v = add_dst[c]
            elif c < na + nr:
                v = rem_dst[c - na]
            else:
                e = c - na - nr
                while e >= de_ptr[j + 1]:
                    j += 1
                se_pos[e] = j
                v = de[e]
            p = posmap[v]
            pos[c] = p
            if p >= 0:
                start[p + 1] += 1
            elif c < na:
                for k in range(d):
                    agg[v, k] += np.float64(msg[add_src[c], k])
            elif c < na + nr:
                for k in range(d):
                    agg[v, k] -= np.float64(msg[rem_src[c - na], k])
            else:
                for k in range(d):
                    agg[v, k] += dm[j, k]
        for i in range(n):
            start[i + 1] += start[i]
        fill = start[:n].copy()
        ids = np.empty(start[n], dtype=np.int64)
        for c in range(total):
            p = pos[c]
            if p >= 0:
                ids[fill[p]] = c
                fill[p] += 1
        has_self = selfc.shape[0] > 0
        has_bias = bias.shape[0] > 0
        narrow = agg.itemsize == 4
        budget = drift.shape[0] > 0
        unit32 = np.float32(unit)
        if narrow:  # a float32 sum (clustergnn.caches): each row's terms added in float64, rounded once
            # one scratch row per chunk of up to 64 rows, at least 8 chunks (a small batch's rows in one
            # chunk would run on one core)
            per = min(_NARROW_CHUNK, max(1, n // 8))
            for ch in numba.prange((n + per - 1) // per):
                acc = np.empty(d, dtype=np.float64)
                for i in range(ch * per, min(n, (ch + 1) * per)):
                    if i + PREFETCH_AHEAD < n:
                        ahead = rows[i + PREFETCH_AHEAD]
                        prefetch_row(agg, ahead)
                        if finish:
                            prefetch_row(h, ahead)
                            if has_self:
                                prefetch_row(selfc, ahead)
                    r = rows[i]
                    _add_terms_once(agg, msg, dm, r, start[i], start[i + 1], ids, na, nr, add_src, rem_src, se_pos, acc)
                    if budget:  # the row is in cache: its drift budget here, not in a pass of its own
                        over[i] = _budget_row(agg, drift, r, deg[i], lo, hi, unit32, 0.0)
                    if finish:  # and its finish (one parallel region: waking the workers is what costs)
                        changed[i] = _finish_row(h, r, agg, deg[i], kind, selfc, has_self, bias, has_bias, relu)
        if not narrow:  # (a narrow sum is done above: no second parallel region)
            for i in numba.prange(n):
                if i + PREFETCH_AHEAD < n:
                    ahead = rows[i + PREFETCH_AHEAD]
                    prefetch_row(agg, ahead)
                    if finish:
                        prefetch_row(h, ahead)
                        if has_self:
                            prefetch_row(selfc, ahead)
                r = rows[i]
                for t in range(start[i], start[i + 1]):
                    c = ids[t]
                    if c < na:
                        u = add_src[c]
                        for k in range(d):
                            agg[r, k] += np.float64(msg[u, k])
                    elif c < na + nr:
                        u = rem_src[c - na]
                        for k in range(d):
                            agg[r, k] -= np.float64(msg[u, k])
                    else:
                        j = se_pos[c - na - nr]
                        for k in range(d):
                            agg[r, k] += dm[j, k]
                if finish:
                    changed[i] = _finish_row(h, r, agg, deg[i], kind, selfc, has_self, bias, has_bias, relu)
        for i in range(n):
            posmap[rows[i]] = -1
        for j in range(srcs.shape[0]):
            u = srcs[j]
            for k in range(d):
                msg[u, k] = m_new[j, k]

    @pjit
    def pull_rows(
        agg,
        msg,
        rows,
        add_src,
        add_dst,
        rem_src,
        rem_dst,
        srcs,
        m_new,
        in_start,
        in_length,
        in_pool,
        posmap,
        finish,
        h,
        deg,
        kind,
        selfc,
        bias,
        relu,
        changed,
        dm,
        drift,
        lo,
        hi,
        unit,
        over,
    ):  # pragma: no cover - jitted
        """``sum_rows``' delta (and finish) by pull: each affected row ``r`` finds its changed-message terms
        by scanning its own in-edges ``in_pool[in_start[r]:in_start[r] + in_length[r]]`` for sources in
        ``srcs``, where ``sum_rows`` buckets every out-edge of every source by row.  No sort and no
        ``(terms,)`` temporaries; the rows run in parallel throughout.

        ``srcs`` must be sorted and distinct: a source's position in ``srcs`` is its rank in a bitmap of
        the sources (a per-word prefix count plus a popcount), so each in-edge is tested and mapped
        through ~400 KB that stay in L2, never through a table the size of the graph.  An in-edge block
        is scanned a window at a time into a list of hits without a branch per edge, then the hits'
        delta rows are added.  The delta rows ``dm[j] = m_new[j] - msg[srcs[j]]`` go to ``dm``
        (``(ns, d)``, float32 or float64; its rows may be padded), computed in float64: float32 halves
        the bytes each term reads, and its rounding, ``max_k |float32(dm) - dm|`` per source, is added to
        the row's drift budget with the row's own rounding (below).

        Each row is added in float64 (a scratch row per chunk of rows), in in-edge order, and rounded
        once: the sum differs from ``sum_rows``' only in the order of its terms (not bit-identical; both
        exact to float64 rounding before the one float32 rounding).  With ``drift`` (``(0,)``: none; a
        float32 sum), the row's budget (``_budget_row``) is taken while the row is in cache, plus the
        float32 deltas' rounding.  E+/E- terms for vertices outside ``rows`` (removed by the batch) are
        added serially, as ``sum_rows`` does; changed-message terms for them are not (their rows are
        cleared afterwards).  ``posmap`` is an all -1 scratch array (left all -1).
        """
        d = agg.shape[1]
        n = rows.shape[0]
        na, nr, ns = add_src.shape[0], rem_src.shape[0], srcs.shape[0]
        # E+ and E- terms bucketed by row (batch order kept), through posmap = position in rows (the rows
        # are distinct: marked and cleared in parallel)
        for i in numba.prange(n):
            posmap[rows[i]] = i
        e_start = np.zeros(n + 1, dtype=np.int64)
        for c in range(na + nr):
            v = add_dst[c] if c < na else rem_dst[c - na]
            p = posmap[v]
            if p >= 0:
                e_start[p + 1] += 1
            elif c < na:
                for k in range(d):
                    agg[v, k] += np.float64(msg[add_src[c], k])
            else:
                for k in range(d):
                    agg[v, k] -= np.float64(msg[rem_src[c - na], k])
        for i in range(n):
            e_start[i + 1] += e_start[i]
        e_ids = np.empty(e_start[n], dtype=np.int64)
        fill = e_start[:n].copy()
        for c in range(na + nr):
            v = add_dst[c] if c < na else rem_dst[c - na]
            p = posmap[v]
            if p >= 0:
                e_ids[fill[p]] = c
                fill[p] += 1
        for i in numba.prange(n):
            posmap[rows[i]] = -1
        # the sources: a bitmap, each word's rank (sources in the words before it) and the delta rows
        nw = posmap.shape[0] // 64 + 1
        is_src = np.zeros(nw, dtype=np.uint64)
        for j in range(ns):
            u = srcs[j]
            is_src[u >> 6] |= np.uint64(1) << np.uint64(u & 63)
        rank = np.empty(nw, dtype=np.int32)
        c = 0
        for w in range(nw):
            rank[w] = c
            c += np.int64(popcount(is_src[w]))
        dp = dm.shape[1]  # dm's rows padded to whole cache lines: the padding is zeroed and added too
        dm_err = np.zeros(ns, dtype=np.float64)  # max_k |dm[j, k] - (m_new - msg)[j, k]|: 0 in float64
        any_err = False
        for j in range(ns):
            u = srcs[j]
            e = 0.0
            for k in range(d):
                x = np.float64(m_new[j, k]) - np.float64(msg[u, k])
                dm[j, k] = x
                e = max(e, abs(np.float64(dm[j, k]) - x))
            for k in range(d, dp):
                dm[j, k] = 0
            dm_err[j] = e
            any_err |= e > 0.0
        has_self = selfc.shape[0] > 0
        has_bias = bias.shape[0] > 0
        budget = drift.shape[0] > 0
        unit32 = np.float32(unit)
        # rows in chunks of about equal work (in-edges plus a row's own), one float64 scratch row and one
        # hit window per chunk: the parallel loop splits its range evenly between the threads, and on a
        # skewed graph the hubs' rows (low slots in R-MAT) would otherwise load one thread
        work = np.empty(n, dtype=np.int64)
        for i in numba.prange(n):
            work[i] = in_length[rows[i]] + _PULL_ROW_WEIGHT
        bounds = balanced_bounds(work, min(n, _PULL_CHUNKS))
        for ch in numba.prange(bounds.shape[0] - 1):
            acc = np.zeros(dp, dtype=np.float64)  # (its padding stays 0)
            win = np.empty(_PULL_WINDOW, dtype=np.int64)
            for i in range(bounds[ch], bounds[ch + 1]):
                if i + PREFETCH_AHEAD < n:
                    ahead = rows[i + PREFETCH_AHEAD]
                    prefetch_row(agg, ahead)
                    prefetch_span(in_pool, np.int64(in_start[ahead]), np.int64(min(in_length[ahead], 256)))
                    if finish:
                        prefetch_row(h, ahead)
                        if has_self:
                            prefetch_row(selfc, ahead)
                r = rows[i]
                for k in range(d):
                    acc[k] = agg[r, k]
                for t in range(e_start[i], e_start[i + 1]):
                    c = e_ids[t]
                    if c < na:
                        u = add_src[c]
                        for k in range(d):
                            acc[k] += np.float64(msg[u, k])
                    else:
                        u = rem_src[c - na]
                        for k in range(d):
                            acc[k] -= np.float64(msg[u, k])
                err = 0.0
                s0 = in_start[r]
                s1 = s0 + in_length[r]
                for w0 in range(s0, s1, _PULL_WINDOW):
                    nh = 0
                    for e in range(w0, min(s1, w0 + _PULL_WINDOW)):  # no branch per in-edge
                        v = np.uint64(in_pool[e])  # (unsigned shifts and masks: fewer instructions)
                        win[nh] = np.int64(v)
                        nh += np.int64((is_src[np.int64(v >> np.uint64(6))] >> (v & np.uint64(63))) & np.uint64(1))
                    for t in range(nh):  # the hits: each source's position in srcs is its rank
                        u = win[t]
                        below = is_src[u >> 6] & ((np.uint64(1) << np.uint64(u & 63)) - np.uint64(1))
                        win[t] = rank[u >> 6] + np.int64(popcount(below))
                    if any_err:
                        for t in range(nh):
                            err += dm_err[win[t]]
                    # four terms at a time, summed in float64 before they meet the row (a quarter of the
                    # accumulator's loads and stores), then the one to three left
                    t = 0
                    while t + 4 <= nh:
                        for q in range(t + 4, min(t + 8, nh)):
                            prefetch_row(dm, win[q])
                        j0, j1, j2, j3 = win[t], win[t + 1], win[t + 2], win[t + 3]
                        for k in range(dp):
                            acc[k] += (np.float64(dm[j0, k]) + np.float64(dm[j1, k])) + (
                                np.float64(dm[j2, k]) + np.float64(dm[j3, k])
                            )
                        t += 4
                    for q in range(t, nh):
                        j = win[q]
                        for k in range(dp):
                            acc[k] += np.float64(dm[j, k])
                for k in range(d):
                    agg[r, k] = acc[k]
                if budget:  # the row is in cache: its drift budget here, plus the float32 deltas' rounding
                    over[i] = _budget_row(agg, drift, r, deg[i], lo, hi, unit32, err)
                if finish:
                    changed[i] = _finish_row(h, r, agg, deg[i], kind, selfc, has_self, bias, has_bias, relu)
        for j in range(ns):
            u = srcs[j]
            for k in range(d):
                msg[u, k] = m_new[j, k]

    # on all cores even for small batches: a one-core variant below a size threshold measured slower
    # (2.6 vs 1.8 ms at 256 edges, 0.45 vs 0.36 ms at 16), as the idle OpenMP workers then fall asleep
    # and the next parallel kernel pays to wake them
    sum_rows = pjit(_sum_rows)


def warm_up_sum_kernels(dtype: np.dtype) -> None:
    """Compile (or load from the disk cache) ``sum_rows`` (and, with ``propagation.PULL_DELTA``,
    ``pull_rows``) for sum aggregates of ``dtype`` (float32: a narrow sum, float64: ``NARROW_SUMS = False``),
    with and without the finish."""
    from clustergnn import propagation

    f32, i64 = np.float32, np.int64
    one = np.zeros(1, dtype=i64)
    t32 = np.zeros((2, 2), dtype=f32)
    changed = np.zeros(1, dtype=np.bool_)
    posmap = np.full(2, -1, dtype=i64)
    for finish, kind, selfc, bias in ((True, _MEAN, t32, np.zeros(0, f32)), (False, _SUM, _NO_ROWS, np.zeros(2, f32))):
        sum_rows(
            np.zeros((2, 2), dtype),
            t32.copy(),
            one,
            one,
            one,
            one,
            one,
            one,
            np.zeros((1, 2), f32),
            np.array([0, 1], dtype=i64),
            one,
            posmap,
            finish,
            t32.copy(),
            one,
            kind,
            selfc,
            bias,
            True,
            changed,
            *_NO_BUDGET,  # the types of a budget's arguments
        )
        if not propagation.PULL_DELTA:
            continue
        pull_rows(
            np.zeros((2, 2), dtype),
            t32.copy(),
            one,
            one,
            one,
            one,
            one,
            one,
            np.zeros((1, 2), f32),
            np.zeros(2, dtype=i64),
            np.ones(2, dtype=i64),
            np.zeros(2, dtype=np.int32),
            posmap,
            finish,
            t32.copy(),
            one,
            kind,
            selfc,
            bias,
            True,
            changed,
            _aligned_rows(1, 2, f32 if PULL_DM_F32 else np.float64),
            *_NO_BUDGET,
        )


def warm_up_kernels() -> None:
    """Compile (or load from the disk cache) this family's other kernels for the engine's argument types
    (the sum kernels: :func:`warm_up_sum_kernels`, per aggregate dtype)."""
    f32, f64, i64 = np.float32, np.float64, np.int64
    one = np.zeros(1, dtype=i64)
    t32 = np.zeros((2, 2), dtype=f32)
    changed = np.zeros(1, dtype=np.bool_)
    gather_mean(np.zeros((2, 2), f32), one, one, np.zeros((1, 2), f32))
    drift_budget(np.zeros((2, 2), f32), np.zeros(2, f32), one, one, 16, 1024, 2.0**-24, changed)
    gather_f32(np.zeros((2, 2), f64), one, np.zeros((1, 2), f32))
    for agg_dtype in (f32, f64):  # Propagation._budget_drift's refresh (the in-adjacency's int32 pool)
        refresh_rows(np.zeros((2, 2), agg_dtype), t32, one, one, one, one, np.zeros(1, dtype=np.int32))
    for n in (1, 2):  # Propagation._store_images: the message, the self term (a view: contiguous if one row)
        both = np.zeros((n, 4), f32)
        for kernel in (images_changed, images_changed_parallel):
            kernel(t32, t32, one, np.ascontiguousarray(both[:, :2]), both[:, 2:], changed)
    gather_mean_self(np.zeros((2, 2), f64), t32, one, one, np.zeros((1, 2), f32), np.zeros((1, 2), f32))
    gather_mean(np.zeros((2, 2), f64), one, one, np.zeros((1, 2), f32))
