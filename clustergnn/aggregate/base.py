"""What every aggregation family shares: the family enum, the fused finish kinds, and the typed
arguments of one layer's incremental update.

A layer keeps, per vertex ``v``, an aggregate ``a_v = AGG_{u in N_in(v)} m_u`` of its in-neighbours'
cached messages (:mod:`clustergnn.rules`).  Each family (one module of this package) says how ``a`` is
recomputed from scratch and how it is brought up to date after a batch:

* :mod:`clustergnn.aggregate.sum` - ``SUM`` (STAG's additivity, float64 aggregates);
* :mod:`clustergnn.aggregate.max` - ``MAX`` (InkStream's monotonic rule);
* :mod:`clustergnn.aggregate.attention` - ``ATTENTION`` (GAT: affected rows recomputed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch


class Aggregation(enum.Enum):
    """How a layer's cached aggregate is kept current (one module of :mod:`clustergnn.aggregate` each)."""

    SUM = "sum"
    MAX = "max"
    ATTENTION = "attention"


class FinishKind(enum.IntEnum):
    """How a sum layer's float64 aggregate becomes its neighbour term in the fused finish
    (``rules.LayerRule.fused_finish``; ``sum.sum_rows`` takes ``int(kind)``).

    ``SUM``: ``float32(a)``; ``MEAN``: ``float32(a / max(deg, 1))`` (float64 division, one rounding);
    ``SYM_NORM``: ``float32(a) * (1 / sqrt(max(deg, 1)))``; ``RIGHT_NORM``: ``float32(a) * (1 / max(deg, 1))``
    (GraphConv's norms scale in float32, as DGL does).
    """

    SUM = 0
    MEAN = 1
    SYM_NORM = 2
    RIGHT_NORM = 3


@dataclass(frozen=True)
class BatchContext:
    """A batch's structural changes as the layer steps use them (local slots).

    Attributes:
        add_src, add_dst: the edges added (``E+``), ``(n_add,)`` each.
        rem_src, rem_dst: the edges removed (``E-``, vertex removals included), ``(n_rem,)`` each.
        out_changed: owned vertices whose local out-degree changed.
        touched: owned vertices whose in-edges changed.
        new: owned vertices added by the batch.
        live: ``(capacity,)`` bool: the slot is alive and owned (not a ghost).
        h0_old: ``(index, rows)`` per feature update of the batch, in order: the rows of ``h[0]`` it
            overwrote (``transaction.Pending.feat_old``); used where ``msg[0]`` is ``h[0]``.
    """

    add_src: np.ndarray
    add_dst: np.ndarray
    rem_src: np.ndarray
    rem_dst: np.ndarray
    out_changed: np.ndarray
    touched: np.ndarray
    new: np.ndarray
    live: np.ndarray
    h0_old: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()


@dataclass(frozen=True)
class DeltaStep:
    """One layer's incremental update: what changed for its aggregate in this batch.

    Attributes:
        rows: ``(n_rows,)`` sorted live rows whose aggregate (and output) is brought up to date.
        srcs: ``(S,)`` vertices whose message changed; ``m_new`` ``(S, msg_dim)`` their new messages.
        m_old: ``(S, msg_dim)`` their cached messages (None for the fused sum, which reads the cache).
        de: ``(E_S,)`` the out-neighbours of ``srcs``, source-major; ``se_pos`` ``(E_S,)`` the index into
            ``srcs`` of each entry's source (None for the fused sum, which takes ``de_ptr`` instead);
            ``se`` ``(E_S,)`` the source slot of each entry (the max rule's).
        de_ptr: ``(S + 1,)`` CSR offsets of ``de`` per source (the fused sum's).
        ctx: the batch's edge additions and removals.
    """

    rows: np.ndarray
    srcs: np.ndarray
    m_new: torch.Tensor
    de: np.ndarray
    ctx: BatchContext
    m_old: torch.Tensor | None = None
    se: np.ndarray | None = None
    se_pos: np.ndarray | None = None
    de_ptr: np.ndarray | None = None
