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
``ghost``/``remote_out``/``version``/``drift`` views), ``rules``, ``mode``, ``fused``, ``activation``, ``round``,
``HAS_GHOSTS``, ``_scratch``, ``finish`` and ``recompute_agg``.  Its methods are public because
:class:`clustergnn.partitioned.PartitionEngine` runs them step by step, between message exchanges.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from clustergnn import cpu_kernels, steptimes
from clustergnn.aggregate import max as max_family
from clustergnn.aggregate import sum as sum_family
from clustergnn.aggregate.base import Aggregation, BatchContext, DeltaStep
from clustergnn.caches import DRIFT_MAX, DRIFT_MIN, ROUNDING, gather_rows, put_rows
from clustergnn.graph import EdgeLog, members, union
from clustergnn.results import LayerDelta

DELTA_COST = 3  # cost of one delta contribution relative to one in-edge of a recomputed row (measured)
# The fused sum delta by pull (aggregate.sum.update_pulled), in the same unit: per in-edge of an affected
# row scanned, and per term found; against it, the fused push delta's cost per term (sum_rows: it sorts
# its terms by row).  Measured on R-MAT scale 19, SAGE-mean layer 2, B = 1,000 and 10,000 (docs/engine.md,
# "Updates where fan-out or width is large"): recompute 13-17 ns per in-edge, push 60-77 ns per term; the
# pull without a sort (session 24) ~1.5 ns per in-edge scanned and ~10-35 ns per term (a busy box), taken
# here at the high end so that it is chosen only where it clearly pays (B >= 1,000 on that graph; never at
# B = 1, where PULL_MIN_TERMS keeps the push).
PULL_DELTA = True
PULL_SCAN_COST = 0.08
PULL_HIT_COST = 0.7
FUSED_PUSH_COST = 4.5
PULL_MIN_TERMS = 1 << 18  # terms from which the affected rows are read without gathering the out-edges, and
# the pull is considered
# a partition recomputes at most this many rows at once (Propagation._recompute_in_chunks): an owner's load
# rounds recompute about all its rows, whose temporaries (aggregates, self terms, outputs) set its peak
RECOMPUTE_CHUNK = 1 << 16


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
        h = gather_rows(self.h[li], self.caches.rt(srcs))
        return self.rules[li].message(h, torch.from_numpy(self._outdeg(srcs)).to(self.device))

    def _messages_and_self(
        self, li: int, srcs: np.ndarray, changed: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New messages of ``srcs`` and, when the sources are exactly the changed rows (the message does
        not read the out-degree), their new self terms from the same gathered rows in one GEMM."""
        if self.h[li] is None:  # stored as these images by layer li - 1 (_store_images)
            done, m, selfv = self._images.pop(li)
            assert srcs is changed and done is changed, "a layer kept as images needs no out-degree"
            return m, selfv
        if srcs is not changed or not srcs.size or self.selfc[li] is None:
            return self.messages(li, srcs), None
        h = gather_rows(self.h[li], self.caches.rt(srcs))
        return self.rules[li].message_and_self(h, torch.from_numpy(self._outdeg(srcs)).to(self.device))

    def _propagate(
        self,
        edges: EdgeLog,
        changed: np.ndarray,
        new: np.ndarray,
        h0_old: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> list[LayerDelta]:
        ctx = self.batch_context(edges, new, h0_old)
        if steptimes.ON:
            steptimes.mark("context")
        self._images: dict[int, tuple[np.ndarray, torch.Tensor, torch.Tensor | None]] = {}
        deltas = []
        for li in range(self.num_layers):
            srcs = self.layer_sources(li, ctx, changed)
            m_and_self = self._messages_and_self(li, srcs, changed)
            if steptimes.ON:
                steptimes.layer(li)
                steptimes.lmark("messages")
            delta = self.propagate_layer(li, ctx, changed, srcs, *m_and_self)
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
            c_idx = self.caches.rt(changed)
            selfv = self_new if self_new is not None else rule.self_term(gather_rows(self.h[li], c_idx))
            put_rows(tables.selfc, c_idx, selfv)
        if li == 0 and ctx.h0_old:
            self._restore_old_messages(ctx)
        if steptimes.ON:
            steptimes.lmark("self_terms")
        fused_sum = self.fused and rule.aggregation is Aggregation.SUM
        extra = [ctx.touched, ctx.new] + ([changed] if rule.uses_self else [])
        n_terms = int(g.out_degree(srcs).sum()) + len(ctx.add_src) + len(ctx.rem_src)
        se = de_ptr = de = None
        may_pull = fused_sum and incremental and not self.HAS_GHOSTS  # the pull skips a ghost's terms
        if may_pull and n_terms >= PULL_MIN_TERMS:  # the affected rows straight from the out-blocks
            bits = np.zeros(len(ctx.live) // 64 + 1, dtype=np.uint64)
            values = np.concatenate(extra).astype(np.int64, copy=False)
            o = g.out
            rows = cpu_kernels.unique_live_neighbours(values, o.start, o.length, o.pool, srcs, ctx.live, bits)
        else:
            if fused_sum:  # the fused kernel takes the out-neighbours as CSR, without an owner per entry
                de_ptr, de = g.out.gather_csr(srcs)
            else:
                se, de = g.out_edges(srcs)
            rows = self._unique_live([de, *extra], ctx.live)
        if li == self.num_layers - 1 and self._defers_last_layer:
            put_rows(tables.msg, t(srcs), m_new)  # the last hop is finished on read
            self.version[rows] = self.round
            return LayerDelta(li + 1, len(srcs), g.ext_of[rows], deferred=True, changed_slots=rows)
        indeg = g.in_degree(rows)
        # Per layer, the cheaper exact way: deltas touch one entry per changed edge contribution,
        # recomputation one per in-edge of the affected rows (a float32 SpMM, no sorting, so each entry
        # costs about a third of a float64 delta).  Large batches tip towards recomputation.  The fused
        # sum has a third way, the same delta found by scanning the affected rows' in-edges (pull): a
        # cheap lookup per in-edge plus a term per hit, no sort; it pays where the terms are a large
        # share of the in-edges (the last layers of a large batch on a skewed graph), and is considered
        # only from PULL_MIN_TERMS terms (small batches keep the push, bit-identical to the torch path).
        terms, in_edges = n_terms, int(indeg.sum())
        recompute = not incremental or rule.aggregation is Aggregation.ATTENTION or (DELTA_COST * terms > in_edges)
        pull_cost = PULL_SCAN_COST * in_edges + PULL_HIT_COST * terms
        pull = (
            may_pull
            and PULL_DELTA
            and terms >= PULL_MIN_TERMS
            and pull_cost <= (in_edges if recompute else min(FUSED_PUSH_COST * terms, in_edges))
        )
        if pull:
            recompute = False
        elif de is None and not recompute:  # the push after all: it needs the out-edges
            de_ptr, de = g.out.gather_csr(srcs)
        relu = li < self.num_layers - 1 and self.activation is not None
        if steptimes.ON:
            steptimes.lmark("affected")
            steptimes.count("sources", len(srcs))
            steptimes.count("rows", len(rows))
            steptimes.count("delta_terms", terms)
            steptimes.count("in_edges", in_edges)
            steptimes.count("recomputed_rows", len(rows) if recompute else 0)
            steptimes.count("pulled_rows", len(rows) if pull else 0)
        last = li == self.num_layers - 1
        images = tables.h_out is None and not last  # the output is kept as the next layer's images
        on_read = tables.h_out is None and last  # the output is finished on read (clustergnn.caches)
        # a float32 sum's drift budget, taken by the fused delta (sum_rows) while each row is in cache
        over = np.empty(len(rows), dtype=bool) if fused_sum and tables.drift is not None else None
        budget = None if over is None or recompute else (over, DRIFT_MIN, DRIFT_MAX, ROUNDING)
        taken = None if budget is None else over
        if fused_sum and not recompute and tables.h_out is not None:
            step = self._owned_step(DeltaStep(rows, srcs, m_new, de, ctx, de_ptr=de_ptr))
            changed_next = sum_family.update_and_finish_fused(
                rule,
                tables,
                step,
                indeg,
                relu,
                self.activation,
                self._scratch,
                lambda: self.finish(li, rows),
                (g.inn.start, g.inn.length, g.inn.pool) if pull else None,
                budget,
            )
            changed_next = self.caches.slots_of_rows(changed_next)  # (step.rows are owned rows)
            if ctx.new.size:
                changed_next = self._unique_live([changed_next, ctx.new], ctx.live)
        else:
            s_idx = t(srcs)
            agg_rows = None
            chunked = (
                recompute and self.HAS_GHOSTS and (tables.h_out is not None or on_read) and len(rows) > RECOMPUTE_CHUNK
            )
            if chunked:  # a partition's large recompute (an owner's load rounds): a chunk of rows at a time
                put_rows(tables.msg, s_idx, m_new)
                changed_next = self._recompute_in_chunks(li, rows, ctx.new, incremental)
            elif recompute:
                put_rows(tables.msg, s_idx, m_new)
                agg_rows = self.recompute_agg(li, rows)
                if tables.agg is not None:
                    put_rows(tables.agg, self.caches.rt(rows), agg_rows)
                if steptimes.ON:
                    steptimes.lmark("recompute")
            elif fused_sum:  # the output is not kept (images, on read): the fused delta alone
                step = self._owned_step(DeltaStep(rows, srcs, m_new, de, ctx, de_ptr=de_ptr))
                if pull:
                    inn = g.inn
                    sum_family.update_pulled(
                        tables, step, indeg, self._scratch, None, inn.start, inn.length, inn.pool, budget
                    )
                else:
                    sum_family.update_fused(tables, step, indeg, self._scratch, None, budget)
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
                    sum_family.update(tables, self._owned_step(step), self._scratch)
                else:
                    recompute_rows = lambda redo: self.recompute_agg(li, redo)  # noqa: E731
                    max_family.update(tables, step, g, self._scratch, recompute_rows, self.caches.rowmap)
            if tables.h_out is None and tables.drift is not None:  # refreshed before the one finish below
                self._budget_drift(li, rows, recompute, indeg, taken)
            if steptimes.ON:
                steptimes.lmark("delta")
            if chunked:
                pass  # finished and stored chunk by chunk (_recompute_in_chunks)
            elif on_read:  # every updated row counts as changed: there is no stored output to compare
                changed_next = rows
            elif images:
                out = None
                if self.fused and self.caches.rowmap is None:  # (its rows index agg, selfc and msg alike)
                    out = sum_family.gathered_output(rule, tables, rows, indeg, relu, self.activation)
                if out is not None:  # the gathered finish (agg_rows, if any, are in the table), then relu
                    out = out.relu_() if relu else out
                else:
                    out = self.finish(li, rows, agg_rows)
                changed_next = self._store_images(li, rows, out, ctx.new, incremental)
            else:
                out = self.finish(li, rows, agg_rows)
                changed_next = self.caches.store(li, rows, out, ctx.new, incremental, self.fused)
        if tables.drift is not None and tables.h_out is not None:  # a float32 sum (LayerRule.narrow_sum)
            changed_next = self._refresh_drifting(li, rows, changed_next, recompute, incremental, indeg, taken)
        if li == self.num_layers - 1:
            self.version[changed_next] = self.round
        if steptimes.ON:
            steptimes.lmark("store")
        return LayerDelta(li + 1, len(rows), g.ext_of[changed_next], changed_slots=changed_next)

    def _recompute_in_chunks(self, li: int, rows: np.ndarray, force: np.ndarray, detect: bool) -> np.ndarray:
        """Recompute, finish and store layer ``li``'s ``rows`` :data:`RECOMPUTE_CHUNK` rows at a time (the
        messages are already stored), so that the aggregates, self terms and outputs in flight are a
        chunk's, not the whole partition's.  Each row's aggregate is the same sum over its in-edges as in
        one pass; its finish is the same products (a GEMM over fewer rows may round differently in the
        last bit, as any batch size may).  Returns the rows whose output changed (plus ``force``)."""
        tables, parts = self.caches.layer(li), []
        for a in range(0, len(rows), RECOMPUTE_CHUNK):
            part = rows[a : a + RECOMPUTE_CHUNK]
            agg_rows = self.recompute_agg(li, part)
            if tables.agg is not None:
                put_rows(tables.agg, self.caches.rt(part), agg_rows)
            if tables.h_out is None:  # the output is finished on read: the aggregate is what is kept
                parts.append(part)
                continue
            out = self.finish(li, part, agg_rows)
            parts.append(self.caches.store(li, part, out, part[:0], detect, self.fused))
            del agg_rows, out
        return union(*parts, force) if parts else force

    def _owned_step(self, step: DeltaStep) -> DeltaStep:
        """``step`` with its destinations as owned rows where the engine has them (:mod:`clustergnn.caches`,
        "Owned rows"): ``rows``, ``de`` and the batch's E+/E- destinations index ``agg``/``h``/``selfc``,
        while sources (``srcs``, E+/E- sources) stay slots, which index ``msg``.  Every destination is an
        owned vertex (an edge lives with its destination), so each has a row.  ``step`` itself otherwise."""
        c = self.caches
        if c.rowmap is None:
            return step
        ctx = step.ctx
        # the sum paths read ``live`` only for its length (their row-position map's size): one per row
        live = np.broadcast_to(np.True_, (c.row_capacity,))
        owned = dataclasses.replace(ctx, add_dst=c.rows(ctx.add_dst), rem_dst=c.rows(ctx.rem_dst), live=live)
        de = c.rows(step.de) if step.de is not None else None
        return dataclasses.replace(step, rows=c.rows(step.rows), de=de, ctx=owned)

    def _budget_drift(
        self, li: int, rows: np.ndarray, recomputed: bool, indeg: np.ndarray, over: np.ndarray | None = None
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """A float32 sum's drift bound (:mod:`clustergnn.caches`) after layer ``li`` updated ``rows``
        (``indeg`` theirs): each row was rounded at most once (the batch's terms are added in float64),
        off by at most ``ROUNDING`` times the row's largest stored entry; that bound is added to the
        row's budget, and a row whose budget passes ``clamp(indeg, DRIFT_MIN, DRIFT_MAX)`` such
        roundings of its current size is recomputed from its in-edges (as a large batch's recompute, as
        DGL sums), its budget reset.  Rows just recomputed (``recomputed``) only get their budget reset.
        ``over``: the budget was already taken by the fused delta (``sum_rows``), these rows are over it.
        Returns the refreshed rows and their new aggregate."""
        drift, idx = self.drift[li], self.caches.rt(rows)
        if recomputed or not rows.size:
            drift.index_fill_(0, idx, 0.0)
            return rows[:0], None
        agg = self.agg[li]
        if over is not None:
            redo = rows[over]
        elif self.fused:  # the same float32 arithmetic in one pass (a few small torch ops cost ~0.1 ms)
            over = np.empty(len(rows), dtype=bool)
            rows64, deg64 = (np.ascontiguousarray(a, dtype=np.int64) for a in (self.caches.rows(rows), indeg))
            sum_family.drift_budget(agg.numpy(), drift.numpy(), rows64, deg64, DRIFT_MIN, DRIFT_MAX, ROUNDING, over)
            redo = rows[over]
        else:
            big = gather_rows(agg, idx).abs().amax(dim=1).mul_(ROUNDING)
            budget = drift.index_select(0, idx).add_(big)
            allowed = torch.from_numpy(np.clip(indeg, DRIFT_MIN, DRIFT_MAX).astype(np.float32)).to(big.device)
            over = budget > big.mul_(allowed)
            drift.index_copy_(0, idx, budget.masked_fill_(over, 0.0))
            redo = rows[over.cpu().numpy()]
        if not redo.size:
            return redo, None
        msg = self.msg[li]
        if (
            self.fused
            and self.device.type == "cpu"
            and self.rules[li].aggregation is Aggregation.SUM
            and sum_family.refresh_is_recompute(msg, int(indeg[over].sum()))
        ):  # recompute_agg's sums, read from the blocks in one kernel (the table holds them)
            inn = self.graph.inn
            slots = np.ascontiguousarray(redo, dtype=np.int64)
            trows = np.ascontiguousarray(self.caches.rows(slots), dtype=np.int64)
            sum_family.refresh_rows(agg.numpy(), msg.numpy(), slots, trows, inn.start, inn.length, inn.pool)
            return redo, None
        agg_rows = self.recompute_agg(li, redo)
        put_rows(agg, self.caches.rt(redo), agg_rows)
        return redo, agg_rows

    def _refresh_drifting(
        self,
        li: int,
        rows: np.ndarray,
        changed: np.ndarray,
        recomputed: bool,
        incremental: bool,
        indeg: np.ndarray,
        over: np.ndarray | None = None,
    ) -> np.ndarray:
        """:meth:`_budget_drift` after layer ``li``'s rows were finished and stored: the refreshed rows
        are finished and stored again.  Returns ``changed`` plus those whose output changed on it."""
        redo, agg_rows = self._budget_drift(li, rows, recomputed, indeg, over)
        if not redo.size:
            return changed
        out = self.finish(li, redo, agg_rows)
        again = self.caches.store(li, redo, out, redo[:0], incremental, self.fused)
        return union(changed, again) if again.size else changed

    def _store_images(
        self, li: int, rows: np.ndarray, out: torch.Tensor, force: np.ndarray, detect: bool
    ) -> np.ndarray:
        """Store layer ``li``'s output rows where ``h[li+1]`` is not kept (:mod:`clustergnn.caches`): as
        layer ``li+1``'s new message and self term, ``message_and_self(out)``.  A row changed where either
        differs bit for bit from the cached one (plus ``force``): layer ``li+1`` reads its input only
        through these two, so where both are equal its rows are unchanged too.  The changed rows' images
        wait in ``_images`` for layer ``li+1`` (:meth:`_messages_and_self`): its delta rule reads the old
        message from ``msg[li+1]`` and writes the new one.  Returns the changed rows."""
        nxt = self.rules[li + 1]
        m, s = nxt.message_and_self(out, torch.zeros(len(rows), dtype=torch.int64, device=self.device))
        changed = rows
        if detect and rows.size:
            if self.fused and self.caches.rowmap is None:  # the same test in one pass (rows index both)
                keep = np.empty(len(rows), dtype=bool)
                selfc = sum_family._NO_ROWS if s is None else self.selfc[li + 1].numpy()
                sv = sum_family._NO_ROWS if s is None else s.numpy()
                rows64 = np.ascontiguousarray(rows, dtype=np.int64)
                row_bytes = (m.shape[1] + (0 if s is None else s.shape[1])) * m.element_size()
                wide = len(rows) * row_bytes >= sum_family.IMAGES_PARALLEL_BYTES
                kernel = sum_family.images_changed_parallel if wide else sum_family.images_changed
                kernel(self.msg[li + 1].numpy(), selfc, rows64, m.numpy(), sv, keep)
            else:
                idx = self.caches.t(rows)
                diff = (m != gather_rows(self.msg[li + 1], idx)).any(dim=1)
                if s is not None:
                    diff |= (s != gather_rows(self.selfc[li + 1], self.caches.rt(rows))).any(dim=1)
                keep = diff.cpu().numpy()
            if force.size:
                keep |= members(rows, force)
            if keep.all():  # all changed (the usual case): no gathers
                self._images[li + 1] = (rows, m, s)
                return rows
            changed = rows[keep]
            pos = self.caches.t(np.flatnonzero(keep))
            m, s = gather_rows(m, pos), None if s is None else gather_rows(s, pos)
        self._images[li + 1] = (changed, m, s)
        return changed

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
