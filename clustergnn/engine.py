"""The single-process incremental engine: a mutable graph plus every layer's cached state.

``Engine.apply(batch)`` first applies the batch's structural and feature edits (all or nothing), then
brings every layer's cache up to date with one of three modes, so one benchmark can compare them:

* ``"incremental"`` (default): the exact rules of :mod:`clustergnn.rules`; work is proportional to what
  actually changes, and propagation stops at vertices whose output did not change.
* ``"khop"``: recompute, from scratch, every row a mutation can reach (the naive incremental baseline).
* ``"full"``: recompute every row of every layer (what users without clustergnn do).

``collaborative=True`` is STAG's collaborative serving: updates propagate eagerly through the first
``L - 1`` layers and keep the last layer's messages current, but the last layer itself is finished at
read time for the vertices asked about (an aggregation over their in-edges).  Both ways are exact; the
collaborative one moves the widest fan-out (the last hop) from every update to the few rows read.

Layers are indexed like DGL's examples build models: ``h_0`` = input features, ``h_{l+1} =
act(layer_l(g, h_l))`` with ``act`` between layers, not after the last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from clustergnn._dgl import dgl
from clustergnn import cpu_kernels
from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.graph import EdgeLog, MutableGraph, argsort_stable, union, unique
from clustergnn.kernels import EdgeIndex, segment_sum
from clustergnn.mutations import MutationBatch, MutationKind
from clustergnn.rules import Aggregation, LayerRule, rules_from_dgl

log = logging.getLogger(__name__)

Mode = Literal["incremental", "khop", "full"]
DELTA_COST = 3  # cost of one delta contribution relative to one in-edge of a recomputed row (measured)
SEGMENT_DELTA_MIN = 32768  # contributions above which sum deltas go through a segment sum, not scattered adds
MODES: tuple[str, ...] = ("incremental", "khop", "full")


@dataclass(frozen=True)
class LayerDelta:
    """What one layer did in one batch.

    Attributes:
        layer: output index ``l`` (1..L): the cache ``h_l`` this entry describes.
        affected: rows finished (recomputed or delta-updated) in this layer.
        changed_ids: external ids whose ``h_l`` changed bit-for-bit.
    """

    layer: int
    affected: int
    changed_ids: np.ndarray
    deferred: bool = False  # collaborative last layer: finished at read time; ids are rows whose inputs changed
    changed_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)


@dataclass(frozen=True)
class ApplyResult:
    num_mutations: int
    layers: list[LayerDelta]
    added_ids: np.ndarray
    removed_ids: np.ndarray
    feature_changed_ids: np.ndarray
    seconds: float = 0.0

    @property
    def affected_per_layer(self) -> list[int]:
        return [d.affected for d in self.layers]

    @property
    def changed_per_layer(self) -> list[int]:
        return [len(d.changed_ids) for d in self.layers]


@dataclass
class _Pending:
    """Everything a batch changed structurally, in local slots (see ``Engine._apply_structure``)."""

    edges: EdgeLog = field(default_factory=EdgeLog.new)
    new: list[np.ndarray] = field(default_factory=list)
    removed: list[np.ndarray] = field(default_factory=list)
    feat: list[np.ndarray] = field(default_factory=list)
    undo: list[Callable[[], None]] = field(default_factory=list)


@dataclass(frozen=True)
class _RowView:
    """Rows of the caches: a plain slice when they are ``0..n-1`` (no copies), else gathered by index."""

    idx: torch.Tensor
    n: int | None  # rows are exactly 0..n-1

    @classmethod
    def of(cls, rows: np.ndarray, idx: torch.Tensor) -> _RowView:
        n = len(rows)
        contiguous = n > 0 and rows[0] == 0 and rows[-1] == n - 1 and bool((np.diff(rows) == 1).all())
        return cls(idx, n if contiguous else None)

    def get(self, t: torch.Tensor) -> torch.Tensor:
        return t[: self.n] if self.n is not None else t.index_select(0, self.idx)

    def put(self, t: torch.Tensor, v: torch.Tensor) -> None:
        if self.n is not None:
            t[: self.n].copy_(v)
        else:
            t.index_copy_(0, self.idx, v.to(t.dtype))


@dataclass(frozen=True)
class _Ctx:
    """A batch's structural changes as the layer steps use them (local slots)."""

    add_src: np.ndarray
    add_dst: np.ndarray
    rem_src: np.ndarray
    rem_dst: np.ndarray
    out_changed: np.ndarray  # owned vertices whose local out-degree changed
    touched: np.ndarray  # owned vertices whose in-edges changed
    new: np.ndarray  # owned vertices added by the batch
    live: np.ndarray  # bool per slot: alive and owned (not a ghost)


_NO_ROWS = np.zeros((0, 0), dtype=np.float32)  # "no self term" for the fused kernels
_NO_BIAS = np.zeros(0, dtype=np.float32)
_RELU = (torch.relu, torch.nn.functional.relu, torch.Tensor.relu)


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# index_select / index_copy_ are several times faster than advanced indexing on CPU; rows are unique
def _sel(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx)


def _put(t: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> None:
    t.index_copy_(0, idx, v.to(t.dtype))


class Engine:
    """Exact incremental GNN inference on a mutable graph.  Build it with :meth:`from_dgl`.

    Example::

        conv1, conv2 = dgl.nn.SAGEConv(16, 32, "mean"), dgl.nn.SAGEConv(32, 8, "mean")
        eng = Engine.from_dgl([conv1, conv2], g, g.ndata["x"])
        eng.apply(MutationBatch.add_edges([0, 1], [2, 2]))
        eng.embeddings([2])          # (1, 8), equal to a full DGL forward on the new graph
    """

    HAS_GHOSTS = False  # a single engine owns every vertex it holds (PartitionEngine mirrors remote ones)

    def __init__(
        self,
        rules: list[LayerRule],
        *,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.relu,
        device: str | torch.device = "cpu",
        mode: Mode = "incremental",
        capacity: int = 1024,
        collaborative: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.collaborative = bool(collaborative)
        self.device = torch.device(device)
        self.rules = [r.to(self.device) for r in rules]
        self.activation = activation
        self.mode: Mode = mode
        self.graph = MutableGraph(capacity)
        self.dims = [rules[0].in_dim] + [r.out_dim for r in rules]
        self._cap = 0
        self.h: list[torch.Tensor] = [self._zeros(0, d) for d in self.dims]
        self.msg: list[torch.Tensor] = [self._zeros(0, r.msg_dim) for r in rules]
        self.agg: list[torch.Tensor | None] = [self._agg_zeros(r, 0) for r in rules]
        self.selfc: list[torch.Tensor | None] = [self._zeros(0, r.self_dim or r.out_dim) if r.has_self_term else None for r in rules]
        self.ghost = np.zeros(0, dtype=bool)  # slots that mirror another partition's vertex
        self.remote_out = np.zeros(0, dtype=np.int64)  # out-edges held by other partitions
        self.version = np.zeros(0, dtype=np.int64)  # round in which the final embedding last changed
        self.round = 0
        self._keep_caches = mode != "full"  # a pure full-recompute engine keeps only the outputs
        self._posmap = np.zeros(0, dtype=np.int64)
        self._bits = np.zeros(0, dtype=np.uint64)  # scratch of cpu_kernels.unique_live (all zero between calls)
        # fused CPU kernels (cpu_kernels.py) where the caches live on the CPU; torch ops elsewhere
        self.fused = self.device.type == "cpu" and cpu_kernels.enabled()
        if self.fused:
            cpu_kernels.use_threads(torch.get_num_threads())
            cpu_kernels.warm_up()
        self._grow(self.graph.capacity)
        self.stats = {"batches": 0, "mutations": 0}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dgl(
        cls,
        layers: list[torch.nn.Module] | torch.nn.ModuleList,
        graph: dgl.DGLGraph,
        features: torch.Tensor,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.relu,
        device: str | torch.device = "cpu",
        mode: Mode = "incremental",
        vertex_ids: np.ndarray | None = None,
        collaborative: bool = False,
    ) -> Engine:
        """An engine over ``graph`` (vertex ids = its node ids unless ``vertex_ids`` is given) whose
        caches equal ``layers``' forward pass on it.

        Args:
            layers: a trained DGL model's conv layers, in order (``model.layers`` in DGL's examples).
            graph: the initial homogeneous graph.
            features: ``(graph.num_nodes(), F)`` float32.
            activation: applied between layers, not after the last; ``None`` for none.
            device: where the caches live ("cpu", "cuda", "cuda:1", ...).
            mode: "incremental", "khop" or "full" (see the module docstring).
            collaborative: finish the last layer at read time (see the module docstring).
        """
        features = torch.as_tensor(features)
        if features.dtype != torch.float32:
            raise MutationError(f"features must be float32, got {features.dtype}")
        n = graph.num_nodes()
        if features.ndim != 2 or features.shape[0] != n:
            raise MutationError(f"features must have shape ({n}, F), got {tuple(features.shape)}")
        rules = rules_from_dgl(list(layers), int(features.shape[1]))
        eng = cls(rules, activation=activation, device=device, mode=mode, capacity=max(n, 16), collaborative=collaborative)
        ids = np.arange(n, dtype=np.int64) if vertex_ids is None else np.asarray(vertex_ids, dtype=np.int64)
        src, dst = (t.numpy() for t in graph.edges())
        eng.load(ids, features, ids[src], ids[dst])
        return eng

    @classmethod
    def from_layers(
        cls,
        layers: list[torch.nn.Module] | torch.nn.ModuleList,
        feature_dim: int,
        activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.relu,
        device: str | torch.device = "cpu",
        mode: Mode = "incremental",
        capacity: int = 1024,
        collaborative: bool = False,
    ) -> Engine:
        """An empty engine for ``layers``; fill it with :meth:`bulk_load` or :meth:`apply`."""
        rules = rules_from_dgl(list(layers), feature_dim)
        return cls(rules, activation=activation, device=device, mode=mode, capacity=capacity, collaborative=collaborative)

    def load(self, ids: np.ndarray, features: torch.Tensor, src: np.ndarray, dst: np.ndarray) -> None:
        """Bulk-load vertices and edges, then compute every cache with one full pass."""
        self.bulk_load(MutationBatch.concat([MutationBatch.add_vertices(ids, features), MutationBatch.add_edges(src, dst)]))

    def bulk_load(self, batch: MutationBatch) -> ApplyResult:
        """Apply a large batch (an initial graph) with one full recompute instead of propagation."""
        mode, self.mode = self.mode, "full"
        self._keep_caches = mode != "full"
        try:
            return self.apply(batch)
        finally:
            self.mode = mode

    # ------------------------------------------------------------------ storage
    def _zeros(self, n: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(n, d, dtype=dtype, device=self.device)

    def _agg_zeros(self, rule: LayerRule, n: int) -> torch.Tensor | None:
        if rule.aggregation is Aggregation.SUM:
            return self._zeros(n, rule.msg_dim, torch.float64)
        if rule.aggregation is Aggregation.MAX:
            return self._zeros(n, rule.msg_dim)
        return None

    def _grow(self, capacity: int) -> None:
        if capacity <= self._cap:
            return

        def grown(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            new = torch.zeros(capacity, t.shape[1], dtype=t.dtype, device=self.device)
            new[: t.shape[0]] = t
            return new

        self.h = [grown(t) for t in self.h]
        self.msg = [grown(t) for t in self.msg]
        self.agg = [grown(t) for t in self.agg]
        self.selfc = [grown(t) for t in self.selfc]
        for name in ("ghost", "remote_out", "version"):
            old = getattr(self, name)
            arr = np.zeros(capacity, dtype=old.dtype)
            arr[: len(old)] = old
            setattr(self, name, arr)
        self._cap = capacity

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    # ------------------------------------------------------------------ reads
    @property
    def num_layers(self) -> int:
        return len(self.rules)

    @property
    def num_vertices(self) -> int:
        return self.graph.num_vertices

    @property
    def num_edges(self) -> int:
        return self.graph.num_edges

    def _layer_index(self, layer: int) -> int:
        top = self.num_layers
        if not isinstance(layer, (int, np.integer)) or not -top - 1 <= layer <= top:
            raise ValueError(f"layer must be in [{-top - 1}, {top}] (0 = input features, {top} or -1 = output), got {layer!r}")
        return int(layer) % (top + 1)

    @torch.no_grad()
    def embeddings(self, ids, layer: int = -1) -> torch.Tensor:
        """``(len(ids), D_layer)`` float32 rows of ``h_layer`` (0 = features, -1 = final output).

        Raises ``UnknownVertexError`` naming the first id that is not a live vertex.
        """
        li = self._layer_index(layer)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        slots = self.graph.slots_of(ids)
        if li == self.num_layers and self._defers_last_layer:
            with torch.no_grad():
                last = self.num_layers - 1
                return self._finish(last, slots, self._recompute_agg(last, slots))
        return _sel(self.h[li], self._t(slots))

    @property
    def _defers_last_layer(self) -> bool:
        return self.collaborative and self.mode != "full"

    def vertex_ids(self) -> np.ndarray:
        """External ids of all live vertices (in slot order)."""
        return self.graph.ext_of[self.graph.alive_slots()]

    def to_dgl(self) -> tuple[dgl.DGLGraph, torch.Tensor, np.ndarray]:
        """The current graph as a DGL graph with its features, and the external id of each DGL node."""
        alive = self.graph.alive_slots()
        pos = np.full(self.graph.capacity, -1, dtype=np.int64)
        pos[alive] = np.arange(len(alive))
        src, dst = self.graph.edges()
        g = dgl.graph((torch.from_numpy(pos[src]), torch.from_numpy(pos[dst])), num_nodes=len(alive))
        return g, self.h[0][self._t(alive)].cpu(), self.graph.ext_of[alive]

    def memory_bytes(self) -> dict[str, int]:
        caches = sum(t.numel() * t.element_size() for t in [*self.h, *self.msg, *self.agg, *self.selfc] if t is not None)
        return {"structure": self.graph.structure_nbytes(), "caches": caches}

    # ------------------------------------------------------------------ writes
    def apply(self, batch: MutationBatch) -> ApplyResult:
        """Apply ``batch`` (as if its mutations were applied one by one, in order) and update every cache.

        Raises ``MutationError`` naming the offending value; then nothing has changed.
        """
        t0 = time.perf_counter()
        if not isinstance(batch, MutationBatch):
            raise MutationError(f"apply takes a MutationBatch, got {type(batch).__name__}")
        with torch.no_grad():
            pend = self._apply_structure(batch)
            self.round += 1
            self._grow(self.graph.capacity)
            new = _cat(pend.new)
            removed = _cat(pend.removed)
            alive = self.graph.alive
            new = new[alive[new]] if new.size else new
            feat = unique(_cat(pend.feat))
            feat = feat[alive[feat]] if feat.size else feat
            if self.mode == "full":
                deltas = self._full()
            else:
                deltas = self._propagate(pend.edges, union(feat, new), new)
            if removed.size:
                self._clear_rows(removed)
            self.graph.end_batch()
        self.stats["batches"] += 1
        self.stats["mutations"] += len(batch)
        ext = self.graph.ext_of
        return ApplyResult(
            num_mutations=len(batch),
            layers=deltas,
            added_ids=ext[new],
            removed_ids=np.asarray(batch.src[batch.kind == MutationKind.REMOVE_VERTEX]),
            feature_changed_ids=ext[feat],
            seconds=time.perf_counter() - t0,
        )

    def _clear_rows(self, slots: np.ndarray) -> None:
        self.remote_out[slots] = 0
        self.ghost[slots] = False
        idx = self._t(slots)
        for t in [*self.h, *self.msg, *self.agg, *self.selfc]:
            if t is not None:
                t[idx] = 0

    def _check_features(self, feats: torch.Tensor, where: str) -> torch.Tensor:
        want = self.dims[0]
        if feats.dtype != torch.float32:
            raise MutationError(f"{where}: features must be float32, got {feats.dtype}")
        if feats.ndim != 2 or feats.shape[1] != want:
            raise MutationError(f"{where}: features have width {feats.shape[-1]}, the model expects {want}")
        finite = np.isfinite(feats.numpy()).all() if feats.device.type == "cpu" else bool(torch.isfinite(feats).all())
        if not finite:
            raise MutationError(f"{where}: features must be finite, got NaN or inf")
        return feats.to(self.device)

    def _apply_structure(self, batch: MutationBatch, into: _Pending | None = None) -> _Pending:
        """Apply the batch's edits run by run (vectorised per run); undo everything if one run fails.

        With ``into``, the batch's changes are appended to it (several atomic batches in one round).
        """
        g = self.graph
        pend = _Pending()
        saved_free = list(g._pending_free)
        frow = batch.feature_row_index()
        try:
            if len(batch) and bool(np.isin(batch.kind, self._STRETCH).all()) and self._apply_stretch(
                    pend, batch, 0, len(batch), frow):
                return self._merge(pend, into)  # the common case: a batch of vertex and edge edits only
            for seg in self._segments(batch.runs()):
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
        except BaseException:
            for undo in reversed(pend.undo):
                undo()
            g._pending_free = saved_free
            raise
        return self._merge(pend, into)

    @staticmethod
    def _merge(pend: _Pending, into: _Pending | None) -> _Pending:
        if into is None:
            return pend
        into.edges.add_src += pend.edges.add_src
        into.edges.add_dst += pend.edges.add_dst
        into.edges.rem_src += pend.edges.rem_src
        into.edges.rem_dst += pend.edges.rem_dst
        into.new += pend.new
        into.removed += pend.removed
        into.feat += pend.feat
        return into

    _STRETCH = (MutationKind.ADD_VERTEX, MutationKind.ADD_EDGE, MutationKind.REMOVE_EDGE)

    @classmethod
    def _segments(cls, runs: list[tuple[MutationKind, int, int]]) -> list[list[tuple[MutationKind, int, int]]]:
        """The runs grouped into maximal stretches of vertex additions and edge edits (a stream's usual
        shape: each new vertex arrives just before its first edges, removals between additions), other
        runs alone."""
        segs: list[list[tuple[MutationKind, int, int]]] = []
        for run in runs:
            if segs and run[0] in cls._STRETCH and segs[-1][-1][0] in cls._STRETCH:
                segs[-1].append(run)
            else:
                segs.append([run])
        return segs

    def _apply_stretch(self, pend: _Pending, batch: MutationBatch, a: int, b: int, frow: np.ndarray) -> bool:
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
        is_v = kind == MutationKind.ADD_VERTEX
        v_at, e_at = np.flatnonzero(is_v), np.flatnonzero(~is_v)
        src, dst = batch.src[a:b], batch.dst[a:b]
        vids, es, ed = src[v_at], src[e_at], dst[e_at]
        if vids.size and ((g.lookup(vids) >= 0).any() or len(unique(vids)) != len(vids)):
            return False
        ls, ld = g.lookup(es), g.lookup(ed)
        fills = []  # endpoints added in the stretch: (which edges, index of their vertex in vids)
        order = None
        for ids, slots in ((es, ls), (ed, ld)):
            miss = np.flatnonzero(slots < 0)
            if miss.size:  # must be added earlier in the stretch
                if not vids.size:
                    return False
                if order is None:
                    order = np.argsort(vids, kind="stable")
                sv = vids[order]
                i = np.minimum(np.searchsorted(sv, ids[miss]), len(sv) - 1)
                if not ((sv[i] == ids[miss]) & (v_at[order[i]] < e_at[miss])).all():
                    return False
                fills.append((slots, miss, order[i]))
        rem = kind[e_at] == MutationKind.REMOVE_EDGE
        if rem.any():
            if not self.fused:
                return False  # counting copies needs the fused kernels: go run by run
            net = self._net_edges(es, ed, ls, ld, rem)
            if net is None:
                return False
        if vids.size:
            feats = batch.features[frow[a + v_at[0]] : frow[a + v_at[-1]] + 1]
            try:
                feats = self._check_features(feats, "")
            except MutationError:
                return False
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
            self._remove_edges(pend, np.repeat(s[gone], -count[gone]), np.repeat(d[gone], -count[gone]))
        if (~gone).any():
            self._add_edges(pend, np.repeat(s[~gone], count[~gone]), np.repeat(d[~gone], count[~gone]))
        return True

    def _net_edges(self, es: np.ndarray, ed: np.ndarray, ls: np.ndarray, ld: np.ndarray,
                   rem: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
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
        old = (ls[rep] >= 0) & (ld[rep] >= 0)  # both endpoints in the graph: count its copies there
        if old.any():
            s_old, d_old = ls[rep][old], ld[rep][old]
            keys, copies = self.graph.inn.count_pairs(d_old, s_old)
            have[old] = copies[np.searchsorted(keys, (d_old << 32) | s_old)]
        run = np.cumsum(sign)
        level = run - np.repeat(run[first] - sign[first], sizes) + np.repeat(have, sizes)
        if (level < 0).any():
            return None
        net = np.add.reduceat(sign, first)
        keep = net != 0
        return rep[keep], net[keep]

    def _add_vertices(self, pend: _Pending, ids: np.ndarray, feats: torch.Tensor, checked: bool = False) -> np.ndarray:
        g = self.graph
        slots = g.add_vertices(ids, checked)
        self._grow(g.capacity)
        _put(self.h[0], self._t(slots), feats)
        pend.new.append(slots)

        def undo_add(slots=slots, ids=ids) -> None:
            g.alive[slots] = False
            g._unbind(ids)
            g._return_slots(slots)
            self._clear_rows(slots)

        pend.undo.append(undo_add)
        return slots

    def _add_edges(self, pend: _Pending, s: np.ndarray, d: np.ndarray) -> None:
        g = self.graph
        g.add_edges_slots(s, d)
        pend.edges.add_src.append(s)
        pend.edges.add_dst.append(d)
        pend.undo.append(lambda s=s, d=d: g.remove_edges_slots(s, d))

    def _remove_edges(self, pend: _Pending, s: np.ndarray, d: np.ndarray) -> None:
        g = self.graph
        g.remove_edges_slots(s, d)
        pend.edges.rem_src.append(s)
        pend.edges.rem_dst.append(d)
        pend.undo.append(lambda s=s, d=d: g.add_edges_slots(s, d))

    def _apply_run(self, pend: _Pending, kind: MutationKind, batch: MutationBatch, a: int, b: int,
                   frow: np.ndarray, where: str) -> None:
        g = self.graph
        src, dst = batch.src[a:b], batch.dst[a:b]
        if kind is MutationKind.ADD_VERTEX:
            self._add_vertices(pend, src, self._check_features(batch.features[frow[a] : frow[b - 1] + 1], where))
        elif kind is MutationKind.UPDATE_FEATURES:
            feats = self._check_features(batch.features[frow[a] : frow[b - 1] + 1], where)
            slots = g.slots_of(src)
            # a slot updated twice keeps its last row, as applying one by one would
            _, last_rev = np.unique(slots[::-1], return_index=True)
            keep = len(slots) - 1 - last_rev
            slots = slots[keep]
            idx = self._t(slots)
            old = self.h[0][idx].clone()
            self.h[0][idx] = feats[self._t(keep)]
            pend.feat.append(slots)

            def undo_update(idx=idx, old=old) -> None:
                self.h[0][idx] = old

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

    # ------------------------------------------------------------------ propagation
    def _finish(self, li: int, rows: np.ndarray, agg_rows: torch.Tensor | None = None,
                view: _RowView | None = None) -> torch.Tensor:
        rule = self.rules[li]
        view = view or _RowView.of(rows, self._t(rows))
        indeg = torch.from_numpy(self.graph.in_degree(rows)).to(self.device)
        if agg_rows is not None:
            agg = agg_rows
        elif self.fused and self.agg[li] is not None and self.agg[li].dtype == torch.float64:
            agg = torch.empty(len(rows), self.agg[li].shape[1])
            cpu_kernels.gather_f32(self.agg[li].numpy(), np.ascontiguousarray(rows, dtype=np.int64), agg.numpy())
        else:
            agg = view.get(self.agg[li])
        selfv = view.get(self.selfc[li]) if self.selfc[li] is not None else None
        out = rule.finish(selfv, agg, indeg, view.get(self.msg[li]) if rule.finish_uses_msg else None)
        if li < self.num_layers - 1 and self.activation is not None:
            out = self.activation(out)
        return out

    def _finish_spec(self, li: int) -> tuple | None:
        """Arguments of the fused finish (``cpu_kernels.sum_rows``) where the rule's finish allows it
        (``LayerRule.fused_finish``): ``(kind, self terms, bias, relu)``; None where it does not."""
        rule = self.rules[li]
        spec = rule.fused_finish() if self.fused and self.agg[li] is not None else None
        relu = li < self.num_layers - 1 and self.activation is not None
        if spec is None or (relu and self.activation not in _RELU):
            return None
        kind, bias = spec
        selfc = self.selfc[li].numpy() if self.selfc[li] is not None else _NO_ROWS
        return kind, selfc, (bias.numpy() if bias is not None else _NO_BIAS), relu

    def _recompute_agg(self, li: int, rows: np.ndarray, view: _RowView | None = None) -> torch.Tensor:
        """The exact aggregate of ``rows`` from their current in-edges and messages."""
        view = view or _RowView.of(rows, self._t(rows))
        return self.rules[li].aggregate(self.msg[li], self._in_edge_index(rows), view.get(self.msg[li]))

    def _in_edge_index(self, rows: np.ndarray) -> EdgeIndex:
        """Every in-edge of ``rows`` (sources as slots), row by row."""
        indptr, src = self.graph.inn.gather_csr(rows)
        return EdgeIndex(self._t(src), self._t(indptr))

    def _store(self, li: int, rows: np.ndarray, out: torch.Tensor, force: np.ndarray, detect: bool) -> np.ndarray:
        """Write ``h_{li+1}[rows] = out``; return the rows that changed (plus ``force``, e.g. new vertices)."""
        if detect and self.fused:
            diff = np.empty(len(rows), dtype=bool)
            cpu_kernels.store_changed(self.h[li + 1].numpy(), np.ascontiguousarray(rows, dtype=np.int64),
                                      out.contiguous().numpy(), False, diff)
            changed = rows[diff]
            return union(changed, force) if force.size else changed
        idx = self._t(rows)
        if detect:
            diff = (out != _sel(self.h[li + 1], idx)).any(dim=1).cpu().numpy()
            changed = rows[diff]
            if force.size:
                changed = union(changed, force)
        else:
            changed = rows
        _put(self.h[li + 1], idx, out)
        return changed

    def _full(self) -> list[LayerDelta]:
        """Recompute every row of every layer.  Caches other than the outputs are kept only when
        the engine will propagate incrementally afterwards (``bulk_load``); a pure "full" engine skips
        them, as a plain full forward would."""
        g = self.graph
        rows = np.flatnonzero(g.alive & ~self.ghost[: g.capacity])
        view = _RowView.of(rows, self._t(rows))
        keep = self._keep_caches or view.n is None  # a non-contiguous table must live in the cache
        outdeg = torch.from_numpy(self._outdeg(rows)).to(self.device)
        indeg = torch.from_numpy(g.in_degree(rows)).to(self.device)
        edges = self._in_edge_index(rows)  # the same in-edges (and DGL graph) for every layer
        deltas = []
        for li, rule in enumerate(self.rules):
            h_rows = view.get(self.h[li])
            m, selfv = rule.message_and_self(h_rows, outdeg)
            if keep:
                view.put(self.msg[li], m)
            table = self.msg[li] if keep else m  # indexed by slot (rows are 0..n-1 when not kept)
            if keep and selfv is not None:
                view.put(self.selfc[li], selfv)
            agg = rule.aggregate(table, edges, m)
            if keep and self.agg[li] is not None:
                view.put(self.agg[li], agg)
            # agg and selfv are temporaries here (already copied to the caches where they are kept)
            dest = view.get(self.h[li + 1]) if view.n is not None else None  # rows 0..n-1: write in place
            out = rule.finish(selfv, agg, indeg, m, fresh=True, out=dest)
            if li < self.num_layers - 1 and self.activation is not None:
                out = torch.relu_(out) if self.activation in _RELU else self.activation(out)
            if dest is None or out.data_ptr() != dest.data_ptr():
                view.put(self.h[li + 1], out)
            deltas.append(LayerDelta(li + 1, len(rows), g.ext_of[rows], changed_slots=rows))
        self.version[rows] = self.round
        return deltas

    def _context(self, edges: EdgeLog, new: np.ndarray) -> _Ctx:
        """What a batch changed structurally, filtered to what the layer steps need."""
        g = self.graph
        live = g.alive & ~self.ghost[: g.capacity] if self.HAS_GHOSTS else g.alive
        add_src, add_dst = edges.added()
        rem_src, rem_dst = edges.removed()
        out_changed = self._unique_live([add_src, rem_src], live)
        touched = self._unique_live([add_dst, rem_dst], live)
        return _Ctx(add_src, add_dst, rem_src, rem_dst, out_changed, touched, new, live)

    def _sources(self, li: int, ctx: _Ctx, changed: np.ndarray, extra_out_changed: np.ndarray | None = None) -> np.ndarray:
        """Owned vertices whose layer-``li`` message changes: new ``h`` or (if it matters) new out-degree."""
        if not self.rules[li].message_uses_outdeg:
            return changed
        parts = [changed, ctx.out_changed] + ([extra_out_changed] if extra_out_changed is not None else [])
        return union(*parts)

    def _outdeg(self, slots: np.ndarray) -> np.ndarray:
        """Global out-degree: local edges plus edges held by other partitions (0 in one process)."""
        return self.graph.out_degree(slots) + self.remote_out[slots]

    def _messages(self, li: int, srcs: np.ndarray) -> torch.Tensor:
        if not srcs.size:
            return self._zeros(0, self.rules[li].msg_dim)
        idx = self._t(srcs)
        return self.rules[li].message(_sel(self.h[li], idx), torch.from_numpy(self._outdeg(srcs)).to(self.device))

    def _messages_and_self(self, li: int, srcs: np.ndarray, changed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New messages of ``srcs`` and, when the sources are exactly the changed rows (the message does
        not read the out-degree), their new self terms from the same gathered rows in one GEMM."""
        rule = self.rules[li]
        if srcs is not changed or not srcs.size or self.selfc[li] is None:
            return self._messages(li, srcs), None
        return rule.message_and_self(_sel(self.h[li], self._t(srcs)), torch.from_numpy(self._outdeg(srcs)).to(self.device))

    def _propagate(self, edges: EdgeLog, changed: np.ndarray, new: np.ndarray) -> list[LayerDelta]:
        ctx = self._context(edges, new)
        deltas = []
        for li in range(self.num_layers):
            srcs = self._sources(li, ctx, changed)
            delta = self._layer(li, ctx, changed, srcs, *self._messages_and_self(li, srcs, changed))
            deltas.append(delta)
            changed = delta.changed_slots
        return deltas

    def _layer(self, li: int, ctx: _Ctx, changed: np.ndarray, srcs: np.ndarray, m_new: torch.Tensor,
               self_new: torch.Tensor | None = None) -> LayerDelta:
        """One layer of propagation.

        Args:
            changed: owned rows whose input ``h_li`` changed this batch.
            srcs, m_new: every vertex whose layer-``li`` message changed, with its new message (owned
                sources computed here; in a partition, ghost sources received from their owners).
            self_new: the new self terms of ``changed``, when the caller computed them with the messages.
        Returns the layer's delta; ``changed_slots`` are the owned rows whose ``h_{li+1}`` changed.
        """
        g, rule = self.graph, self.rules[li]
        incremental = self.mode == "incremental"
        if self.selfc[li] is not None and changed.size:
            c_idx = self._t(changed)
            _put(self.selfc[li], c_idx, self_new if self_new is not None else rule.self_term(_sel(self.h[li], c_idx)))
        fused_sum = self.fused and rule.aggregation is Aggregation.SUM
        if fused_sum:  # the fused kernel takes the out-neighbours as CSR, without an owner per entry
            de_ptr, de = g.out.gather_csr(srcs)
            se = None
        else:
            se, de = g.out_edges(srcs)
        parts = [de, ctx.touched, ctx.new]
        if rule.uses_self:
            parts.append(changed)
        rows = self._unique_live(parts, ctx.live)
        if li == self.num_layers - 1 and self._defers_last_layer:
            _put(self.msg[li], self._t(srcs), m_new)  # the last hop is finished on read
            self.version[rows] = self.round
            return LayerDelta(li + 1, len(srcs), g.ext_of[rows], deferred=True, changed_slots=rows)
        indeg = g.in_degree(rows)
        # Per layer, the cheaper exact way: deltas touch one entry per changed edge contribution,
        # recomputation one per in-edge of the affected rows (a float32 SpMM, no sorting, so each entry
        # costs about a third of a float64 delta).  Large batches tip towards recomputation.
        recompute = not incremental or rule.aggregation is Aggregation.ATTENTION or (
            DELTA_COST * (len(de) + len(ctx.add_src) + len(ctx.rem_src)) > int(indeg.sum()))
        if fused_sum and not recompute:
            spec = self._finish_spec(li)
            diff = self._sum_rows(li, rows, indeg, m_new, srcs, de_ptr, de, ctx, spec)
            if spec is not None:
                changed_next = rows[diff]
            else:
                changed_next = self._finish_store_gathered(li, rows, indeg)
            if ctx.new.size:
                changed_next = self._unique_live([changed_next, ctx.new], ctx.live)
        else:
            s_idx = self._t(srcs)
            agg_rows = None
            if recompute:
                _put(self.msg[li], s_idx, m_new)
                agg_rows = self._recompute_agg(li, rows)
                if self.agg[li] is not None:
                    _put(self.agg[li], self._t(rows), agg_rows)
            else:
                m_old = _sel(self.msg[li], s_idx)
                se_pos = np.repeat(np.arange(len(srcs)), g.out_degree(srcs))
                if rule.aggregation is Aggregation.SUM:
                    self._sum_delta(li, rows, m_old, m_new, s_idx, se_pos, de, ctx.add_src, ctx.add_dst,
                                    ctx.rem_src, ctx.rem_dst)
                else:
                    self._max_update(li, rows, m_old, m_new, s_idx, se, se_pos, de, ctx.add_src, ctx.add_dst,
                                     ctx.rem_src, ctx.rem_dst)
            out = self._finish(li, rows, agg_rows)
            changed_next = self._store(li, rows, out, ctx.new, detect=incremental)
        if li == self.num_layers - 1:
            self.version[changed_next] = self.round
        return LayerDelta(li + 1, len(rows), g.ext_of[changed_next], changed_slots=changed_next)

    def _finish_store_gathered(self, li: int, rows: np.ndarray, indeg: np.ndarray) -> np.ndarray:
        """Finish a sum layer whose finish has a matmul (fused kernels for the gathers and the store);
        returns the rows whose output changed."""
        rule = self.rules[li]
        w = rule.fused_gather()
        relu = li < self.num_layers - 1 and self.activation is not None
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if w is None or (relu and self.activation not in _RELU):
            out, relu = self._finish(li, rows), False
        else:  # SAGE mean, widening: self + mean @ W^T, the mean and self rows gathered in one pass
            neigh = torch.empty(len(rows), self.agg[li].shape[1])
            out = torch.empty(len(rows), self.selfc[li].shape[1])
            cpu_kernels.gather_mean_self(self.agg[li].numpy(), self.selfc[li].numpy(), rows, indeg, neigh.numpy(),
                                         out.numpy())
            out.addmm_(neigh, w.t())
        diff = np.empty(len(rows), dtype=bool)
        cpu_kernels.store_changed(self.h[li + 1].numpy(), rows, out.contiguous().numpy(), relu, diff)
        return rows[diff]

    def _sum_rows(self, li: int, rows: np.ndarray, indeg: np.ndarray, m_new: torch.Tensor, srcs: np.ndarray,
                  de_ptr: np.ndarray, de: np.ndarray, ctx: _Ctx, spec: tuple | None) -> np.ndarray:
        """The sum delta (and, with ``spec``, the finish) of a layer in one CPU kernel: see
        ``cpu_kernels.sum_rows``.  Returns which ``rows`` changed (meaningful with ``spec`` only)."""
        i64 = lambda a: np.ascontiguousarray(a, dtype=np.int64)  # noqa: E731
        if len(self._posmap) < self.graph.capacity:
            self._posmap = np.full(self.graph.capacity, -1, dtype=np.int64)
        diff = np.zeros(len(rows), dtype=bool)
        kind, selfc, bias, relu = spec if spec is not None else (0, _NO_ROWS, _NO_BIAS, False)
        cpu_kernels.sum_rows(self.agg[li].numpy(), self.msg[li].numpy(), i64(rows), i64(ctx.add_src),
                             i64(ctx.add_dst), i64(ctx.rem_src), i64(ctx.rem_dst), i64(srcs),
                             m_new.contiguous().numpy(), de_ptr, de, self._posmap, spec is not None,
                             self.h[li + 1].numpy(), indeg, kind, selfc, bias, relu, diff)
        return diff

    def _sum_delta(self, li, rows, m_old, m_new, s_idx, se_pos, de, add_src, add_dst, rem_src, rem_dst) -> None:
        """STAG additivity (rules.py): a'_v = a_v + sum_{G', S} dm + sum_{E+} m_old - sum_{E-} m_old."""
        agg, msg = self.agg[li], self.msg[li]
        if len(de) + len(add_src) + len(rem_src) >= SEGMENT_DELTA_MIN:
            self._sum_delta_segmented(li, rows, m_old, m_new, se_pos, de, add_src, add_dst, rem_src, rem_dst)
        else:
            if add_src.size:
                agg.index_add_(0, self._t(add_dst), _sel(msg, self._t(add_src)).double())
            if rem_src.size:
                agg.index_add_(0, self._t(rem_dst), _sel(msg, self._t(rem_src)).double(), alpha=-1)
            if de.size:
                dm = m_new.double() - m_old.double()
                agg.index_add_(0, self._t(de), _sel(dm, self._t(se_pos)))
        _put(msg, s_idx, m_new)

    def _unique_live(self, parts: list[np.ndarray], live: np.ndarray) -> np.ndarray:
        """Sorted distinct values of ``parts`` that are ``live``."""
        if not self.fused:
            rows = union(*parts)
            return rows[live[rows]]
        if len(self._bits) * 64 < len(live):
            self._bits = np.zeros(len(live) // 64 + 1, dtype=np.uint64)
        return cpu_kernels.unique_live(np.concatenate(parts).astype(np.int64, copy=False), live, self._bits)

    def _positions(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Index of each of ``values`` in ``rows`` (-1 if absent), through a reusable dense map: O(n),
        where ``np.searchsorted`` costs a binary search per value."""
        if len(self._posmap) < self.graph.capacity:
            self._posmap = np.full(self.graph.capacity, -1, dtype=np.int64)
        self._posmap[rows] = np.arange(len(rows))
        out = self._posmap[values]
        self._posmap[rows] = -1
        return out

    def _sum_delta_segmented(self, li, rows, m_old, m_new, se_pos, de, add_src, add_dst, rem_src, rem_dst) -> None:
        """The same sum for large batches: one destination-sorted segment sum (a sparse product) over
        every contribution, then one add per affected row, instead of one scattered add per edge."""
        agg, msg = self.agg[li], self.msg[li]
        if not rows.size:  # every contribution goes to a removed row, which is cleared anyway
            return
        parts = [m_new.double() - m_old.double()]
        if add_src.size:
            parts.append(_sel(msg, self._t(add_src)).double())
        if rem_src.size:
            parts.append(-_sel(msg, self._t(rem_src)).double())
        table = torch.cat(parts)
        src_idx = np.concatenate([se_pos, len(m_new) + np.arange(len(add_src)),
                                  len(m_new) + len(add_src) + np.arange(len(rem_src))])
        dst = np.concatenate([de, add_dst, rem_dst])
        pos = self._positions(rows, dst)
        ok = pos >= 0  # contributions to removed rows are dropped: those rows are cleared anyway
        order = argsort_stable(pos[ok])
        seg, src_idx = pos[ok][order], src_idx[ok][order]
        delta = segment_sum(table, EdgeIndex.from_sorted_rows(self._t(src_idx), self._t(seg), len(rows)))
        idx = self._t(rows)
        _put(agg, idx, _sel(agg, idx) + delta)

    def _max_update(self, li, rows, m_old, m_new, s_idx, se, se_pos, de, add_src, add_dst, rem_src, rem_dst) -> None:
        """InkStream's monotonic max rule (rules.py); re-aggregates only rows whose max may have shrunk."""
        g = self.graph
        agg, msg = self.agg[li], self.msg[li]
        suspect = []
        if de.size:
            pos, d = self._t(se_pos), self._t(de)
            mo, mn, cur = _sel(m_old, pos), _sel(m_new, pos), _sel(agg, d)
            flag = ((mo >= cur) & (mn < mo)).any(dim=1).cpu().numpy()
            suspect.append(de[flag])
        if rem_src.size:
            flag = (_sel(msg, self._t(rem_src)) >= _sel(agg, self._t(rem_dst))).any(dim=1).cpu().numpy()
            suspect.append(rem_dst[flag])
        # rows whose old in-degree was 0 held DGL's empty max (0), which is not a lower bound
        old_deg = g.in_degree(rows).copy()
        for arr, sign in ((add_dst, -1), (rem_dst, 1)):
            if arr.size and rows.size:
                u, c = np.unique(arr, return_counts=True)
                pos_r = self._positions(rows, u)
                ok = pos_r >= 0
                np.add.at(old_deg, pos_r[ok], sign * c[ok])
        suspect.append(rows[old_deg == 0])
        redo = np.intersect1d(np.concatenate(suspect), rows)
        _put(msg, s_idx, m_new)
        keep = np.ones(g.capacity, dtype=bool)
        keep[redo] = False
        keep &= g.alive
        srcs_all = np.concatenate([se, add_src])
        dsts_all = np.concatenate([de, add_dst])
        sel = keep[dsts_all]
        if sel.any():
            d = self._t(dsts_all[sel])
            s = self._t(srcs_all[sel])
            agg.scatter_reduce_(0, d.unsqueeze(1).expand(-1, agg.shape[1]), _sel(msg, s), reduce="amax", include_self=True)
        if redo.size:
            _put(agg, self._t(redo), self._recompute_agg(li, redo))


def dgl_forward(
    layers: list[torch.nn.Module],
    graph: dgl.DGLGraph,
    features: torch.Tensor,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.relu,
) -> list[torch.Tensor]:
    """DGL's own full forward, structured as :class:`Engine` does (the reference for exactness).

    Returns ``[h_0, h_1, ..., h_L]``.  GAT heads are flattened after hidden layers and averaged after
    the last; zero in-degree vertices are allowed (as the engine allows them).
    """
    hs = [features]
    h = features
    with torch.no_grad():
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            if hasattr(layer, "set_allow_zero_in_degree"):
                layer.set_allow_zero_in_degree(True)
            h = layer(graph, h)
            if h.ndim == 3:
                h = h.mean(1) if last else h.flatten(1)
            if not last and activation is not None:
                h = activation(h)
            hs.append(h)
    return hs
