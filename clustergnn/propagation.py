"""Propagation: how one batch's changes move through the layers, and where each layer's work goes.

For each layer ``l`` (:meth:`Propagation.propagate_layer`): the sources whose message changed (new
``h_l`` or, for GraphConv's norms, a new out-degree), the rows those messages reach plus the rows whose
in-edges or own input changed, then per layer the cheaper exact way to bring their aggregates up to
date: the family's delta rule (:mod:`clustergnn.aggregate`) or a recompute of the affected rows from
their in-edges (attention always; any rule when a batch touches more in-edges than it would re-read).
Rows whose output did not change bit for bit stop the propagation.

:class:`Propagation` is the propagating half of :class:`clustergnn.engine.Engine` (which inherits it),
kept apart so that the orchestrator (apply, reads, construction) and this concept each have one home.
It works on the engine's state: ``graph``, ``caches`` (with the ``h``/``msg``/``agg``/``selfc``/
``ghost``/``remote_out``/``version`` views), ``rules``, ``mode``, ``fused``, ``activation``, ``round``,
``HAS_GHOSTS``, ``_scratch``, ``finish`` and ``recompute_agg``.  Its methods are public because
:class:`clustergnn.partitioned.PartitionEngine` runs them step by step, between message exchanges.
"""

from __future__ import annotations

import numpy as np
import torch

from clustergnn.aggregate import max as max_family
from clustergnn.aggregate import sum as sum_family
from clustergnn.aggregate.base import Aggregation, BatchContext, DeltaStep
from clustergnn.caches import gather_rows, put_rows
from clustergnn.graph import EdgeLog, union
from clustergnn.results import LayerDelta

DELTA_COST = 3  # cost of one delta contribution relative to one in-edge of a recomputed row (measured)


class Propagation:
    """Layer-by-layer propagation of a batch's changes (module docstring); mixed into ``Engine``."""

    def batch_context(
        self, edges: EdgeLog, new: np.ndarray, h0_old: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> BatchContext:
        """What a batch changed structurally, filtered to what the layer steps need (``h0_old``: the
        rows of ``h[0]`` the batch's feature updates overwrote, ``Pending.feat_old``)."""
        g = self.graph
        live = g.alive & ~self.ghost[: g.capacity] if self.HAS_GHOSTS else g.alive
        add_src, add_dst = edges.added()
        rem_src, rem_dst = edges.removed()
        out_changed = self._unique_live([add_src, rem_src], live)
        touched = self._unique_live([add_dst, rem_dst], live)
        old = tuple(h0_old) if h0_old and self.caches.msg0_is_h0 else ()
        return BatchContext(add_src, add_dst, rem_src, rem_dst, out_changed, touched, new, live, old)

    def layer_sources(
        self, li: int, ctx: BatchContext, changed: np.ndarray, extra_out_changed: np.ndarray | None = None
    ) -> np.ndarray:
        """Owned vertices whose layer-``li`` message changes: new ``h`` or (if it matters) new out-degree."""
        if not self.rules[li].message_uses_outdeg:
            return changed
        parts = [changed, ctx.out_changed] + ([extra_out_changed] if extra_out_changed is not None else [])
        return union(*parts)

    def _outdeg(self, slots: np.ndarray) -> np.ndarray:
        """Global out-degree: local edges plus edges held by other partitions (0 in one process)."""
        return self.graph.out_degree(slots) + self.remote_out[slots]

    def messages(self, li: int, srcs: np.ndarray) -> torch.Tensor:
        """New layer-``li`` messages ``(len(srcs), msg_dim)`` of ``srcs`` from their current ``h_li``."""
        if not srcs.size:
            return self.caches.zeros(0, self.rules[li].msg_dim)
        h = gather_rows(self.h[li], self.caches.t(srcs))
        return self.rules[li].message(h, torch.from_numpy(self._outdeg(srcs)).to(self.device))

    def _messages_and_self(
        self, li: int, srcs: np.ndarray, changed: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New messages of ``srcs`` and, when the sources are exactly the changed rows (the message does
        not read the out-degree), their new self terms from the same gathered rows in one GEMM."""
        if srcs is not changed or not srcs.size or self.selfc[li] is None:
            return self.messages(li, srcs), None
        h = gather_rows(self.h[li], self.caches.t(srcs))
        return self.rules[li].message_and_self(h, torch.from_numpy(self._outdeg(srcs)).to(self.device))

    def _propagate(
        self,
        edges: EdgeLog,
        changed: np.ndarray,
        new: np.ndarray,
        h0_old: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[LayerDelta]:
        ctx = self.batch_context(edges, new, h0_old)
        deltas = []
        for li in range(self.num_layers):
            srcs = self.layer_sources(li, ctx, changed)
            delta = self.propagate_layer(li, ctx, changed, srcs, *self._messages_and_self(li, srcs, changed))
            deltas.append(delta)
            changed = delta.changed_slots
        return deltas

    def propagate_layer(
        self,
        li: int,
        ctx: BatchContext,
        changed: np.ndarray,
        srcs: np.ndarray,
        m_new: torch.Tensor,
        self_new: torch.Tensor | None = None,
    ) -> LayerDelta:
        """One layer of propagation.

        Args:
            changed: owned rows whose input ``h_li`` changed this batch.
            srcs, m_new: every vertex whose layer-``li`` message changed, with its new message (owned
                sources computed here; in a partition, ghost sources received from their owners).
            self_new: the new self terms of ``changed``, when the caller computed them with the messages.
        Returns the layer's delta; ``changed_slots`` are the owned rows whose ``h_{li+1}`` changed.
        """
        g, rule, t = self.graph, self.rules[li], self.caches.t
        incremental = self.mode == "incremental"
        tables = self.caches.layer(li)
        if tables.selfc is not None and changed.size:
            c_idx = t(changed)
            selfv = self_new if self_new is not None else rule.self_term(gather_rows(self.h[li], c_idx))
            put_rows(tables.selfc, c_idx, selfv)
        if li == 0 and ctx.h0_old:
            self._restore_old_messages(ctx)
        fused_sum = self.fused and rule.aggregation is Aggregation.SUM
        if fused_sum:  # the fused kernel takes the out-neighbours as CSR, without an owner per entry
            de_ptr, de = g.out.gather_csr(srcs)
            se = None
        else:
            se, de = g.out_edges(srcs)
        rows = self._unique_live([de, ctx.touched, ctx.new] + ([changed] if rule.uses_self else []), ctx.live)
        if li == self.num_layers - 1 and self._defers_last_layer:
            put_rows(tables.msg, t(srcs), m_new)  # the last hop is finished on read
            self.version[rows] = self.round
            return LayerDelta(li + 1, len(srcs), g.ext_of[rows], deferred=True, changed_slots=rows)
        indeg = g.in_degree(rows)
        # Per layer, the cheaper exact way: deltas touch one entry per changed edge contribution,
        # recomputation one per in-edge of the affected rows (a float32 SpMM, no sorting, so each entry
        # costs about a third of a float64 delta).  Large batches tip towards recomputation.
        recompute = (
            not incremental
            or rule.aggregation is Aggregation.ATTENTION
            or (DELTA_COST * (len(de) + len(ctx.add_src) + len(ctx.rem_src)) > int(indeg.sum()))
        )
        relu = li < self.num_layers - 1 and self.activation is not None
        if fused_sum and not recompute:
            step = DeltaStep(rows, srcs, m_new, de, ctx, de_ptr=de_ptr)
            changed_next = sum_family.update_and_finish_fused(
                rule, tables, step, indeg, relu, self.activation, self._scratch, lambda: self.finish(li, rows)
            )
            if ctx.new.size:
                changed_next = self._unique_live([changed_next, ctx.new], ctx.live)
        else:
            s_idx = t(srcs)
            agg_rows = None
            if recompute:
                put_rows(tables.msg, s_idx, m_new)
                agg_rows = self.recompute_agg(li, rows)
                if tables.agg is not None:
                    put_rows(tables.agg, t(rows), agg_rows)
            else:
                step = DeltaStep(
                    rows,
                    srcs,
                    m_new,
                    de,
                    ctx,
                    m_old=gather_rows(tables.msg, s_idx),
                    se=se,
                    se_pos=np.repeat(np.arange(len(srcs)), g.out_degree(srcs)),
                )
                if rule.aggregation is Aggregation.SUM:
                    sum_family.update(tables, step, self._scratch)
                else:
                    max_family.update(tables, step, g, self._scratch, lambda redo: self.recompute_agg(li, redo))
            out = self.finish(li, rows, agg_rows)
            changed_next = self.caches.store(li, rows, out, ctx.new, incremental, self.fused)
        if li == self.num_layers - 1:
            self.version[changed_next] = self.round
        return LayerDelta(li + 1, len(rows), g.ext_of[changed_next], changed_slots=changed_next)

    def _restore_old_messages(self, ctx: BatchContext) -> None:
        """Where ``msg[0]`` is ``h[0]`` (:mod:`clustergnn.caches`): write back the pre-batch rows of the
        vertices whose features the batch updated, so that layer 0's update reads their *old* message,
        as it reads any cached one: the sum's ``m'_u - m_u`` and ``E-`` terms, the max rule's suspect
        tests.  With ``S`` the sources whose message changed, an update that read ``m~_u`` instead of
        ``m_u`` would be off by ``sum_{(u,v) in G, u in S} (m_u - m~_u)``: only edges of the graph
        before the batch count, so new vertices (no such edges) need nothing.  The new rows (already
        taken as ``m_new``, and the self terms from them) go back with the update's ``msg[srcs] =
        m_new``; a vertex updated and then removed keeps its old row until its rows are cleared.
        Runs in reverse, so a slot updated twice ends with its first copy: the pre-batch row."""
        h0 = self.h[0]
        for idx, old in reversed(ctx.h0_old):
            h0.index_copy_(0, idx, old)

    def _unique_live(self, parts: list[np.ndarray], live: np.ndarray) -> np.ndarray:
        """Sorted distinct values of ``parts`` that are ``live``."""
        return self._scratch.unique_live(parts, live, self.fused)
