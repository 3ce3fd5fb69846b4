"""The max family: SAGE pool, GIN max.

InkStream's monotonic rule (https://arxiv.org/abs/2309.11071).  The aggregate is the elementwise max
``a_v = max_{u in N_in(v)} m_u``, ``(capacity, msg_dim)`` float32, with DGL's empty max = 0.  After a
batch (``S`` the vertices whose message changed, ``E+``/``E-`` the edges added/removed):

    a'_v = max(a_v, max_{(u,v) in G', u in S} m'_u, max_{(u,v) in E+} m_u)

unless ``v`` is *suspect*: some removed or decreased message equalled ``a_v`` in some dimension
(``m_u >= a_v`` for ``(u, v)`` in ``E-``, or ``m_u >= a_v`` and ``m'_u < m_u`` for ``u`` in ``S``), or ``v``
had no in-edges before the batch (then ``a_v = 0`` is not a lower bound).  Suspect rows are
re-aggregated from all their in-neighbours (:func:`recompute`).

Why it is exact: adding edges or raising messages can only raise a max, so ``max(a, new)`` is the max
of the new multiset whenever no element that was the extreme left or shrank; the suspect rows are
exactly those where one may have, and they are recomputed.  Both paths compute maxes of the same
float32 values, which involves no rounding: the torch and fused engines agree bit for bit here.
There is no fused (numba) variant: the update is a few vectorised torch ops.

Example::

    a = recompute(msg, edges)      # (edges.n_rows, msg_dim) float32, 0 for rows without in-edges
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from clustergnn.aggregate.base import DeltaStep
from clustergnn.caches import LayerTables, Scratch, gather_rows, put_rows
from clustergnn.graph import MutableGraph
from clustergnn.kernels import EdgeIndex, segment_max


def recompute(msg: torch.Tensor, edges: EdgeIndex) -> torch.Tensor:
    """``(edges.n_rows, msg_dim)`` elementwise maxes of ``msg`` over each row's in-edges (0 for none)."""
    return segment_max(msg, edges)


def update(
    tables: LayerTables,
    step: DeltaStep,
    graph: MutableGraph,
    scratch: Scratch,
    recompute_rows: Callable[[np.ndarray], torch.Tensor],
    rowmap: np.ndarray | None = None,
) -> None:
    """Raise ``a`` with the new messages and edges, re-aggregate the suspect rows
    (``recompute_rows(rows)`` from the current in-edges, after ``msg[srcs] = m_new``).  ``rowmap``: the
    aggregate's row of each slot where it has owned rows only (:mod:`clustergnn.caches`)."""
    g, ctx, rows = graph, step.ctx, step.rows
    agg, msg = tables.agg, tables.msg
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(msg.device)  # noqa: E731
    r = (lambda a: t(a)) if rowmap is None else (lambda a: t(rowmap[a]))  # noqa: E731  (agg's index)
    de, m_old, m_new = step.de, step.m_old, step.m_new
    suspect = []
    if de.size:
        pos = t(step.se_pos)
        mo, mn, cur = gather_rows(m_old, pos), gather_rows(m_new, pos), gather_rows(agg, r(de))
        flag = ((mo >= cur) & (mn < mo)).any(dim=1).cpu().numpy()
        suspect.append(de[flag])
    if ctx.rem_src.size:
        flag = (gather_rows(msg, t(ctx.rem_src)) >= gather_rows(agg, r(ctx.rem_dst))).any(dim=1).cpu().numpy()
        suspect.append(ctx.rem_dst[flag])
    # rows whose old in-degree was 0 held DGL's empty max (0), which is not a lower bound
    old_deg = g.in_degree(rows).copy()
    for arr, sign in ((ctx.add_dst, -1), (ctx.rem_dst, 1)):
        if arr.size and rows.size:
            u, c = np.unique(arr, return_counts=True)
            pos_r = scratch.positions(rows, u, g.capacity)
            ok = pos_r >= 0
            np.add.at(old_deg, pos_r[ok], sign * c[ok])
    suspect.append(rows[old_deg == 0])
    redo = np.intersect1d(np.concatenate(suspect), rows)
    put_rows(msg, t(step.srcs), m_new)
    keep = np.ones(g.capacity, dtype=bool)
    keep[redo] = False
    keep &= g.alive
    srcs_all = np.concatenate([step.se, ctx.add_src])
    dsts_all = np.concatenate([de, ctx.add_dst])
    sel = keep[dsts_all]
    if sel.any():
        d = r(dsts_all[sel])
        s = t(srcs_all[sel])
        agg.scatter_reduce_(
            0, d.unsqueeze(1).expand(-1, agg.shape[1]), gather_rows(msg, s), reduce="amax", include_self=True
        )
    if redo.size:
        put_rows(agg, r(redo), recompute_rows(redo))
