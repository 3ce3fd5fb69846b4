"""The single-process incremental engine: a mutable graph plus every layer's cached state.

``Engine.apply(batch)`` first applies the batch's structural and feature edits (all or nothing,
:mod:`clustergnn.transaction`), then brings every layer's cache (:mod:`clustergnn.caches`) up to date
with one of three modes, so one benchmark can compare them:

* ``"incremental"`` (default): the exact rules of :mod:`clustergnn.aggregate`; work is proportional to
  what actually changes, and propagation stops at vertices whose output did not change.
* ``"khop"``: recompute, from scratch, every row a mutation can reach (the naive incremental baseline).
* ``"full"``: recompute every row of every layer (what users without clustergnn do).

``collaborative=True`` is STAG's collaborative serving: updates propagate eagerly through the first
``L - 1`` layers and keep the last layer's messages current, but the last layer itself is finished at
read time for the vertices asked about (an aggregation over their in-edges).  Both ways are exact; the
collaborative one moves the widest fan-out (the last hop) from every update to the few rows read.

Layers are indexed like DGL's examples build models: ``h_0`` = input features, ``h_{l+1} =
act(layer_l(g, h_l))`` with ``act`` between layers, not after the last.

The propagation steps a partition of a cluster reuses (:class:`clustergnn.partitioned.PartitionEngine`)
are public: :meth:`Engine.apply_structure`, :meth:`Engine.batch_context`, :meth:`Engine.layer_sources`,
:meth:`Engine.messages` and :meth:`Engine.propagate_layer`.  ``_grow`` and ``_clear_rows`` are the
hooks a subclass extends for its own per-slot state.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from clustergnn import cpu_kernels, kernels, steptimes
from clustergnn import state as engine_state
from clustergnn.aggregate import sum as sum_family
from clustergnn.caches import Caches, RowView, Scratch, gather_rows
from clustergnn.errors import MutationError
from clustergnn.graph import MutableGraph, union, unique
from clustergnn.kernels import EdgeIndex
from clustergnn.memory import MemoryEntry, entries_of, tensors_of
from clustergnn.mutations import K_REMOVE_VERTEX, MutationBatch
from clustergnn.propagation import Propagation
from clustergnn.recompute import recompute_all
from clustergnn.results import ApplyResult, LayerDelta
from clustergnn.rules import Activation, Aggregation, LayerRule, finish_rows, rules_from_dgl
from clustergnn.transaction import Pending, StructureEditor, concat_slots

if TYPE_CHECKING:  # DGL is imported where a DGL model or graph is handled: an engine built from rules
    # (a partition owner's) never imports it (it costs a third of an owner process's start)
    from clustergnn._dgl import dgl

Mode = Literal["incremental", "khop", "full"]
MODES: tuple[str, ...] = ("incremental", "khop", "full")
# the full recompute's in-edges (and DGL's block over them) with int32 ids: 4 B/edge instead of 8 for the
# CSR sources and the edge ids; the same edges in the same order, so the same sums (docs/engine.md)
FULL_INT32_EDGES = True
# leave out the hidden h[l] a layer keeps as its two images and the last h[L] that is finished on read
# (clustergnn.caches; -700 B per vertex for SAGE-mean 100-128-47); False keeps every layer's output, which
# the update path then compares bit for bit (smaller changed sets; the pull delta needs it)
DROP_DERIVED_OUTPUTS = True
# an engine with ghosts (a partition) keeps h/agg/selfc/drift rows for its owned vertices only, indexed by
# an owned row (clustergnn.caches, "Owned rows"); False: a row per slot, ghosts' rows zero (the old layout)
OWNED_ROWS = True
# a partition leaves out h[L] too where the last layer is finished on read (a narrowing SAGE mean: selfc +
# agg / deg, no matmul): its owners publish and serve the finished rows (docs/distributed.md, "The same
# graph through the cluster"); the hidden h[l] stay (the round protocol computes each layer's messages
# from them between message exchanges)
PARTITION_OUTPUT_ON_READ = True
# a partition's adjacency pools grow by this factor (and keep this much room after a compaction), not 2x:
# an owner's graph arrives in many rounds of appends, each moving the blocks that fill up, so the pools
# reached 5x their live entries at 2x (docs/distributed.md, "The same graph through the cluster")
PARTITION_POOL_GROWTH = 1.25


class Engine(Propagation):
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
        activation: Activation | None = torch.relu,
        device: str | torch.device = "cpu",
        mode: Mode = "incremental",
        capacity: int = 1024,
        collaborative: bool = False,
        finish_elsewhere: bool = False,
    ) -> None:
        """``finish_elsewhere``: the last layer's output is finished by a reader from published rows
        (:class:`clustergnn.replica.FinishingReplica`), so ``h[L]`` is not kept where the last layer caches
        its aggregate (not GAT): its update stops at the aggregate, as a narrowing SAGE mean's does."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.collaborative = bool(collaborative)
        self.device = torch.device(device)
        self.rules = [r.to(self.device) for r in rules]
        self.activation = activation
        self.mode: Mode = mode
        self.graph = MutableGraph(capacity)
        if self.HAS_GHOSTS:
            self.graph.inn.pool_growth = self.graph.out.pool_growth = PARTITION_POOL_GROWTH
        self.dims = [rules[0].in_dim] + [r.out_dim for r in rules]
        # a partition's ghosts have messages but no inputs: there, msg[0] is never h[0] (clustergnn.caches)
        self.caches = Caches(
            self.rules,
            self.device,
            self.dims[0],
            alias_input_msg=not self.HAS_GHOSTS,
            drop_inputs=DROP_DERIVED_OUTPUTS and not self.HAS_GHOSTS and mode != "full",
            drop_output=DROP_DERIVED_OUTPUTS and (not self.HAS_GHOSTS or PARTITION_OUTPUT_ON_READ) and mode != "full",
            ghost_rows=not (self.HAS_GHOSTS and OWNED_ROWS),
            output_elsewhere=finish_elsewhere and mode != "full",
        )
        self.round = 0
        self._keep_caches = mode != "full"  # a pure full-recompute engine keeps only the outputs
        self._scratch = Scratch()
        # fused CPU kernels (cpu_kernels.py, aggregate/) where the caches live on the CPU; torch ops elsewhere
        self.fused = self.device.type == "cpu" and cpu_kernels.enabled()
        if self.fused:
            cpu_kernels.use_threads(torch.get_num_threads())
            sums = zip(self.caches.agg, self.rules, strict=True)
            cpu_kernels.warm_up(tuple({a.numpy().dtype for a, r in sums if r.aggregation is Aggregation.SUM}))
        self.edits = StructureEditor(
            self.graph,
            self.caches,
            grow=self._grow,
            clear_rows=self._clear_rows,
            feature_dim=self.dims[0],
            fused=self.fused,
        )
        self._grow(self.graph.capacity)
        self.stats = {"batches": 0, "mutations": 0}

    # the cache tables and per-slot arrays (see clustergnn.caches); replaced when they grow
    h = property(lambda self: self.caches.h, doc="``h[l]``: ``(capacity, D_l)`` inputs/outputs per layer.")
    msg = property(lambda self: self.caches.msg, doc="``msg[l]``: cached messages per layer.")
    agg = property(lambda self: self.caches.agg, doc="``agg[l]``: cached aggregates (None for GAT).")
    selfc = property(lambda self: self.caches.selfc, doc="``selfc[l]``: cached self terms (None: none).")
    drift = property(lambda self: self.caches.drift, doc="``drift[l]``: a float32 sum's rounding budget per row.")
    ghost = property(lambda self: self.caches.ghost, doc="Slots that mirror another partition's vertex.")
    remote_out = property(lambda self: self.caches.remote_out, doc="Out-edges held by other partitions.")
    version = property(lambda self: self.caches.version, doc="Round in which the final embedding changed.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dgl(
        cls,
        layers: list[torch.nn.Module] | torch.nn.ModuleList,
        graph: dgl.DGLGraph,
        features: torch.Tensor,
        activation: Activation | None = torch.relu,
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
        eng = cls(
            rules, activation=activation, device=device, mode=mode, capacity=max(n, 16), collaborative=collaborative
        )
        ids = np.arange(n, dtype=np.int64) if vertex_ids is None else np.asarray(vertex_ids, dtype=np.int64)
        src, dst = (t.numpy() for t in graph.edges())
        eng.load(ids, features, ids[src], ids[dst])
        return eng

    @classmethod
    def from_layers(
        cls,
        layers: list[torch.nn.Module] | torch.nn.ModuleList,
        feature_dim: int,
        activation: Activation | None = torch.relu,
        device: str | torch.device = "cpu",
        mode: Mode = "incremental",
        capacity: int = 1024,
        collaborative: bool = False,
    ) -> Engine:
        """An empty engine for ``layers``; fill it with :meth:`bulk_load` or :meth:`apply`."""
        rules = rules_from_dgl(list(layers), feature_dim)
        return cls(
            rules, activation=activation, device=device, mode=mode, capacity=capacity, collaborative=collaborative
        )

    def load(self, ids: np.ndarray, features: torch.Tensor, src: np.ndarray, dst: np.ndarray) -> None:
        """Bulk-load vertices and edges, then compute every cache with one full pass."""
        self.bulk_load(
            MutationBatch.concat([MutationBatch.add_vertices(ids, features), MutationBatch.add_edges(src, dst)])
        )

    def bulk_load(self, batch: MutationBatch) -> ApplyResult:
        """Apply a large batch (an initial graph) with one full recompute instead of propagation."""
        mode, self.mode = self.mode, "full"
        self._keep_caches = mode != "full"
        try:
            return self.apply(batch)
        finally:
            self.mode = mode

    # ------------------------------------------------------------------ state (clustergnn/state.py)
    def export_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """The engine's whole hard state as ``(arrays, meta)`` (what ``SnapshotStore.write_part`` takes):
        live slots only, every cache with its own bits; :meth:`from_state` continues bit for bit
        (:mod:`clustergnn.state` says why).  Between batches only."""
        g = self.graph.export()
        ghosts = self.ghost[g.slots] if self.HAS_GHOSTS else None
        arrays = {**engine_state.graph_arrays(g), **self.caches.export_rows(g.slots, ghosts)}
        kinds = engine_state.rule_kinds(self.rules)
        meta = engine_state.StateMeta(
            self.round, self.stats["batches"], self.stats["mutations"], g.next_slot, tuple(self.dims), kinds
        )
        return arrays, meta.to_json()

    @classmethod
    def from_state(
        cls,
        rules: list[LayerRule],
        arrays: Mapping[str, np.ndarray],
        meta: Mapping[str, Any],
        *,
        activation: Activation | None = torch.relu,
        device: str | torch.device = "cpu",
        mode: Mode = "incremental",
        collaborative: bool = False,
        **kwargs: Any,
    ) -> Engine:
        """The engine that exported ``(arrays, meta)``, with ``rules`` (the same model: ``StateError``
        naming the expected and the found shape otherwise); ``kwargs`` go to the constructor."""
        sm = engine_state.StateMeta.from_json(meta)
        capacity = max(sm.next_slot, 16)
        kw = dict(activation=activation, device=device, mode=mode, collaborative=collaborative, capacity=capacity)
        eng = cls(rules, **kw, **kwargs)
        eng._restore_state(arrays, sm)
        return eng

    def _restore_state(self, arrays: Mapping[str, np.ndarray], meta: engine_state.StateMeta) -> None:
        meta.check_rules(engine_state.rule_kinds(self.rules))
        arrays = self.caches.upgrade(arrays)  # float64 sums of a state written before the narrow sums
        g = engine_state.graph_state(arrays, meta)
        specs = self.caches.row_specs()
        # a table this engine derives from another (msg0 = h0, self terms at finish) may be in an older state
        engine_state.check_no_extra(arrays, set(specs) | set(engine_state.GRAPH_ARRAYS) | self.caches.derived)
        n = len(g.slots)
        ghosts = None
        if self.HAS_GHOSTS and meta.format_version >= 2:  # a ghost's zero rows are not written (Caches.export_rows)
            engine_state.check_rows(arrays, {"ghost": specs["ghost"]}, n)
            ghosts = arrays["ghost"]
            short = self.caches.ghost_free_names()
            engine_state.check_rows(arrays, {k: v for k, v in specs.items() if k in short}, n - int(ghosts.sum()))
            specs = {k: v for k, v in specs.items() if k not in short}
        engine_state.check_rows(arrays, specs, n)  # names the expected and the found shape
        meta.check_dims(self.dims)
        self.graph.load(g)
        self._grow(self.graph.capacity)
        self.caches.load_rows(g.slots, arrays, ghosts)
        self.round = meta.round
        self.stats = {"batches": meta.batches, "mutations": meta.mutations}

    def _grow(self, capacity: int) -> None:
        self.caches.grow(capacity, self.graph.next_slot)

    def _clear_rows(self, slots: np.ndarray) -> None:
        self.caches.clear_rows(slots)

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
            raise ValueError(
                f"layer must be in [{-top - 1}, {top}] (0 = input features, {top} or -1 = output), got {layer!r}"
            )
        return int(layer) % (top + 1)

    @torch.no_grad()
    def embeddings(self, ids, layer: int = -1) -> torch.Tensor:
        """``(len(ids), D_layer)`` float32 rows of ``h_layer`` (0 = features, -1 = final output).

        Raises ``UnknownVertexError`` naming the first id that is not a live vertex.
        """
        li = self._layer_index(layer)
        slots = self.graph.slots_of(np.asarray(ids, dtype=np.int64).reshape(-1))
        if li == self.num_layers and self._defers_last_layer:
            last = self.num_layers - 1
            return self.finish(last, slots, self.recompute_agg(last, slots))
        if self.h[li] is None:  # kept as layer li's message and self term (clustergnn.caches): finish it
            prev = li - 1
            return self.finish(prev, slots, None if self.agg[prev] is not None else self.recompute_agg(prev, slots))
        return gather_rows(self.h[li], self.caches.rt(slots))

    @property
    def _defers_last_layer(self) -> bool:
        return self.collaborative and self.mode != "full"

    def vertex_ids(self) -> np.ndarray:
        """External ids of all live vertices (in slot order)."""
        return self.graph.ext_of[self.graph.alive_slots()]

    def to_dgl(self) -> tuple[dgl.DGLGraph, torch.Tensor, np.ndarray]:
        """The current graph as a DGL graph with its features, and the external id of each DGL node."""
        from clustergnn.reference import graph_to_dgl

        return graph_to_dgl(self.graph, self.h[0])

    def memory_bytes(self) -> dict[str, int]:
        return {"structure": self.graph.structure_nbytes(), "caches": self.caches.nbytes()}

    def memory_report(self) -> dict[str, MemoryEntry]:
        """Every array the engine holds, ``{name: MemoryEntry(kind, dtype, shape, nbytes)}`` (allocated
        bytes, capacity rows included; :mod:`clustergnn.memory`).  Names: the cache tables and per-slot
        arrays as in :meth:`Caches.row_specs` (``h0``, ``msg0``, ``agg0``, ``selfc0``, ..., ``version``),
        ``graph.*`` (structure), ``scratch.*``, ``rule{l}.*`` (weights) and ``process.edge_arange``:
        the process-wide cached ``arange`` of DGL edge ids (:func:`clustergnn.kernels.cached_aranges`),
        shared by every engine of the process and as long as the largest edge set a segment ran on."""
        out = dict(self.caches.memory_report())
        out |= {f"graph.{k}": v for k, v in self.graph.memory_report().items()}
        out |= {f"scratch.{k}": v for k, v in self._scratch.memory_report().items()}
        for li, rule in enumerate(self.rules):
            out |= entries_of(f"rule{li}.", "model", tensors_of(rule))
        out |= entries_of("process.", "scratch", kernels.cached_aranges())
        return out

    # ------------------------------------------------------------------ writes
    def apply(self, batch: MutationBatch) -> ApplyResult:
        """Apply ``batch`` (as if its mutations were applied one by one, in order) and update every cache.

        Raises ``MutationError`` naming the offending value; then nothing has changed.
        """
        t0 = time.perf_counter()
        if not isinstance(batch, MutationBatch):
            raise MutationError(f"apply takes a MutationBatch, got {type(batch).__name__}")
        with torch.no_grad():
            if steptimes.ON:
                steptimes.start()
            pend = self.apply_structure(batch, log=self.mode != "full")  # a full recompute reads no edit log
            if steptimes.ON:
                steptimes.mark("structure")
            self.round += 1
            self._grow(self.graph.capacity)
            new, removed = concat_slots(pend.new), concat_slots(pend.removed)
            alive = self.graph.alive
            new = new[alive[new]] if new.size else new
            feat = unique(concat_slots(pend.feat))
            feat = feat[alive[feat]] if feat.size else feat
            if self.mode == "full":
                deltas = self._full()
            else:
                deltas = self._propagate(pend.edges, union(feat, new), new, pend.feat_old)
            if removed.size:
                self._clear_rows(removed)
            self.graph.end_batch()
            if steptimes.ON:
                steptimes.mark("end")
        self.stats["batches"] += 1
        self.stats["mutations"] += len(batch)
        ext = self.graph.ext_of
        return ApplyResult(
            num_mutations=len(batch),
            layers=deltas,
            added_ids=ext[new],
            removed_ids=np.asarray(batch.src[batch.kind == K_REMOVE_VERTEX]),
            feature_changed_ids=ext[feat],
            seconds=time.perf_counter() - t0,
        )

    def apply_structure(
        self, batch: MutationBatch, into: Pending | None = None, *, dry_run: bool = False, log: bool = True
    ) -> Pending:
        """The batch's structural and feature edits, all or nothing (:meth:`StructureEditor.apply`);
        with ``dry_run`` only whether they would apply (``MutationError`` if not), nothing changed;
        without ``log``, no edit log is kept (for a full recompute)."""
        return self.edits.apply(batch, into, dry_run=dry_run, log=log)

    # ------------------------------------------------------------------ recompute and finish
    def finish(
        self, li: int, rows: np.ndarray, agg_rows: torch.Tensor | None = None, view: RowView | None = None
    ) -> torch.Tensor:
        """Layer ``li``'s output rows ``(len(rows), D_{li+1})``, activation included, from the caches
        (or from ``agg_rows``, a freshly recomputed aggregate of ``rows``)."""
        rule, agg_t = self.rules[li], self.agg[li]
        view = view or RowView.of(rows, self.caches.t(rows))
        # the owned-row tables' view (the same one where they are indexed by slot: clustergnn.caches)
        own = view if self.caches.rowmap is None else RowView(self.caches.rt(rows), None)
        indeg = torch.from_numpy(self.graph.in_degree(rows)).to(self.device)
        if agg_rows is not None:
            agg = agg_rows
        elif self.fused and agg_t is not None and agg_t.dtype == torch.float64:
            agg = sum_family.gather_f32_rows(agg_t, self.caches.rows(rows))
        else:
            agg = own.get(agg_t)
        selfc = own.get(self.selfc[li]) if self.selfc[li] is not None else None
        h_in = own.get(self.h[li]) if selfc is None and rule.has_self_term else None
        msg = view.get(self.msg[li]) if rule.finish_uses_msg else None
        return finish_rows(rule, agg, indeg, selfc, h_in, msg, self.activation if li < self.num_layers - 1 else None)

    def recompute_agg(self, li: int, rows: np.ndarray, view: RowView | None = None) -> torch.Tensor:
        """The exact aggregate of ``rows`` from their current in-edges and messages."""
        view = view or RowView.of(rows, self.caches.t(rows))
        # a partition's in-edges with int32 ids (as the full recompute's): no process-wide int64 arange of
        # edge ids as long as the largest recompute, which an owner's load makes its whole graph
        edges = self._in_edge_index(rows, narrow=self.HAS_GHOSTS)
        return self.rules[li].aggregate(self.msg[li], edges, view.get(self.msg[li]))

    def _in_edge_index(self, rows: np.ndarray, narrow: bool = False) -> EdgeIndex:
        """Every in-edge of ``rows`` (sources as slots), row by row; ``narrow``: int32 indices (half the
        bytes; DGL's block then has int32 ids too, made for it alone) on the CPU where the edges fit."""
        # (CPU only: the CUDA paths are not measured with int32 indices)
        dtype = np.int32 if narrow and self.device.type == "cpu" and self.graph.inn.used < 2**31 - 1 else np.int64
        indptr, src = self.graph.inn.gather_csr(rows, dtype)
        if dtype == np.int64:
            return EdgeIndex(self.caches.t(src), self.caches.t(indptr))
        ei = EdgeIndex(torch.from_numpy(src).to(self.device), torch.from_numpy(indptr).to(self.device))
        ei.cache_ids = False  # every edge: its DGL block's edge ids go with it, not kept for the process
        return ei

    def _full(self) -> list[LayerDelta]:
        """Recompute every owned row of every layer (:func:`clustergnn.recompute.recompute_all`)."""
        g = self.graph
        rows = np.flatnonzero(g.alive & ~self.ghost[: g.capacity])
        outdeg = torch.from_numpy(self._outdeg(rows)).to(self.device)
        indeg = torch.from_numpy(g.in_degree(rows)).to(self.device)
        recompute_all(
            self.rules,
            self.caches,
            rows,
            self._in_edge_index(rows, narrow=FULL_INT32_EDGES),
            indeg,
            outdeg,
            self.activation,
            self._keep_caches,
        )
        self.version[rows] = self.round
        return [LayerDelta(li + 1, len(rows), g.ext_of[rows], changed_slots=rows) for li in range(self.num_layers)]
