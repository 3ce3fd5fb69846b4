"""Exact incremental rules for DGL's message-passing layers: each layer as message / aggregate / finish.

Every supported layer is written as three pieces over a cached per-vertex *message* ``m_u``:

    m_u     = message(h_u, outdeg_u)                       # source side, cached per vertex
    a_v     = AGG_{u in N_in(v)} m_u                       # cached per vertex (sum: float64)
    out_v   = finish(h_v, a_v, indeg_v, m_v)               # row-wise

This module is the translation of each DGL layer into those pieces (:class:`SageRule`,
:class:`GraphConvRule`, :class:`GinRule`, :class:`GatRule`).  How ``a`` is kept current after a batch
is the rule's :class:`~clustergnn.aggregate.base.Aggregation`, one module each, with the math and why
it is exact:

* ``SUM`` (SAGE mean/gcn, GraphConv, GIN sum/mean): STAG's additivity, :mod:`clustergnn.aggregate.sum`.
  Because ``finish`` is applied after the sum, messages are cached *after* the linear map where that
  is cheaper (DGL's ``lin_before_mp``), so a reader's update is a vector add, not a matmul.
* ``MAX`` (SAGE pool, GIN max): InkStream's monotonic rule, :mod:`clustergnn.aggregate.max`.
* ``ATTENTION`` (GAT): affected rows recomputed, :mod:`clustergnn.aggregate.attention`.

Propagation stops at vertices whose layer output did not change bit-for-bit.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clustergnn.aggregate import attention
from clustergnn.aggregate import max as max_family
from clustergnn.aggregate import sum as sum_family
from clustergnn.aggregate.base import Aggregation, FinishKind
from clustergnn.errors import UnsupportedModelError
from clustergnn.kernels import EdgeIndex

if TYPE_CHECKING:  # imported where DGL layers are turned into rules: rules themselves need no DGL
    from clustergnn._dgl import dglnn

Activation = Callable[[torch.Tensor], torch.Tensor]
__all__ = [
    "Aggregation",
    "FinishKind",
    "GatRule",
    "GinRule",
    "GraphConvRule",
    "LayerRule",
    "SageRule",
    "finish_rows",
    "rules_from_dgl",
]


# every sum aggregate in float32 under a drift bound (docs/engine.md, "float32 sums"); False: float64
NARROW_SUMS = True

SUPPORTED = (
    "dgl.nn.SAGEConv(aggregator_type in {'mean', 'gcn', 'pool'})",
    "dgl.nn.GraphConv(norm in {'both', 'right', 'left', 'none'}, with or without weight/bias)",
    "dgl.nn.GINConv(aggregator_type in {'sum', 'mean', 'max'}, any apply_func, fixed or learned eps)",
    "dgl.nn.GATConv(any number of heads, residual or not)",
)


@dataclass
class LayerRule:
    """One layer as message / aggregate / finish (see the module docstring).

    Attributes:
        aggregation: how the cached aggregate is kept current.
        in_dim, msg_dim, out_dim: widths of ``h`` (input), ``m`` and the layer output (heads flattened).
        uses_self: the output of ``v`` reads ``h_v`` or ``m_v`` (so a change of ``h_v`` re-finishes ``v``).
        message_uses_outdeg: ``m_u`` depends on ``u``'s out-degree (GraphConv ``left``/``both`` norm).
        name: for errors and tables.
    """

    aggregation: Aggregation
    in_dim: int
    msg_dim: int
    out_dim: int
    uses_self: bool
    message_uses_outdeg: bool
    name: str
    has_self_term: bool = False  # set by subclasses after __init__: the rule defines self_term()
    self_dim: int = 0  # width of self_term() when it differs from out_dim (GAT: heads before averaging)
    finish_uses_msg: bool = False  # finish() reads the row's own message (SAGE gcn); otherwise it gets None
    # message(h) is h itself, whatever the out-degree: the cached message duplicates the layer's input
    # (the engine aliases layer 0's message table to h0, clustergnn.caches)
    message_is_input: bool = False
    # the self term is recomputed at finish from the row's input instead of cached (clustergnn.caches):
    # where finish already runs a matmul per finished row (a widening SAGE mean: mean @ W_neigh^T), or
    # the self term is a scale of the input (GIN's (1 + eps) h, outside the fused finish)
    self_term_at_finish: bool = False
    # the sum is kept in float32 under a drift bound (clustergnn.caches: one rounding per batch per row,
    # budgeted, the row recomputed from its in-edges when the budget passes its limit); float64 if False
    narrow_sum: bool = False
    # the layer reads its input h only through its cached message and cached self term (a narrowing SAGE
    # mean: W_neigh h and W_self h + b), so h need not be kept: the previous layer detects changes on
    # those two images and reads of h finish it on demand (clustergnn.caches)
    input_kept_as_images: bool = False
    # the finish reads only cached rows (aggregate, self term, in-degree) and costs no matmul (a narrowing
    # SAGE mean: self + agg / deg), so a last layer's output need not be kept: it is finished on read
    finished_on_read: bool = False

    def __post_init__(self) -> None:
        self.narrow_sum = NARROW_SUMS and self.aggregation is Aggregation.SUM

    def message(self, h: torch.Tensor, outdeg: torch.Tensor) -> torch.Tensor:
        """``(n, in_dim) -> (n, msg_dim)``."""
        raise NotImplementedError

    def fused_finish(self) -> tuple[FinishKind, torch.Tensor | None] | None:
        """``(kind, bias)`` when ``finish`` is ``self term + norm(aggregate) + bias`` with no matmul and no
        post-processing, so the fused CPU kernel (``aggregate.sum.sum_rows``) can do it; else None."""
        return None

    def fused_gather(self) -> torch.Tensor | None:
        """See ``SageRule.fused_gather``; None for every other rule."""
        return None

    def _plain_post(self) -> bool:
        post = getattr(self, "post", None)
        return post is None or (post.act is None and post.norm is None)

    def message_and_self(self, h: torch.Tensor, outdeg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(message(h), self_term(h) or None)`` for all rows at once (the full recompute)."""
        return self.message(h, outdeg), (self.self_term(h) if self.has_self_term else None)

    def self_term(self, h: torch.Tensor) -> torch.Tensor:
        """The part of ``out_v`` that reads only ``h_v`` (e.g. ``W_self h_v + b``), cached per vertex so
        that finishing a row whose own input did not change costs no matmul."""
        raise NotImplementedError

    def finish(
        self,
        selfv: torch.Tensor | None,
        agg: torch.Tensor,
        indeg: torch.Tensor,
        msg: torch.Tensor,
        fresh: bool = False,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rows' output ``(n, out_dim)`` (heads flattened) from their cached self term, aggregate,
        in-degree and own message.  ``fresh``: ``selfv`` and ``agg`` are temporaries that may be
        overwritten (a full recompute), not views of the caches.  ``out``: where the result may be
        written (a rule that can returns ``out`` itself; others return a new tensor)."""
        raise NotImplementedError

    def aggregate(self, msg: torch.Tensor, edges: EdgeIndex, dst_msg: torch.Tensor) -> torch.Tensor:
        """Recompute the aggregate of ``edges.n_rows`` rows from their in-edges (sources index ``msg``)."""
        if self.aggregation is Aggregation.SUM:
            return sum_family.recompute(msg, edges)  # fp32, as DGL sums; callers widen what they cache
        if self.aggregation is Aggregation.MAX:
            return max_family.recompute(msg, edges)
        raise NotImplementedError

    def to(self, device: torch.device) -> LayerRule:
        for k, v in list(vars(self).items()):
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
            elif isinstance(v, torch.nn.Module):
                setattr(self, k, v.to(device))
        return self


def _linear(lin: torch.nn.Linear | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if lin is None:
        return None, None
    return lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone()


def _apply(x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None = None) -> torch.Tensor:
    if w is None:
        return x if b is None else x + b
    return F.linear(x, w, b)


def _check_dropout_free(layer: torch.nn.Module, name: str) -> None:
    for attr in ("feat_drop", "attn_drop"):
        mod = getattr(layer, attr, None)
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0 and layer.training:
            raise UnsupportedModelError(f"{name}: {attr}={mod.p} in training mode; call model.eval() before serving")


class _Post(torch.nn.Module):
    """The layer's own row-wise post-processing (activation, then SAGE's norm), as DGL applies it.
    A module holding private copies, so moving a rule to a device never moves the user's layers."""

    def __init__(self, act: Callable | None, norm: torch.nn.Module | None) -> None:
        super().__init__()
        self.act = copy.deepcopy(act) if isinstance(act, torch.nn.Module) else act
        self.norm = copy.deepcopy(norm) if norm is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act is not None:
            x = self.act(x)
        if self.norm is not None:
            x = self.norm(x)
        return x


def _post(layer: torch.nn.Module, attr: str = "activation") -> _Post:
    from clustergnn._dgl import dglnn

    norm = getattr(layer, "norm", None) if isinstance(layer, dglnn.SAGEConv) else None
    return _Post(getattr(layer, attr, None), norm)


class SageRule(LayerRule):
    """``dgl.nn.SAGEConv`` (Hamilton et al., https://arxiv.org/abs/1706.02216).

    mean: ``out_v = W_self h_v + W_neigh mean_{u->v} h_u + b``.  By linearity (``W mean(h) = mean(W h)``)
    the sum is kept of whichever of ``h_u`` and ``W_neigh h_u`` is narrower (DGL's ``lin_before_mp``):
    when the layer narrows, a reader's update is a vector add in the output width; when it widens, it
    is a vector add in the input width and one small matmul per finished row.  At equal widths the
    first layer keeps ``h_u`` (its message is then its input, ``msg0 = h0``) and later layers keep
    ``W_neigh h_u`` (``square_before``: their fan-out is large).  Empty mean = 0.
    gcn:  ``out_v = W_neigh (sum_{u->v} h_u + h_v) / (indeg_v + 1) + b``.
    pool: ``out_v = W_self h_v + W_neigh max_{u->v} relu(W_pool h_u + b_pool) + b``; empty max = 0.
    """

    def __init__(self, layer: dglnn.SAGEConv, square_before: bool = False) -> None:
        """``square_before``: a mean layer as wide out as in keeps ``W_neigh h_u`` (not ``h_u``) as its
        message, as a narrowing one does (``rules_from_dgl``: every layer but the first)."""
        kind = layer._aggre_type
        if kind not in ("mean", "gcn", "pool"):
            raise UnsupportedModelError(f"SAGEConv aggregator_type={kind!r} is not supported; supported: {SUPPORTED}")
        _check_dropout_free(layer, "SAGEConv")
        in_dim, out_dim = layer._in_src_feats, layer._out_feats
        if layer._in_dst_feats != in_dim:
            raise UnsupportedModelError("SAGEConv with different source/destination input widths is not supported")
        self.kind = kind
        self.w_neigh, _ = _linear(layer.fc_neigh)
        self.w_self, self.b_self = _linear(getattr(layer, "fc_self", None)) if kind != "gcn" else (None, None)
        self.bias = layer.bias.detach().clone() if kind == "gcn" and getattr(layer, "bias", None) is not None else None
        self.post = _post(layer)
        if kind == "pool":
            self.w_pool, self.b_pool = _linear(layer.fc_pool)
            agg, msg_dim = Aggregation.MAX, in_dim
        else:
            # equal widths (square_before): the message costs one GEMM row per changed source and the
            # finish none, instead of two GEMM rows (self and neighbour terms) per finished row;
            # docs/engine.md, "Updates where fan-out or width is large"
            self.lin_before = in_dim > out_dim or (in_dim == out_dim and square_before and kind == "mean")
            agg, msg_dim = Aggregation.SUM, (out_dim if self.lin_before else in_dim)
        super().__init__(agg, in_dim, msg_dim, out_dim, True, False, f"SAGEConv[{kind}]")
        self.has_self_term = kind != "gcn"
        self.finish_uses_msg = kind == "gcn"
        self.message_is_input = kind != "pool" and not self.lin_before
        self.input_kept_as_images = kind == "mean" and self.lin_before
        self.finished_on_read = kind == "mean" and self.lin_before
        self.self_term_at_finish = kind == "mean" and not self.lin_before

    def message_and_self(self, h, outdeg):
        if self.kind != "mean" or not self.lin_before:
            return super().message_and_self(h, outdeg)
        # both are linear maps of h: one GEMM with the weights stacked is cheaper than two
        if getattr(self, "_stacked", None) is None or self._stacked[0].device != h.device:
            zeros = torch.zeros(self.out_dim, dtype=self.w_neigh.dtype, device=self.w_neigh.device)
            self._stacked = (
                torch.cat([self.w_neigh, self.w_self]),
                torch.cat([zeros, self.b_self if self.b_self is not None else zeros]),
            )
        both = F.linear(h, *self._stacked)
        return both[:, : self.out_dim].contiguous(), both[:, self.out_dim :]

    def fused_finish(self):
        if self.kind == "mean" and self.lin_before and self._plain_post():
            return FinishKind.MEAN, None
        return None

    def fused_gather(self) -> torch.Tensor | None:
        """``W_neigh`` when finish is ``self + mean @ W_neigh^T`` (a widening mean layer, no post-processing):
        the engine then gathers the mean and self rows in one kernel and finishes with one GEMM."""
        if self.kind == "mean" and not self.lin_before and self._plain_post():
            return self.w_neigh
        return None

    def message(self, h: torch.Tensor, outdeg: torch.Tensor) -> torch.Tensor:
        if self.kind == "pool":
            return F.relu(F.linear(h, self.w_pool, self.b_pool))
        return F.linear(h, self.w_neigh) if self.lin_before else h

    def self_term(self, h):
        return _apply(h, self.w_self, self.b_self)

    def finish(self, selfv, agg, indeg, msg, fresh=False, out=None):
        if self.kind == "pool":
            return self.post(selfv + F.linear(agg, self.w_neigh))
        deg = indeg.to(agg.dtype).unsqueeze(1)
        if self.kind == "mean":
            neigh = (agg.div_(deg.clamp(min=1)) if fresh else agg / deg.clamp(min=1)).float()
        else:
            neigh = ((agg + msg.to(agg.dtype)) / (deg + 1)).float()
        plain = self._plain_post()
        if not self.lin_before:
            if self.kind == "mean":  # one fused pass: self term + neigh @ W_neigh^T
                if out is not None and plain:
                    return torch.addmm(selfv, neigh, self.w_neigh.t(), out=out)
                if fresh:
                    return self.post(selfv.addmm_(neigh, self.w_neigh.t()))
                return self.post(torch.addmm(selfv, neigh, self.w_neigh.t()))
            neigh = F.linear(neigh, self.w_neigh)
        if self.kind == "mean":
            if out is not None and plain:
                return torch.add(selfv, neigh, out=out)
            return self.post(selfv.add_(neigh) if fresh else selfv + neigh)
        return self.post(neigh if self.bias is None else neigh + self.bias)


class GraphConvRule(LayerRule):
    """``dgl.nn.GraphConv`` (Kipf & Welling, https://arxiv.org/abs/1609.02907).

    ``out_v = c_in(v) * sum_{u->v} c_out(u) h_u W + b`` with ``c = deg^-1/2`` (both), ``1/deg`` (left on the
    source, right on the destination) or 1 (none); degrees clamped at 1 as in DGL.  The cached message
    ``m_u = c_out(u) h_u [W]`` depends on ``u``'s out-degree, so a source whose out-degree changes
    re-sends its message to all its readers.  Zero in-degree vertices get ``b`` (DGL raises unless
    ``allow_zero_in_degree``; here the graph changes all the time, so they are always allowed).
    """

    def __init__(self, layer: dglnn.GraphConv) -> None:
        self.norm = layer._norm
        self.w = None if layer.weight is None else layer.weight.detach().clone()
        self.bias = None if layer.bias is None else layer.bias.detach().clone()
        self.post = _post(layer, "_activation")
        in_dim = layer._in_feats
        out_dim = layer._out_feats if self.w is not None else in_dim
        # by linearity the weight may go before or after the sum: keep the narrower side cached (as DGL)
        self.lin_before = self.w is not None and in_dim > out_dim
        msg_dim = out_dim if self.lin_before else in_dim
        super().__init__(
            Aggregation.SUM, in_dim, msg_dim, out_dim, False, self.norm in ("left", "both"), f"GraphConv[{self.norm}]"
        )
        self.message_is_input = not self.message_uses_outdeg and not self.lin_before

    def fused_finish(self):
        if (self.w is not None and not self.lin_before) or not self._plain_post():
            return None
        return {"both": FinishKind.SYM_NORM, "right": FinishKind.RIGHT_NORM}.get(self.norm, FinishKind.SUM), self.bias

    def message(self, h, outdeg):
        if self.norm in ("left", "both"):
            d = outdeg.to(h.dtype).clamp(min=1).unsqueeze(1)
            h = h * (torch.pow(d, -0.5) if self.norm == "both" else 1.0 / d)
        return torch.matmul(h, self.w) if self.lin_before else h

    def finish(self, selfv, agg, indeg, msg, fresh=False, out=None):
        rst = agg.float()
        if self.w is not None and not self.lin_before:
            rst = torch.matmul(rst, self.w)
        if self.norm in ("right", "both"):
            d = indeg.to(rst.dtype).clamp(min=1).unsqueeze(1)
            c = torch.pow(d, -0.5) if self.norm == "both" else 1.0 / d
            # one pass for scale and bias (DGL: two), written where the caller wants it when it can be
            if out is not None and self._plain_post():
                return torch.mul(rst, c, out=out) if self.bias is None else torch.addcmul(self.bias, rst, c, out=out)
            return self.post(rst * c if self.bias is None else torch.addcmul(self.bias, rst, c))
        if self.bias is not None:
            rst = rst + self.bias
        return self.post(rst)


class GinRule(LayerRule):
    """``dgl.nn.GINConv`` (Xu et al., https://arxiv.org/abs/1810.00826).

    ``out_v = f((1 + eps) h_v + AGG_{u->v} h_u)`` with ``AGG`` in sum/mean/max and ``f`` the (row-wise)
    ``apply_func``; the raw ``h_u`` is cached as message since ``f`` is nonlinear.  Empty aggregates = 0.
    """

    def __init__(self, layer: dglnn.GINConv, in_dim: int) -> None:
        kind = layer._aggregator_type
        self.kind = kind
        self.eps = layer.eps.detach().clone()
        self.apply_func = copy.deepcopy(layer.apply_func)  # a private copy: rules move to devices
        self.post = _post(layer)
        with torch.no_grad():
            probe = torch.zeros(2, in_dim)
            out_dim = int((self.apply_func(probe) if self.apply_func is not None else probe).shape[1])
        agg = Aggregation.MAX if kind == "max" else Aggregation.SUM
        super().__init__(agg, in_dim, in_dim, out_dim, True, False, f"GINConv[{kind}]")
        self.has_self_term = True
        self.self_dim = in_dim  # (1 + eps) h_v, before apply_func
        self.message_is_input = True
        # the self term is a scale of the input: recomputed (the same product, bit for bit) where the
        # finish is the rule's own; the fused finish kernel reads a cached table
        self.self_term_at_finish = self.fused_finish() is None

    def message(self, h, outdeg):
        return h

    def fused_finish(self):
        if self.kind == "max" or self.apply_func is not None or not self._plain_post():
            return None
        return (FinishKind.MEAN if self.kind == "mean" else FinishKind.SUM), None

    def self_term(self, h):
        return (1 + self.eps) * h

    def finish(self, selfv, agg, indeg, msg, fresh=False, out=None):
        if self.kind == "mean":
            agg = agg / indeg.to(agg.dtype).clamp(min=1).unsqueeze(1)
        rst = selfv + agg.float()
        if self.apply_func is not None:
            rst = self.apply_func(rst)
        return self.post(rst)


class GatRule(LayerRule):
    """``dgl.nn.GATConv`` (Velickovic et al., https://arxiv.org/abs/1710.10903).

    ``z_u = W h_u`` split in ``H`` heads, ``e_uv = LeakyReLU(a_l . z_u + a_r . z_v)``,
    ``alpha_uv = softmax_{u->v}(e_uv)``, ``out_v = sum_u alpha_uv z_u (+ residual) + b``.  The message
    cached per vertex is ``[z_u, a_l . z_u]``; any change to an in-neighbour or to the in-edge set
    re-normalises the softmax, so affected rows are recomputed from their in-edges (exact by
    construction).  Hidden layers flatten heads to ``H * F``; the last layer averages them (DGL's example).
    """

    def __init__(self, layer: dglnn.GATConv, last: bool) -> None:
        if hasattr(layer, "fc_src"):
            raise UnsupportedModelError("GATConv with separate source/destination widths is not supported")
        _check_dropout_free(layer, "GATConv")
        self.heads, self.f = layer._num_heads, layer._out_feats
        self.w, _ = _linear(layer.fc)
        self.attn_l = layer.attn_l.detach().clone().view(self.heads, self.f)
        self.attn_r = layer.attn_r.detach().clone().view(self.heads, self.f)
        self.slope = layer.leaky_relu.negative_slope
        res = layer.res_fc
        self.res_w, self.res_b = _linear(res) if isinstance(res, torch.nn.Linear) else (None, None)
        self.res_identity = res is not None and not isinstance(res, torch.nn.Linear)
        self.has_res = res is not None
        self.bias = layer.bias.detach().clone() if getattr(layer, "has_explicit_bias", False) else None
        self.post = _post(layer)
        self.last = last
        in_dim = layer._in_src_feats
        hf = self.heads * self.f
        super().__init__(
            Aggregation.ATTENTION,
            in_dim,
            hf + self.heads,
            self.f if last else hf,
            True,
            False,
            f"GATConv[{self.heads} heads]",
        )
        self.has_self_term = self.has_res  # the bias is added in finish: no per-vertex copy of a constant
        self.self_dim = hf

    def message(self, h, outdeg):
        z = F.linear(h, self.w)
        el = (z.view(-1, self.heads, self.f) * self.attn_l).sum(-1)
        return torch.cat([z, el], dim=1)

    def aggregate(self, msg, edges, dst_msg):
        hf = self.heads * self.f
        er = (dst_msg[:, :hf].view(-1, self.heads, self.f) * self.attn_r).sum(-1)  # (n_rows, H)
        return attention.recompute(msg, edges, er, self.heads, self.f, self.slope)

    def self_term(self, h):
        """The residual, ``(n, H * F)`` (only layers with one have a self term)."""
        return h if self.res_identity else F.linear(h, self.res_w, self.res_b)

    def finish(self, selfv, agg, indeg, msg, fresh=False, out=None):
        rst = agg if selfv is None else agg + selfv  # DGL adds the residual, then the bias
        if self.bias is not None:
            rst = rst + self.bias
        rst = self.post(rst.view(-1, self.heads, self.f))
        return rst.mean(1) if self.last else rst.flatten(1)


def finish_rows(
    rule: LayerRule,
    agg: torch.Tensor,
    indeg: torch.Tensor,
    selfc: torch.Tensor | None = None,
    h_in: torch.Tensor | None = None,
    msg: torch.Tensor | None = None,
    activation: Activation | None = None,
) -> torch.Tensor:
    """Rows' layer output from their finish inputs: the one finish both :meth:`clustergnn.engine.Engine.finish`
    and a read replica that finishes the last layer (:class:`clustergnn.replica.FinishingReplica`) call.

    ``agg``: the rows' aggregates; ``indeg``: their in-degrees; ``selfc``: their cached self terms, or
    None where the rule keeps none (``self_term_at_finish``: computed here from ``h_in``, the rows'
    inputs); ``msg``: their own messages (read only where ``rule.finish_uses_msg``); ``activation``: applied
    after (None for a last layer)."""
    if selfc is not None:
        selfv = selfc
    else:  # not cached (rule.self_term_at_finish): from the row's input
        selfv = rule.self_term(h_in) if rule.has_self_term else None
    out = rule.finish(selfv, agg, indeg, msg if rule.finish_uses_msg else None)
    return activation(out) if activation is not None else out


def rules_from_dgl(layers: list[torch.nn.Module], in_dim: int) -> list[LayerRule]:
    """One rule per DGL layer, in order; ``UnsupportedModelError`` naming an unsupported layer."""
    from clustergnn._dgl import dglnn

    if not layers:
        raise UnsupportedModelError("at least one layer is needed")
    rules: list[LayerRule] = []
    width = in_dim
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        if isinstance(layer, dglnn.SAGEConv):
            # past the first layer, a square mean layer multiplies before the sum: its fan-out (rows
            # finished) far exceeds its changed sources; the first keeps its input as message (msg0 = h0)
            rule: LayerRule = SageRule(layer, square_before=i > 0)
        elif isinstance(layer, dglnn.GraphConv):
            rule = GraphConvRule(layer)
        elif isinstance(layer, dglnn.GINConv):
            rule = GinRule(layer, width)
        elif isinstance(layer, dglnn.GATConv):
            rule = GatRule(layer, last)
        else:
            raise UnsupportedModelError(
                f"layer {i} is {type(layer).__module__}.{type(layer).__name__}, which has no exact incremental "
                f"rule; supported: {'; '.join(SUPPORTED)}"
            )
        if rule.in_dim != width:
            raise UnsupportedModelError(
                f"layer {i} ({rule.name}) expects {rule.in_dim} input features, but gets {width}"
            )
        rules.append(rule)
        width = rule.out_dim
    return rules
