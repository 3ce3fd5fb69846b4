"""Full recompute: every layer of every owned row from scratch (``mode="full"`` and ``bulk_load``).

For each layer ``l``, with ``rows`` the owned live slots and ``edges`` their in-edges (the same
:class:`~clustergnn.kernels.EdgeIndex`, and DGL graph, for every layer):

    m = message(h_l[rows], outdeg),  a = aggregate(m over edges),  h_{l+1}[rows] = act(finish(self, a, indeg, m))

It runs the same kernels as DGL's forward (DGL's SpMM, SDDMM and edge softmax on CPU above
``kernels.DGL_MIN_EDGES``) and saves passes where it can: outputs written straight into the cache
when ``rows`` are ``0..n-1``, in-place ReLU.  Exact by definition; it is also what resets every
float64 aggregate exactly (``Engine.bulk_load``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from clustergnn.aggregate.sum import RELU_FUNCTIONS
from clustergnn.caches import Caches, RowView
from clustergnn.kernels import EdgeIndex
from clustergnn.rules import LayerRule, SageRule


def recompute_all(
    rules: list[LayerRule],
    caches: Caches,
    rows: np.ndarray,
    edges: EdgeIndex,
    indeg: torch.Tensor,
    outdeg: torch.Tensor,
    activation: Callable[[torch.Tensor], torch.Tensor] | None,
    keep_caches: bool,
) -> None:
    """Recompute ``h_1..h_L`` of ``rows`` (sorted slots; ``indeg``/``outdeg`` theirs, ``edges`` their
    in-edges).  Caches other than the outputs are written only with ``keep_caches`` (the engine will
    propagate incrementally afterwards) or when ``rows`` are not ``0..n-1``; a pure full engine skips
    them, as a plain full forward would."""
    view = RowView.of(rows, caches.t(rows))  # msg is indexed by slot
    # h/agg/selfc/drift by owned row where the engine has them (clustergnn.caches): the same view otherwise
    own = view if caches.rowmap is None else RowView.of(caches.rows(rows), caches.rt(rows))
    keep = keep_caches or view.n is None or own.n is None  # a non-contiguous table must live in the cache
    out = None  # the previous layer's output, where its table is not kept (caches.h[li] is None)
    for li, rule in enumerate(rules):
        m, selfv = rule.message_and_self(own.get(caches.h[li]) if caches.h[li] is not None else out, outdeg)
        if keep and caches.msg[li] is not caches.h[li]:  # msg0 may be h0 itself (clustergnn.caches)
            view.put(caches.msg[li], m)
        table = caches.msg[li] if keep else m  # indexed by slot (rows are 0..n-1 when not kept)
        if keep and selfv is not None and caches.selfc[li] is not None:  # None: recomputed at finish
            own.put(caches.selfc[li], selfv)
        h_out = caches.h[li + 1]  # None: not kept, only handed to the next layer
        dest = own.get(h_out) if own.n is not None and h_out is not None else None  # rows 0..n-1: in place
        if dest is not None and selfv is not None and _self_into_dest(rule):
            # the self term waits in the output rows, not in a temporary of its own (nor, for a layer
            # that stacks both products, in that GEMM's whole output) while the aggregate runs: the
            # finish is ``addmm(selfv, mean, W, out=dest)`` or ``add(selfv, neigh, out=dest)``, the same
            # values with ``selfv`` at ``dest`` (torch copies ``selfv`` there first otherwise)
            selfv = dest.copy_(selfv)
        agg = rule.aggregate(table, edges, m)
        if keep and caches.agg[li] is not None:
            own.put(caches.agg[li], agg)
            if caches.drift[li] is not None:  # a float32 sum recomputed: its rounding budget starts over
                own.put(caches.drift[li], torch.zeros(len(rows), device=agg.device))
        # agg and selfv are temporaries here (already copied to the caches where they are kept)
        out = rule.finish(selfv, agg, indeg, m, fresh=True, out=dest)
        if li < len(rules) - 1 and activation is not None:
            out = torch.relu_(out) if activation in RELU_FUNCTIONS else activation(out)
        if h_out is not None and (dest is None or out.data_ptr() != dest.data_ptr()):
            own.put(h_out, out)
        del m, selfv, agg, table, dest  # not alive while the next layer allocates its own
        # (out is the next layer's input where h is not kept)
        if h_out is not None:
            out = None


def _self_into_dest(rule: LayerRule) -> bool:
    """Whether ``rule.finish(selfv, ..., fresh=True, out=dest)`` reads ``selfv`` only as the addend of
    one ``addmm``/``add`` into ``out`` (so ``selfv`` may be ``dest`` itself): SAGE mean, no post-processing."""
    return isinstance(rule, SageRule) and rule.kind == "mean" and rule._plain_post()
