"""Transactional application of a batch's structural and feature edits: all or nothing.

:meth:`StructureEditor.apply` applies a :class:`~clustergnn.mutations.MutationBatch` to the engine's
:class:`~clustergnn.graph.MutableGraph` and input features as if its mutations were applied one by one
in order, vectorised per run of equal kinds, and records what changed (:class:`Pending`, in local
slots) for propagation.  Every edit pushes an undo closure; if a run is invalid, the closures run in
reverse order, the graph's slot bookkeeping is rolled back to its savepoint
(:meth:`MutableGraph.savepoint` / :meth:`MutableGraph.rollback`) and ``MutationError`` names the value
and the mutation range.  Caches never see half a batch: propagation starts after ``apply`` returns.

A *stretch* (a maximal sequence of vertex additions and edge additions/removals, a stream's usual
shape) is validated as a whole and applied as its net effect: one vertex add, one edge removal, one
edge add (see :meth:`StructureEditor._apply_stretch`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from clustergnn.caches import Caches, put_rows
from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.graph import EdgeLog, MutableGraph, unique
from clustergnn.mutations import K_ADD_EDGE, K_ADD_VERTEX, K_REMOVE_EDGE, MutationBatch, MutationKind

Run = tuple[MutationKind, int, int]  # (kind, start, stop) of a run of equal mutation kinds
STRETCH_KINDS = (MutationKind.ADD_VERTEX, MutationKind.ADD_EDGE, MutationKind.REMOVE_EDGE)
_STRETCH_MASK = np.isin(np.arange(len(MutationKind)), STRETCH_KINDS)  # by kind (a batch's kinds are in range)


class _DryRunDone(Exception):
    """Raised inside :meth:`StructureEditor.apply` to undo a dry run that applied."""


def _is_run(a: np.ndarray) -> bool:
    """Whether ``a`` is ``a[0], a[0] + 1, ...`` (at least two values)."""
    n = len(a)
    return n > 1 and int(a[-1]) - int(a[0]) == n - 1 and bool((np.diff(a) == 1).all())


def concat_slots(parts: list[np.ndarray]) -> np.ndarray:
    """The concatenation of slot arrays (int64 empty for none)."""
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class Pending:
    """Everything a batch (or a round's batches) changed structurally, in local slots.

    Attributes:
        edges: directed edges added and removed (vertex removals' edges included).
        new, removed: slots of vertices added / removed, one array per edit.
        feat: slots whose input features were updated.
        feat_old: ``(index, rows)`` per feature update, in order: the rows of ``h[0]`` it overwrote (the
            undo closure's copy).  Where ``msg[0]`` is ``h[0]`` (:mod:`clustergnn.caches`), the earliest
            copy of a slot is its pre-batch message, which layer 0's delta rule needs.
        undo: closures that undo the edits, in the order they were made.
    """

    edges: EdgeLog = field(default_factory=EdgeLog.new)
    new: list[np.ndarray] = field(default_factory=list)
    removed: list[np.ndarray] = field(default_factory=list)
    feat: list[np.ndarray] = field(default_factory=list)
    feat_old: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)

    def merge_into(self, into: Pending | None) -> Pending:
        """Append this batch's changes to ``into`` (several atomic batches in one round); ``self`` if None."""
        if into is None:
            return self
        into.edges.add_src += self.edges.add_src
        into.edges.add_dst += self.edges.add_dst
        into.edges.rem_src += self.edges.rem_src
        into.edges.rem_dst += self.edges.rem_dst
        into.new += self.new
        into.removed += self.removed
        into.feat += self.feat
        into.feat_old += self.feat_old
        return into


def segments(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped into maximal stretches of vertex additions and edge edits (a stream's usual
    shape: each new vertex arrives just before its first edges, removals between additions), other
    runs alone."""
    segs: list[list[Run]] = []
    for run in runs:
        if segs and run[0] in STRETCH_KINDS and segs[-1][-1][0] in STRETCH_KINDS:
            segs[-1].append(run)
        else:
            segs.append([run])
    return segs


class StructureEditor:
    """Applies batches to a graph and the input features ``caches.h[0]``, all or nothing.

    Args:
        graph: the engine's graph.
        caches: the engine's tables (``h[0]`` gets the features; rows of undone vertices are cleared).
        grow: called with the graph's capacity after vertices are added (the engine grows its tables).
        clear_rows: called with the slots of undone vertex additions.
        feature_dim: the model's input width.
        fused: the engine runs the fused kernels (a stretch with removals counts copies with them).
    """

    def __init__(
        self,
        graph: MutableGraph,
        caches: Caches,
        *,
        grow: Callable[[int], None],
        clear_rows: Callable[[np.ndarray], None],
        feature_dim: int,
        fused: bool,
    ) -> None:
        self.graph = graph
        self.caches = caches
        self.grow = grow
        self.clear_rows = clear_rows
        self.feature_dim = feature_dim
        self.fused = fused

    def check_features(self, feats: torch.Tensor, where: str) -> torch.Tensor:
        """``feats`` on the engine's device; ``MutationError`` unless float32, ``(n, feature_dim)``, finite."""
        want = self.feature_dim
        if feats.dtype != torch.float32:
            raise MutationError(f"{where}: features must be float32, got {feats.dtype}")
        if feats.ndim != 2 or feats.shape[1] != want:
            raise MutationError(f"{where}: features have width {feats.shape[-1]}, the model expects {want}")
        finite = np.isfinite(feats.numpy()).all() if feats.device.type == "cpu" else bool(torch.isfinite(feats).all())
        if not finite:
            raise MutationError(f"{where}: features must be finite, got NaN or inf")
        return feats.to(self.caches.device)

    def apply(
        self, batch: MutationBatch, into: Pending | None = None, *, dry_run: bool = False, log: bool = True
    ) -> Pending:
        """Apply the batch's edits run by run (vectorised per run); undo everything if one run fails.

        With ``into``, the batch's changes are appended to it (several atomic batches in one round).
        With ``dry_run``, a batch that applies is undone too: ``MutationError`` says whether it would.
        Without ``log`` (a full recompute follows, which reads only the graph), the returned ``Pending``
        has no edit log: no ``edges``, no ``feat_old``, no ``undo`` once the batch has applied (an
        initial graph's endpoint slots are 16 bytes per edge that the recompute would carry for nothing).
        """
        g = self.graph
        pend = Pending()
        mark = g.savepoint()
        try:
            self._apply_all(pend, batch, log)
            if dry_run:
                raise _DryRunDone
        except BaseException as exc:
            for undo in reversed(pend.undo):
                undo()
            g.rollback(mark)
            if isinstance(exc, _DryRunDone):
                return Pending()
            raise
        if not log:
            pend.edges, pend.feat_old, pend.undo = EdgeLog.new(), [], []
        return pend.merge_into(into)

    def _apply_all(self, pend: Pending, batch: MutationBatch, log: bool = True) -> None:
        if self._apply_vertices_then_edges(pend, batch, log):
            return  # a bulk load's shape: every vertex addition, then every edge addition
        frow = batch.feature_row_index()
        if (
            len(batch)
            and bool(_STRETCH_MASK[batch.kind].all())  # (np.isin with the enum tuple: ~130 µs a batch)
            and self._apply_stretch(pend, batch, 0, len(batch), frow)
        ):
            return  # the common case: a batch of vertex and edge edits only
        for seg in segments(batch.runs()):
            if len(seg) > 2 and self._apply_stretch(pend, batch, seg[0][1], seg[-1][2], frow):
                continue
            for kind, a, b in seg:  # run by run; an invalid segment raises here, naming its first error
                where = f"mutations [{a}, {b}) ({kind.name.lower()})"
                try:
                    self._apply_run(pend, kind, batch, a, b, frow, where)
                except UnknownVertexError as e:
                    raise MutationError(f"{where}: {e}") from None
                except MutationError as e:
                    raise MutationError(f"{where}: {e}") from None

    def _apply_vertices_then_edges(self, pend: Pending, batch: MutationBatch, log: bool) -> bool:
        """The whole batch when it is vertex additions followed by edge additions only (an initial graph,
        or its edges): :meth:`_apply_stretch`'s vertices-first case on views of the batch's columns, with
        no gathered copies of the endpoints, no index arrays per mutation and, without ``log``, int32
        endpoint slots (``MutableGraph.lookup32``).  Same checks, same slots, same edges in the same
        order as the stretch; False (nothing changed) where the batch has another shape or is invalid:
        the general path then applies it or raises the error sequential application meets first."""
        kind, n = batch.kind, len(batch)
        not_v = kind != K_ADD_VERTEX
        nv = int(np.argmax(not_v)) if n and not_v.any() else n
        del not_v
        if n == 0 or np.count_nonzero(kind[nv:] == K_ADD_EDGE) != n - nv:
            return False
        g = self.graph
        vids, es, ed = batch.src[:nv], batch.src[nv:], batch.dst[nv:]
        run = _is_run(vids)  # consecutive ids (an initial graph's 0..n-1) are distinct: no sort to check it
        if nv and ((g.lookup(vids) >= 0).any() or (not run and len(unique(vids)) != nv)):
            return False
        feats = None
        id_range = None
        if nv:
            try:  # ADD_VERTEX and ADD_EDGE only: the features are the vertices', in order
                feats = self.check_features(batch.features[:nv], "")
            except MutationError:
                return False
            slots = self._add_vertices(pend, vids, feats, checked=True)
            if run and _is_run(slots):
                id_range = (int(vids[0]), int(vids[-1]) + 1, int(slots[0]))
        if es.size:
            # without a log, where the new vertices' ids are a run, a large batch's endpoints are counted as
            # they are found and the append skips its count pass: if every endpoint is one of the run, their
            # slots are computed and no slot arrays are made (the undo, for a dry run, computes them); else
            # they are looked up, the run's computed (None: not that case, or an endpoint is missing;
            # nothing counted).  Other ids take lookup32 and the append's count pass: counting each slot
            # as the table gives it was no faster (docs/engine.md, "Build time on this machine")
            if not log and id_range is not None and g.add_edges_in_range(es, ed, id_range):
                lo, _, base = id_range
                pend.undo.append(lambda: g.remove_edges_slots(es - lo + base, ed - lo + base))
                return True
            found = g.lookup_counted32(es, ed, id_range) if not log and id_range is not None else None
            if found is not None:
                self._add_edges(pend, *found, log, counted=True)
                return True
            ls, ld = (g.lookup(es), g.lookup(ed)) if log else (g.lookup32(es), g.lookup32(ed))
            if (ls < 0).any() or (ld < 0).any():
                return self._undo_first(pend, bool(nv))
            self._add_edges(pend, ls, ld, log)
        return True

    def _apply_stretch(self, pend: Pending, batch: MutationBatch, a: int, b: int, frow: np.ndarray) -> bool:
        """Apply mutations ``[a, b)`` (vertex additions, edge additions and removals) as one vertex add,
        one edge removal and one edge add.

        Once each mutation is valid where it stands, the stretch means its net effect: the new vertices,
        and per edge ``(u, v)`` its additions minus its removals.  Valid: a new vertex is not in the graph
        and not added earlier; an edge's endpoints exist when it comes (in the graph, or added at an
        earlier position); a removal finds a copy (the graph's copies plus those added earlier, minus
        those removed earlier).  That is checked for the whole stretch first; if anything is invalid,
        nothing is applied and False is returned, and the caller applies the runs one by one, which
        raises the error sequential application meets first.  Edges added and removed again within the
        stretch leave no trace (their dst's aggregate is unchanged), and slots come out as run by run;
        only the order of entries within a block may differ, which changes no sum but its rounding.
        """
        g = self.graph
        kind = batch.kind[a:b]
        is_v = kind == K_ADD_VERTEX
        v_at, e_at = np.flatnonzero(is_v), np.flatnonzero(~is_v)
        src, dst = batch.src[a:b], batch.dst[a:b]
        vids, es, ed = src[v_at], src[e_at], dst[e_at]
        if vids.size and ((g.lookup(vids) >= 0).any() or len(unique(vids)) != len(vids)):
            return False
        feats = None
        if vids.size:
            try:
                feats = self.check_features(batch.features[frow[a + v_at[0]] : frow[a + v_at[-1]] + 1], "")
            except MutationError:
                return False
        # Every vertex addition before every edge event (a bulk load's initial graph): add the vertices
        # first and look every endpoint up directly, instead of binary-searching the endpoints that miss
        # among the new ids (O(E log V), and ~50 bytes of temporaries per edge, for an initial graph
        # whose every endpoint is new).  Same slots, same edges; undone below if the stretch is invalid.
        first = bool(vids.size and e_at.size and v_at[-1] < e_at[0])
        if first:
            self._add_vertices(pend, vids, feats, checked=True)
        ls, ld = g.lookup(es), g.lookup(ed)
        fills = []  # endpoints added in the stretch: (which edges, index of their vertex in vids)
        order = None
        for ids, slots in ((es, ls), (ed, ld)):
            miss = np.flatnonzero(slots < 0)
            if miss.size:  # must be added earlier in the stretch
                if not vids.size or first:
                    return self._undo_first(pend, first)
                if order is None:
                    order = np.argsort(vids, kind="stable")
                sv = vids[order]
                i = np.minimum(np.searchsorted(sv, ids[miss]), len(sv) - 1)
                if not ((sv[i] == ids[miss]) & (v_at[order[i]] < e_at[miss])).all():
                    return False
                fills.append((slots, miss, order[i]))
        rem = kind[e_at] == K_REMOVE_EDGE
        if rem.any():
            if not self.fused:
                return self._undo_first(pend, first)  # counting copies needs the fused kernels: run by run
            # (with ``first``, the new vertices' edges have no copies in the graph: as if they were -1)
            net = self._net_edges(es, ed, ls, ld, rem)
            if net is None:
                return self._undo_first(pend, first)
        if vids.size and not first:
            new = self._add_vertices(pend, vids, feats, checked=True)
            for slots, miss, k in fills:
                slots[miss] = new[k]
        if not rem.any():
            if es.size:
                self._add_edges(pend, ls, ld)
            return True
        rep, count = net  # net edges: a representative event each, and copies to add (> 0) or remove
        s, d = ls[rep], ld[rep]
        gone = count < 0
        if gone.any():
            # (every copy counted by _net_edges: not counted again)
            self._remove_edges(pend, np.repeat(s[gone], -count[gone]), np.repeat(d[gone], -count[gone]), True)
        if (~gone).any():
            self._add_edges(pend, np.repeat(s[~gone], count[~gone]), np.repeat(d[~gone], count[~gone]))
        return True

    @staticmethod
    def _undo_first(pend: Pending, added: bool) -> bool:
        """False (apply the stretch run by run), after undoing its vertex addition if it was made first."""
        if added:
            pend.undo.pop()()
            pend.new.pop()
        return False

    def _net_edges(
        self, es: np.ndarray, ed: np.ndarray, ls: np.ndarray, ld: np.ndarray, rem: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The net effect of a stretch's edge events (ids ``es -> ed``, slots ``ls, ld``, -1 for vertices
        added in the stretch): ``(representative event, net copies)`` per edge whose count changes, or
        None if some removal finds no copy (the graph's copies plus earlier additions minus earlier
        removals)."""
        n = len(es)
        order = np.lexsort((np.arange(n), es, ed))  # per edge (by dst, src), its events in stretch order
        ss, ds = es[order], ed[order]
        first = np.flatnonzero(np.concatenate(([True], (ss[1:] != ss[:-1]) | (ds[1:] != ds[:-1]))))
        sizes = np.diff(np.append(first, n))
        rep = order[first]
        sign = np.where(rem, -1, 1)[order]
        have = np.zeros(len(first), dtype=np.int64)
        # both endpoints in the graph and a removal among its events: count its copies there (an edge only
        # added never goes below 0, so its blocks, often a hub's, are not scanned)
        removes = np.add.reduceat((sign < 0).astype(np.int64), first) > 0
        old = (ls[rep] >= 0) & (ld[rep] >= 0) & removes
        if old.any():  # (each edge counted in the shorter of its in- and out-block)
            have[old] = self.graph.count_edges_slots(ls[rep][old], ld[rep][old])
        run = np.cumsum(sign)
        level = run - np.repeat(run[first] - sign[first], sizes) + np.repeat(have, sizes)
        if (level < 0).any():
            return None
        net = np.add.reduceat(sign, first)
        keep = net != 0
        return rep[keep], net[keep]

    def _add_vertices(self, pend: Pending, ids: np.ndarray, feats: torch.Tensor, checked: bool = False) -> np.ndarray:
        g = self.graph
        slots = g.add_vertices(ids, checked)
        self.grow(g.capacity)
        self.caches.assign_rows(slots)  # owned rows (clustergnn.caches; nothing where tables are by slot)
        put_rows(self.caches.h[0], self.caches.rt(slots), feats)
        pend.new.append(slots)

        def undo_add(slots: np.ndarray = slots) -> None:
            g.discard_vertices(slots)
            self.clear_rows(slots)

        pend.undo.append(undo_add)
        return slots

    def _add_edges(self, pend: Pending, s: np.ndarray, d: np.ndarray, log: bool = True, counted: bool = False) -> None:
        g = self.graph
        g.add_edges_slots(s, d, counted)
        if log:
            pend.edges.add_src.append(s)
            pend.edges.add_dst.append(d)
        pend.undo.append(lambda s=s, d=d: g.remove_edges_slots(s, d))

    def _remove_edges(self, pend: Pending, s: np.ndarray, d: np.ndarray, present: bool = False) -> None:
        g = self.graph
        g.remove_edges_slots(s, d, present)
        pend.edges.rem_src.append(s)
        pend.edges.rem_dst.append(d)
        pend.undo.append(lambda s=s, d=d: g.add_edges_slots(s, d))

    def _apply_run(
        self, pend: Pending, kind: MutationKind, batch: MutationBatch, a: int, b: int, frow: np.ndarray, where: str
    ) -> None:
        g = self.graph
        src, dst = batch.src[a:b], batch.dst[a:b]
        if kind is MutationKind.ADD_VERTEX:
            self._add_vertices(pend, src, self.check_features(batch.features[frow[a] : frow[b - 1] + 1], where))
        elif kind is MutationKind.UPDATE_FEATURES:
            feats = self.check_features(batch.features[frow[a] : frow[b - 1] + 1], where)
            slots = g.slots_of(src)
            # a slot updated twice keeps its last row, as applying one by one would
            _, last_rev = np.unique(slots[::-1], return_index=True)
            keep = len(slots) - 1 - last_rev
            slots = slots[keep]
            h0 = self.caches.h[0]
            idx = self.caches.rt(slots)
            old = h0[idx].clone()
            h0[idx] = feats[self.caches.t(keep)]
            pend.feat.append(slots)
            pend.feat_old.append((idx, old))

            def undo_update(idx: torch.Tensor = idx, old: torch.Tensor = old) -> None:
                self.caches.h[0][idx] = old

            pend.undo.append(undo_update)
        elif kind is MutationKind.REMOVE_VERTEX:
            slots, (rs, rd) = g.remove_vertices(src)
            pend.removed.append(slots)
            pend.edges.rem_src.append(rs)
            pend.edges.rem_dst.append(rd)
            pend.undo.append(lambda ids=src, slots=slots, e=(rs, rd): g.restore_vertices(ids, slots, e))
        elif kind is MutationKind.ADD_EDGE:
            self._add_edges(pend, g.slots_of(src, "source vertex"), g.slots_of(dst, "destination vertex"))
        elif kind is MutationKind.REMOVE_EDGE:
            self._remove_edges(pend, g.slots_of(src, "source vertex"), g.slots_of(dst, "destination vertex"))
        else:  # pragma: no cover - MutationBatch rejects unknown kinds
            raise MutationError(f"unknown mutation kind {kind!r}")
