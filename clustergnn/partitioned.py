"""The partition-local engine and the round protocol that keeps P partitions exact together.

Each partition owns the vertices the partition map gives it: their features, their **in-edges** (an
edge lives with its destination, which aggregates it) and every layer's caches.  A remote source ``u``
of an owned in-edge appears locally as a *ghost*: a slot with out-edges to owned vertices and a cached
copy of ``u``'s per-layer messages, kept current by ``u``'s owner.  The owner knows, per vertex, how many
of its out-edges each other partition holds (its *readers*), so it knows whom to send changes to and
the vertex's global out-degree (GraphConv's norm depends on it).

Propagation reuses :meth:`Engine.propagate_layer` unchanged: a ghost is just a source whose new message arrives
in the inbox instead of being computed locally.  So the rules are shared, not re-implemented.

A **round** moves every partition from one consistent state to the next (bulk-synchronous, so that
"applied through every layer on every partition" has a precise moment, the end of the round):

1. ``ingest(batch)`` (any number of atomic batches): apply local edits; an edge from a remote vertex
   creates its ghost.  Outbox: reader-count deltas to the owners of ghost sources, and the ids of
   vertices added/removed here.  Every partition keeps a directory of the cluster's live ids (as of the
   previous round).  An edge from a remote vertex the directory does not know yet - typically added in
   the same round by another partition, or by one whose consumer lags - is *deferred*, with every later
   mutation of the batch that touches one of its vertices (so per-vertex order holds); ``ingest``
   returns the deferred mutations and the caller feeds them first in the next round (and dead-letters
   them once they have waited too long: the vertex never came).  Everything else of the batch applies
   atomically.
2. ``structure(inbox)``: apply the directory updates, drop ghosts of vertices removed by their owners
   (with their edges), apply reader deltas; compute layer-0 messages.  Outbox: messages for readers.
3. ``layer(l, inbox)`` for ``l = 0..L-1``: install received ghost messages, run the layer, compute the
   next layer's messages.  Outbox: those messages (none after the last layer).
4. ``end_round()``: drop ghosts that lost their last edge, free slots.

A vertex that gains a new reader partition sends it its current message at every layer in that round,
even if unchanged; a new ghost starts with zero messages, so the additive rule gives exactly the new
edges' contributions.  After ``end_round`` on all partitions, every owned vertex's caches equal DGL's
forward on the union graph (tests/core/test_partitioned.py checks it against DGL for P = 1..4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from clustergnn.aggregate.base import Aggregation, BatchContext
from clustergnn.engine import Engine
from clustergnn.errors import MutationError
from clustergnn.graph import DIRECT_ID_LIMIT, union, unique
from clustergnn.memory import DICT_ENTRY_BYTES, MemoryEntry, entries_of
from clustergnn.mutations import MutationBatch, edge_kinds_mask
from clustergnn.partition import PartitionMap, route, split_by_owner
from clustergnn.results import LayerDelta
from clustergnn.rounds import EnginePartition, RoundOptions, RoundStats, local_fan_out, run_round
from clustergnn.snapshot import Manifest, SnapshotStore
from clustergnn.state import StateError, StateMeta, check_rows
from clustergnn.transaction import Pending, concat_slots


class IdDirectory:
    """The cluster's vertex ids as every partition sees them: live, removed (a tombstone), or unknown."""

    UNKNOWN, LIVE, REMOVED = 0, 1, 2

    def __init__(self) -> None:
        self._table = np.zeros(0, dtype=np.int8)
        self._other: dict[int, int] = {}

    def memory_report(self) -> dict[str, MemoryEntry]:
        out = entries_of("", "structure", {"table": self._table})
        if self._other:
            n = len(self._other)
            out["dict"] = MemoryEntry("structure", "object", (n,), n * DICT_ENTRY_BYTES)
        return out

    @staticmethod
    def _direct(ids: np.ndarray) -> np.ndarray:
        return (ids >= 0) & (ids < DIRECT_ID_LIMIT)

    def _set(self, ids: np.ndarray, state: int) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        d = self._direct(ids)
        if d.any():
            top = int(ids[d].max()) + 1
            if top > len(self._table):
                t = np.zeros(max(top, 2 * len(self._table)), dtype=np.int8)
                t[: len(self._table)] = self._table
                self._table = t
            self._table[ids[d]] = state
        for i in ids[~d].tolist():
            self._other[i] = state

    def add(self, ids: np.ndarray) -> None:
        self._set(ids, self.LIVE)

    def remove(self, ids: np.ndarray) -> None:
        self._set(ids, self.REMOVED)

    def state(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(len(ids), dtype=np.int8)
        d = (ids >= 0) & (ids < len(self._table))
        out[d] = self._table[ids[d]]
        rest = np.flatnonzero(~self._direct(ids))
        if rest.size and self._other:
            out[rest] = [self._other.get(int(i), 0) for i in ids[rest]]
        return out

    def contains(self, ids: np.ndarray) -> np.ndarray:
        return self.state(ids) == self.LIVE

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64, states int8)`` of every id that is not unknown (the table's and the dict's)."""
        direct = np.flatnonzero(self._table).astype(np.int64)
        other = np.fromiter(self._other, dtype=np.int64, count=len(self._other))
        ids = np.concatenate([direct, other])
        states = np.concatenate([self._table[direct], np.fromiter(self._other.values(), np.int8, len(self._other))])
        return ids, states.astype(np.int8)

    @classmethod
    def from_export(cls, ids: np.ndarray, states: np.ndarray) -> IdDirectory:
        bad = np.flatnonzero((states != cls.LIVE) & (states != cls.REMOVED))
        if bad.size:
            raise ValueError(f"directory state of id {int(ids[bad[0]])} must be LIVE or REMOVED, got {states[bad[0]]}")
        d = cls()
        d.add(ids[states == cls.LIVE])
        d.remove(ids[states == cls.REMOVED])
        return d


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class StructMsg:
    """Step-1 message from ``sender``: its added/removed vertices (to all) and reader-count deltas for
    vertices the receiver owns."""

    sender: int
    added: np.ndarray = field(default_factory=lambda: _EMPTY)
    removed: np.ndarray = field(default_factory=lambda: _EMPTY)
    reader_ids: np.ndarray = field(default_factory=lambda: _EMPTY)
    reader_deltas: np.ndarray = field(default_factory=lambda: _EMPTY)

    @property
    def nbytes(self) -> int:
        return self.added.nbytes + self.removed.nbytes + self.reader_ids.nbytes + self.reader_deltas.nbytes


@dataclass(frozen=True)
class LayerMsg:
    """New layer-``layer`` messages of vertices ``ids`` owned by ``sender`` (rows of ``values``)."""

    sender: int
    layer: int
    ids: np.ndarray
    values: np.ndarray  # (len(ids), msg_dim) float32

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.values.nbytes


@dataclass
class _RoundState:
    pend: Pending = field(default_factory=Pending)
    reader_new: dict[int, np.ndarray] = field(default_factory=dict)  # partition -> owned slots it now reads
    extra_out_changed: np.ndarray = field(default_factory=lambda: _EMPTY)
    ctx: BatchContext | None = None
    changed: np.ndarray = field(default_factory=lambda: _EMPTY)
    next_srcs: np.ndarray = field(default_factory=lambda: _EMPTY)
    next_msgs: torch.Tensor | None = None
    deltas: list[LayerDelta] = field(default_factory=list)
    ingested: int = 0
    removed_ids: np.ndarray = field(default_factory=lambda: _EMPTY)  # owned ids removed this round (even if re-added)
    blocked: set[int] = field(default_factory=set)  # vertices touched by deferred mutations
    reported: tuple[int, int] = (0, 0)  # edge-log parts already sent as reader deltas
    last_in: np.ndarray = field(default_factory=lambda: _EMPTY)  # rows whose last-layer input changed


@dataclass(frozen=True)
class RoundSummary:
    partition: int
    mutations: int
    affected_per_layer: list[int]
    changed_per_layer: list[int]
    ghosts: int
    owned: int
    published: Published | None = None


@dataclass(frozen=True)
class Published:
    """What a round changed in a partition's final embeddings, for a read replica: drop ``removed``,
    then upsert ``ids`` with ``rows`` and ``versions``.  ``None`` in collaborative mode (not materialised).

    Replica-finish serving (``indeg`` set; :class:`clustergnn.replica.FinishingReplica`): ``rows`` are the
    last layer's *aggregates* of ``ids`` (every row the round's last layer updated, in the aggregate's
    dtype) and ``indeg`` their in-degrees; ``self_ids`` are the rows whose last-layer input changed, with
    ``self_rows`` their self terms (the cached ``selfc`` rows, or their inputs ``h[L-1]`` where the rule
    computes its self term at finish; None where the rule has none) and ``msg_rows`` their own messages
    (None unless the finish reads them: SAGE gcn).  The reader finishes a row with
    :func:`clustergnn.rules.finish_rows`, the engine's own finish."""

    removed: np.ndarray
    ids: np.ndarray
    rows: np.ndarray  # (len(ids), D) float32; replica-finish: the aggregates (len(ids), msg_dim)
    versions: np.ndarray
    indeg: np.ndarray | None = None
    self_ids: np.ndarray | None = None
    self_rows: np.ndarray | None = None
    msg_rows: np.ndarray | None = None

    @property
    def finish_inputs(self) -> bool:
        """The rows are the last layer's finish inputs (replica-finish serving), not final embeddings."""
        return self.indeg is not None

    @property
    def nbytes(self) -> int:
        parts = (self.removed, self.ids, self.rows, self.versions, self.indeg, self.self_ids, self.self_rows)
        return int(sum(a.nbytes for a in (*parts, self.msg_rows) if a is not None))


class PartitionEngine(Engine):
    """One partition of a cluster; see the module docstring for the round protocol."""

    HAS_GHOSTS = True

    def __init__(self, rules, *, partition: int, partition_map: PartitionMap, **kwargs) -> None:
        self.partition = int(partition)
        self.pmap = partition_map
        self.num_partitions = int(partition_map.num_partitions)
        if not 0 <= self.partition < self.num_partitions:
            raise ValueError(f"partition must be in [0, {self.num_partitions}), got {partition}")
        self.readers = np.zeros((0, self.num_partitions), dtype=np.int64)
        self.publish = bool(kwargs.pop("publish", False))  # return final-layer changes from end_round
        # publish the last layer's finish inputs, not its output (replica-finish serving); a GAT last layer
        # keeps no aggregate to publish: it stays eager (its final rows are published)
        replica_finish = bool(kwargs.pop("replica_finish", False))
        kwargs["finish_elsewhere"] = replica_finish and rules[-1].aggregation is not Aggregation.ATTENTION
        super().__init__(rules, **kwargs)
        self._replica_finish = kwargs["finish_elsewhere"] and self.mode != "full"
        self.directory = IdDirectory()
        self._rs: _RoundState | None = None
        self.load_deferred = False  # the last layer is deferred for a bulk load (defer_last_layer)

    def _grow(self, capacity: int) -> None:
        if capacity > len(self.readers):
            r = np.zeros((capacity, self.num_partitions), dtype=np.int64)
            r[: len(self.readers)] = self.readers
            self.readers = r
        super()._grow(capacity)

    def _clear_rows(self, slots: np.ndarray) -> None:
        self.readers[slots] = 0
        super()._clear_rows(slots)

    def memory_report(self) -> dict[str, MemoryEntry]:
        """:meth:`Engine.memory_report` plus the reader counts and the id directory's table."""
        out = super().memory_report() | entries_of("", "per_slot", {"readers": self.readers})
        return out | {f"directory.{k}": v for k, v in self.directory.memory_report().items()}

    # ------------------------------------------------------------------ state (clustergnn/state.py)
    def export_state(self) -> tuple[dict[str, np.ndarray], dict]:
        """:meth:`Engine.export_state` plus the reader counts, the directory and the partition; between
        rounds only (``RuntimeError`` while one is open: its edits are half propagated)."""
        if self._rs is not None:
            raise RuntimeError(f"partition {self.partition}: cannot export state while round {self.round} is open")
        if self.load_deferred:  # its last layer's aggregates and outputs are stale until finish_deferred_layer
            raise RuntimeError(f"partition {self.partition}: cannot export state while its last layer is deferred")
        arrays, meta = super().export_state()
        arrays["readers"] = self.readers[arrays["slots"]].copy()
        arrays["dir_ids"], arrays["dir_states"] = self.directory.export()
        return arrays, {**meta, "partition": self.partition, "num_partitions": self.num_partitions}

    def _restore_state(self, arrays: Mapping[str, np.ndarray], meta: StateMeta) -> None:
        if (meta.partition, meta.num_partitions) != (self.partition, self.num_partitions):
            raise StateError(
                f"the state is of partition {meta.partition} of {meta.num_partitions}, "
                f"restored into partition {self.partition} of {self.num_partitions}"
            )
        own = {name: arrays[name] for name in ("readers", "dir_ids", "dir_states") if name in arrays}
        n = len(arrays["slots"]) if "slots" in arrays else 0
        check_rows(own, {"readers": (np.dtype(np.int64), (self.num_partitions,))}, n)
        check_rows(
            own,
            {"dir_ids": (np.dtype(np.int64), ()), "dir_states": (np.dtype(np.int8), ())},
            len(own.get("dir_ids", ())),
        )
        super()._restore_state({k: v for k, v in arrays.items() if k not in own}, meta)
        self.readers[arrays["slots"]] = own["readers"]
        try:
            self.directory = IdDirectory.from_export(own["dir_ids"], own["dir_states"])
        except ValueError as e:
            raise StateError(str(e)) from e

    # ------------------------------------------------------------------ a bulk load's deferred last layer
    def defer_last_layer(self) -> bool:
        """Run the last layer as collaborative serving does until :meth:`finish_deferred_layer`: rounds keep
        its messages (and self terms) current but neither its aggregates nor its outputs, and publish
        nothing.  For a bulk load (a start's replay) that no one reads meanwhile: each load round's last
        hop (about every owned row, every round) and its publication are not done at all, and the last
        layer is computed once, at the end, a chunk of rows at a time.  Reads stay exact meanwhile (they
        finish the rows asked for, as collaborative reads do); snapshots are refused (the aggregates are
        stale).  False (nothing to do) where the engine already defers it (collaborative serving) or
        keeps no aggregate for it to finish (replica-finish serving keeps no output)."""
        if self._defers_last_layer or self.finishes_elsewhere or self.mode == "full":
            return False
        self.collaborative = True
        self.load_deferred = True
        return True

    @torch.no_grad()
    def finish_deferred_layer(self) -> int:
        """End :meth:`defer_last_layer`: recompute the last layer's aggregate of every owned row from its
        in-edges and the current messages, finish and store it, ``propagation.RECOMPUTE_CHUNK`` rows at a time
        (``Propagation._recompute_in_chunks``, as a load round's recompute), and reset those rows' drift
        budgets (a recomputed row carries no rounding but its own sum's).  Every row is then what an
        eager round would have left: the aggregate is the exact sum over the row's current in-edges,
        which is what the incremental rules keep.  Returns the rows finished (0 where nothing was
        deferred).  Between rounds only (``RuntimeError`` while one is open)."""
        if not self.load_deferred:
            return 0
        if self._rs is not None:
            raise RuntimeError(f"partition {self.partition}: cannot finish the last layer while a round is open")
        g, li = self.graph, self.num_layers - 1
        rows = np.flatnonzero(g.alive & ~self.ghost[: g.capacity])
        self.collaborative = False
        self.load_deferred = False
        self._recompute_in_chunks(li, rows, _EMPTY, False)
        if self.drift[li] is not None and rows.size:
            self.drift[li].index_fill_(0, self.caches.rt(rows), 0.0)
        return len(rows)

    # ------------------------------------------------------------------ reads
    def owned_ids(self) -> np.ndarray:
        g = self.graph
        return g.ext_of[np.flatnonzero(g.alive & ~self.ghost[: g.capacity])]

    @torch.no_grad()
    def embeddings(self, ids, layer: int = -1) -> torch.Tensor:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        slots = self.graph.lookup(ids)
        bad = np.flatnonzero((slots < 0) | self.ghost[np.maximum(slots, 0)])
        if bad.size:
            from clustergnn.errors import UnknownVertexError

            raise UnknownVertexError(f"unknown vertex id {int(ids[bad[0]])} (not owned by partition {self.partition})")
        return super().embeddings(ids, layer)

    def versions(self, ids) -> np.ndarray:
        return self.version[self.graph.slots_of(np.asarray(ids, dtype=np.int64).reshape(-1))].copy()

    # ------------------------------------------------------------------ round protocol
    def has_ghosts(self) -> bool:
        """Whether any slot mirrors another partition's vertex (the round driver's isolated rounds)."""
        alive = self.graph.alive
        return bool((self.ghost[: len(alive)] & alive).any())

    def begin_round(self, round_id: int | None = None) -> None:
        """Open a round; ``round_id`` (the cluster's round counter) becomes the version of what changes."""
        if self._rs is not None:
            raise RuntimeError(f"partition {self.partition}: a round is already open")
        self.round = self.round + 1 if round_id is None else int(round_id)
        self._rs = _RoundState()

    def _state(self) -> _RoundState:
        if self._rs is None:
            raise RuntimeError(f"partition {self.partition}: no round is open (call begin_round)")
        return self._rs

    @torch.no_grad()
    def unknown_sources(self, batch: MutationBatch) -> np.ndarray:
        """Mask of ``batch``'s edges whose source is another partition's vertex this partition has never
        heard of (what :meth:`ingest` defers them for); the rest of a deferred batch waits only behind them."""
        is_edge = edge_kinds_mask(batch.kind)
        remote_edge = is_edge & (self.pmap.owner(batch.src) != self.partition)
        out = np.zeros(len(batch), dtype=bool)
        idx = np.flatnonzero(remote_edge)
        if idx.size:
            srcs = batch.src[idx]
            state = np.where(self.graph.lookup(srcs) >= 0, IdDirectory.LIVE, self.directory.state(srcs))
            out[idx[state == IdDirectory.UNKNOWN]] = True
        return out

    def _own_edges(self, batch: MutationBatch) -> tuple[MutationBatch, np.ndarray, np.ndarray, np.ndarray]:
        """``batch`` checked to route here, without its edges whose remote source is known to be removed
        (such an edge goes as it would have gone with its source: cross-partition order is undefined, and
        this equals "edge first"); with its edge mask, its remote-edge mask and those sources' directory
        states.  ``MutationError`` names a mutation that routes elsewhere."""
        routing = route(batch)
        wrong = np.flatnonzero(self.pmap.owner(routing) != self.partition)
        if wrong.size:
            i = int(wrong[0])
            raise MutationError(
                f"mutation {i} routes to partition {int(self.pmap.owner(routing[i : i + 1])[0])}, "
                f"not {self.partition} (vertex {int(routing[i])})"
            )
        g = self.graph
        is_edge = edge_kinds_mask(batch.kind)
        remote_edge = is_edge & (self.pmap.owner(batch.src) != self.partition)
        srcs = batch.src[remote_edge]
        state = np.where(g.lookup(srcs) >= 0, IdDirectory.LIVE, self.directory.state(srcs))
        gone = np.flatnonzero(remote_edge)[state == IdDirectory.REMOVED]
        if gone.size:
            keep = np.ones(len(batch), dtype=bool)
            keep[gone] = False
            batch, is_edge, remote_edge = batch.subset(keep), is_edge[keep], remote_edge[keep]
            state = state[state != IdDirectory.REMOVED]
        return batch, is_edge, remote_edge, state

    def behind_deferred(self, batch: MutationBatch) -> np.ndarray:
        """The vertices ``batch`` touches (sources, and destinations of edges) that mutations deferred
        earlier in the open round touch too (sorted): :meth:`ingest` would defer those rows behind them,
        so :meth:`check` cannot judge ``batch`` until they apply (an edge whose addition waits for its
        unknown source does not exist yet, and removing it now would be refused)."""
        blocked = self._rs.blocked if self._rs is not None else None
        if not blocked or len(batch) == 0:
            return _EMPTY
        is_edge = edge_kinds_mask(batch.kind)
        touched = unique(np.concatenate([batch.src, batch.dst[is_edge]]).astype(np.int64))
        return touched[np.isin(touched, np.fromiter(blocked, dtype=np.int64, count=len(blocked)))]

    @torch.no_grad()
    def check(self, batch: MutationBatch) -> np.ndarray:
        """Would ``batch`` apply whole here, now?  ``MutationError`` naming the first problem if not;
        otherwise the sources of its remote edges this partition has never heard of (sorted, unique),
        which only other partitions can vouch for (a transaction's other parts may add them).  Nothing
        changes either way.  Edges from a source that is known to be removed are left out, as
        :meth:`ingest` leaves them out."""
        if len(batch) == 0:
            return _EMPTY
        g = self.graph
        batch, _, remote_edge, state = self._own_edges(batch)
        srcs = batch.src[remote_edge]
        unknown = unique(srcs[state == IdDirectory.UNKNOWN])
        remote = unique(srcs)
        missing = remote[g.lookup(remote) < 0] if remote.size else _EMPTY
        ghosts = g.add_vertices(missing) if missing.size else _EMPTY
        try:
            if ghosts.size:
                self._grow(g.capacity)
                self.ghost[ghosts] = True
            self.apply_structure(batch, dry_run=True)
        finally:
            if ghosts.size:
                g.discard_vertices(ghosts)
                self.ghost[ghosts] = False
        return unknown

    def ingest(self, batch: MutationBatch) -> MutationBatch:
        """Apply ``batch`` atomically except for its deferred part, which is returned (see the module
        docstring); ``MutationError`` (naming the bad value) if it is invalid: then nothing changed."""
        rs = self._state()
        if len(batch) == 0:
            return batch
        g = self.graph
        batch, is_edge, remote_edge, state = self._own_edges(batch)
        unknown = state == IdDirectory.UNKNOWN
        if unknown.any() or rs.blocked:
            keep = self._defer_mask(batch, is_edge, np.flatnonzero(remote_edge)[unknown], rs.blocked)
            deferred = batch.subset(~keep)
            batch = batch.subset(keep)
            is_edge, remote_edge = is_edge[keep], remote_edge[keep]
        else:
            deferred = batch.slice(0, 0)
        remote = unique(batch.src[remote_edge])
        ghosts = _EMPTY
        if remote.size:
            missing = remote[g.lookup(remote) < 0]
            if missing.size:
                ghosts = g.add_vertices(missing)
                self._grow(g.capacity)
                self.ghost[ghosts] = True
        try:
            self.apply_structure(batch, into=rs.pend)
        except BaseException:
            if ghosts.size:  # ghosts made for this batch have no edges left after the undo
                g.discard_vertices(ghosts)
                self.ghost[ghosts] = False
            raise
        self._grow(g.capacity)
        rs.ingested += len(batch)
        return deferred

    @staticmethod
    def _defer_mask(batch: MutationBatch, is_edge: np.ndarray, unknown_at: np.ndarray, blocked: set[int]) -> np.ndarray:
        """Which mutations apply now (True) in order: not an edge from an unknown vertex, and touching no
        vertex of an earlier deferred mutation.  A loop, but only on the rare batches that defer."""
        keep = np.ones(len(batch), dtype=bool)
        unknown = np.zeros(len(batch), dtype=bool)
        unknown[unknown_at] = True
        src, dst = batch.src.tolist(), batch.dst.tolist()
        for i in range(len(batch)):
            touched = (src[i], dst[i]) if is_edge[i] else (src[i],)
            if unknown[i] or any(v in blocked for v in touched):
                keep[i] = False
                blocked.update(touched)
        return keep

    def _ghost_edge_deltas(self, rs: _RoundState) -> tuple[np.ndarray, np.ndarray]:
        """Per ghost source: net change of its out-edges held here since the last outbox, as (ext id, delta)."""
        e = rs.pend.edges
        a0, r0 = rs.reported
        rs.reported = (len(e.add_src), len(e.rem_src))
        add_src, rem_src = concat_slots(e.add_src[a0:]), concat_slots(e.rem_src[r0:])
        src = np.concatenate([add_src, rem_src])
        sign = np.concatenate([np.ones(len(add_src), np.int64), -np.ones(len(rem_src), np.int64)])
        is_ghost = self.ghost[src]
        src, sign = src[is_ghost], sign[is_ghost]
        if not src.size:
            return _EMPTY, _EMPTY
        u, inv = np.unique(src, return_inverse=True)
        d = np.bincount(inv, weights=sign, minlength=len(u)).astype(np.int64)
        nz = d != 0
        return self.graph.ext_of[u[nz]], d[nz]

    @torch.no_grad()
    def structure_outbox(self) -> dict[int, StructMsg]:
        """Step 1's outbox (after the round's ``ingest`` calls).  May be called again after more ingests
        (a retry of deferred mutations once other partitions' additions are known): each call reports the
        reader deltas since the previous one and the round's added/removed vertices so far."""
        rs = self._state()
        g = self.graph
        added = g.ext_of[concat_slots(rs.pend.new)] if rs.pend.new else _EMPTY
        added = added[g.lookup(added) >= 0] if added.size else added  # added then removed: never existed
        # A vertex removed and re-added in one round is reported as both: readers drop their ghost of
        # the old vertex (and its edges); the directory applies removals before additions.
        removed_slots = concat_slots(rs.pend.removed)
        removed = unique(g.ext_of[removed_slots]) if removed_slots.size else _EMPTY
        rs.removed_ids = removed
        self.directory.remove(removed)
        self.directory.add(added)
        ids, deltas = self._ghost_edge_deltas(rs)
        owners = self.pmap.owner(ids)
        out = {}
        for q in range(self.num_partitions):
            if q == self.partition:
                continue
            m = owners == q
            out[q] = StructMsg(self.partition, added, removed, ids[m], deltas[m])
        return out

    def apply_directory(self, inbox: Sequence[StructMsg]) -> None:
        """Learn other partitions' added/removed vertices (idempotent; messages in the order sent)."""
        for msg in inbox:
            self.directory.remove(msg.removed)
            self.directory.add(msg.added)

    def begin_retry(self, inbox: Sequence[StructMsg]) -> None:
        """Before re-ingesting this round's deferred mutations (all of them, in order): learn the other
        partitions' additions so far and forget which vertices the deferrals blocked."""
        self.apply_directory(inbox)
        if self._rs is not None:
            self._rs.blocked = set()

    @torch.no_grad()
    def structure(self, inbox: Sequence[StructMsg]) -> dict[int, LayerMsg]:
        """Step 2: apply other partitions' structural news; return layer-0 messages for readers."""
        rs = self._state()
        g = self.graph
        gone: list[np.ndarray] = []
        self.apply_directory(inbox)
        for msg in inbox:
            if msg.removed.size:
                slots = g.lookup(msg.removed)
                gone.append(msg.removed[(slots >= 0) & self.ghost[np.maximum(slots, 0)]])
        gone_ids = unique(concat_slots(gone))
        if gone_ids.size:
            slots, (rs_src, rs_dst) = g.remove_vertices(gone_ids)
            rs.pend.edges.rem_src.append(rs_src)
            rs.pend.edges.rem_dst.append(rs_dst)
            rs.pend.removed.append(slots)
        out_changed = []
        for msg in inbox:
            if not msg.reader_ids.size:
                continue
            slots = g.lookup(msg.reader_ids)
            # deltas for a vertex removed here this round are void: the reader drops its ghost too
            live = (slots >= 0) & ~self.ghost[np.maximum(slots, 0)] & ~np.isin(msg.reader_ids, rs.removed_ids)
            slots, d = slots[live], msg.reader_deltas[live]
            before = self.readers[slots, msg.sender].copy()
            self.readers[slots, msg.sender] += d
            self.remote_out[slots] += d
            if (self.readers[slots, msg.sender] < 0).any():
                raise RuntimeError(f"partition {self.partition}: negative reader count from {msg.sender}")
            fresh = slots[(before == 0) & (self.readers[slots, msg.sender] > 0)]
            if fresh.size:  # a sender may send several structure messages in one round (retry)
                prev = rs.reader_new.get(msg.sender)
                rs.reader_new[msg.sender] = fresh if prev is None else np.union1d(prev, fresh)
            out_changed.append(slots)
        rs.extra_out_changed = unique(concat_slots(out_changed))
        new = concat_slots(rs.pend.new)
        new = new[g.alive[new]] if new.size else new
        rs.ctx = self.batch_context(rs.pend.edges, new)
        feat = unique(concat_slots(rs.pend.feat))
        feat = feat[g.alive[feat]] if feat.size else feat
        rs.changed = union(feat, new)
        return self._next_messages(rs, 0)

    def _next_messages(self, rs: _RoundState, li: int) -> dict[int, LayerMsg]:
        srcs = self.layer_sources(li, rs.ctx, rs.changed, rs.extra_out_changed)
        msgs = self.messages(li, srcs)
        rs.next_srcs, rs.next_msgs = srcs, msgs
        out = {}
        ext = self.graph.ext_of
        for q in range(self.num_partitions):
            if q == self.partition:
                continue
            send = self.readers[srcs, q] > 0
            ids, vals = ext[srcs[send]], msgs[torch.from_numpy(send).to(self.device)]
            fresh = rs.reader_new.get(q)
            if fresh is not None and fresh.size:
                extra = np.setdiff1d(fresh, srcs, assume_unique=True)
                extra = extra[self.graph.alive[extra]]
                if extra.size:
                    ids = np.concatenate([ids, ext[extra]])
                    vals = torch.cat([vals, self.msg[li][self.caches.t(extra)]])
            out[q] = LayerMsg(self.partition, li, ids, vals.cpu().numpy())
        return out

    @torch.no_grad()
    def layer(self, li: int, inbox: Sequence[LayerMsg]) -> dict[int, LayerMsg]:
        """Step 3+li: run layer ``li`` with the received ghost messages; return the next layer's outbox."""
        rs = self._state()
        g = self.graph
        ids = [m.ids for m in inbox if m.ids.size]
        srcs, msgs = rs.next_srcs, rs.next_msgs
        if ids:
            gids = np.concatenate(ids)
            gslots = g.lookup(gids)
            if (gslots < 0).any() or not self.ghost[gslots].all():
                bad = gids[(gslots < 0) | ~self.ghost[np.maximum(gslots, 0)]][0]
                raise RuntimeError(f"partition {self.partition}: message for vertex {int(bad)}, which is no ghost here")
            vals = torch.from_numpy(np.concatenate([m.values for m in inbox if m.ids.size])).to(self.device)
            srcs = np.concatenate([srcs, gslots])
            msgs = torch.cat([msgs, vals])
        if li == self.num_layers - 1:
            rs.last_in = rs.changed
        delta = self.propagate_layer(li, rs.ctx, rs.changed, srcs, msgs)
        rs.deltas.append(delta)
        rs.changed = delta.changed_slots
        if li + 1 < self.num_layers:
            return self._next_messages(rs, li + 1)
        return {}

    @torch.no_grad()
    def end_round(self) -> RoundSummary:
        rs = self._state()
        g = self.graph
        ghosts = np.flatnonzero(self.ghost[: g.capacity] & g.alive)
        orphan = ghosts[g.out_degree(ghosts) == 0]
        if orphan.size:
            slots, _ = g.remove_vertices(g.ext_of[orphan])
            rs.pend.removed.append(slots)
        removed = concat_slots(rs.pend.removed)
        published = self._publish(rs, removed) if self.publish else None
        if removed.size:
            self._clear_rows(removed)
        g.end_batch()
        self._rs = None
        self.stats["batches"] += 1
        self.stats["mutations"] += rs.ingested
        owned = int((g.alive & ~self.ghost[: g.capacity]).sum())
        return RoundSummary(
            self.partition,
            rs.ingested,
            [d.affected for d in rs.deltas],
            [len(d.changed_slots) for d in rs.deltas],
            int(g.num_vertices - owned),
            owned,
            published,
        )

    def _publish(self, rs: _RoundState, removed_slots: np.ndarray) -> Published | None:
        if self._defers_last_layer:
            return None
        g = self.graph
        gone = removed_slots[~self.ghost[removed_slots]] if removed_slots.size else removed_slots
        changed = rs.deltas[-1].changed_slots if rs.deltas else _EMPTY
        changed = changed[g.alive[changed] & ~self.ghost[changed]] if changed.size else changed
        if self.finishes_elsewhere:
            inputs = rs.last_in[g.alive[rs.last_in] & ~self.ghost[rs.last_in]] if rs.last_in.size else rs.last_in
            return self._finish_inputs(g.ext_of[gone], changed, inputs)
        rows = self._final_rows(changed).cpu().numpy() if changed.size else np.zeros((0, self.dims[-1]), np.float32)
        return Published(g.ext_of[gone], g.ext_of[changed], rows, self.version[changed].copy())

    def _final_rows(self, slots: np.ndarray) -> torch.Tensor:
        """The final rows of owned ``slots``: ``h[L]``'s, or finished from the cached rows where the last
        layer is finished on read (``engine.PARTITION_OUTPUT_ON_READ``), as a read finishes them."""
        if self.h[-1] is not None:
            return self.h[-1][self.caches.rt(slots)]
        return self.finish(self.num_layers - 1, slots)

    @property
    def finishes_elsewhere(self) -> bool:
        """The last layer's output is not kept here: a reader finishes it from what this engine publishes."""
        return self._replica_finish and self.h[-1] is None

    def _finish_inputs(self, removed_ids: np.ndarray, rows: np.ndarray, inputs: np.ndarray) -> Published:
        """The :class:`Published` of replica-finish serving: aggregates and in-degrees of ``rows``, self
        terms (and own messages where the finish reads them) of ``inputs``."""
        li = self.num_layers - 1
        # msg is indexed by slot, the other tables by owned row (clustergnn.caches, "Owned rows")
        rule, t, rt, ext = self.rules[li], self.caches.t, self.caches.rt, self.graph.ext_of
        self_rows = msg_rows = None
        if not (rule.has_self_term or rule.finish_uses_msg):  # the finish reads only aggregate and degree
            inputs = _EMPTY
        if rule.has_self_term:
            table = self.selfc[li] if self.selfc[li] is not None else self.h[li]
            self_rows = table[rt(inputs)].cpu().numpy()
        if rule.finish_uses_msg:
            msg_rows = self.msg[li][t(inputs)].cpu().numpy()
        return Published(
            removed_ids,
            ext[rows],
            self.agg[li][rt(rows)].cpu().numpy(),
            self.version[rows].copy(),
            indeg=self.graph.in_degree(rows).astype(np.int64),
            self_ids=ext[inputs],
            self_rows=self_rows,
            msg_rows=msg_rows,
        )

    def publish_all(self, start: int = 0, count: int | None = None) -> Published:
        """What a new read replica needs of every owned vertex (after a restore, or to rebuild it): the
        final embeddings, or in replica-finish serving every row's finish inputs.  ``start``, ``count``:
        only those of the owned vertices in id order (a replica filled in bounded pieces)."""
        g = self.graph
        slots = np.flatnonzero(g.alive & ~self.ghost[: g.capacity])
        slots = slots[np.argsort(g.ext_of[slots], kind="stable")]
        slots = slots[start : None if count is None else start + count]
        if self.finishes_elsewhere:
            return self._finish_inputs(_EMPTY, slots, slots)
        ids = g.ext_of[slots]
        rows = self.embeddings(ids, -1).cpu().numpy().astype(np.float32, copy=False)
        return Published(_EMPTY, ids, rows, self.version[slots].copy())


class LocalCluster:
    """P partition engines in one process, driven round by round by the same driver as the Ray
    coordinator (:func:`clustergnn.rounds.run_round`; the fan-out is a loop).  Tests use it."""

    def __init__(self, engines: list[PartitionEngine]) -> None:
        self.engines = engines
        self.P = len(engines)
        self.pmap = engines[0].pmap
        self.parts = [EnginePartition(e) for e in engines]
        self.stats = RoundStats()
        self.round_id = max(e.round for e in engines)

    @classmethod
    def from_layers(cls, layers, feature_dim: int, partition_map: PartitionMap, **kwargs) -> LocalCluster:
        from clustergnn.rules import rules_from_dgl

        return cls(
            [
                PartitionEngine(
                    rules_from_dgl(list(layers), feature_dim), partition=p, partition_map=partition_map, **kwargs
                )
                for p in range(partition_map.num_partitions)
            ]
        )

    # ------------------------------------------------------------------ snapshots (docs/snapshots.md)
    def snapshot(
        self, store: SnapshotStore, snapshot_id: int | None = None, next_offsets: Sequence[int] | None = None
    ) -> Manifest:
        """Write every partition's state (:meth:`PartitionEngine.export_state`) and commit: a consistent cut,
        since between rounds every partition has finished the same round and no message is in flight.

        ``next_offsets[p]``: the first mutation of partition ``p``'s input the snapshot does not reflect
        (default: the mutations its engine has ingested, which is that offset when the input is fed in
        order from 0).  ``snapshot_id`` defaults to ``store.next_id()``."""
        waiting = [p for p, part in enumerate(self.parts) if len(part.deferred)]
        if waiting:
            raise RuntimeError(
                f"partitions {waiting} hold deferred mutations: snapshot after the round that applies them"
            )
        if next_offsets is not None and len(next_offsets) != self.P:
            raise ValueError(f"need one next offset per partition ({self.P}), got {len(next_offsets)}")
        sid = store.next_id() if snapshot_id is None else snapshot_id
        infos = []
        for p, eng in enumerate(self.engines):
            arrays, meta = eng.export_state()
            offset = eng.stats["mutations"] if next_offsets is None else next_offsets[p]
            infos.append(store.write_part(sid, p, arrays, round_id=self.round_id, next_offset=offset, meta=meta))
        return store.commit(sid, infos, partitions=self.P, meta={"round": self.round_id})

    @classmethod
    def restore(
        cls,
        store: SnapshotStore,
        layers,
        partition_map: PartitionMap,
        manifest: Manifest | None = None,
        **kwargs,
    ) -> LocalCluster:
        """Fresh engines from ``manifest`` (default: the newest complete snapshot, ``store.latest()``), all at
        its round; ``kwargs`` go to each :meth:`PartitionEngine.from_state`.  ``SnapshotError`` if there is
        none, ``StateError`` if ``layers`` or ``partition_map`` do not fit it."""
        from clustergnn.rules import rules_from_dgl
        from clustergnn.snapshot import SnapshotError

        manifest = store.latest() if manifest is None else manifest
        if manifest is None:
            raise SnapshotError(f"no complete snapshot in {store!r}")
        if manifest.partitions != partition_map.num_partitions:
            raise StateError(
                f"snapshot {manifest.snapshot_id} has {manifest.partitions} partitions, "
                f"the partition map {partition_map.num_partitions}"
            )
        engines = []
        for p in range(manifest.partitions):
            arrays, info = store.read_part(manifest, p)
            rules = rules_from_dgl(list(layers), int(StateMeta.from_json(info.meta).dims[0]))
            engines.append(
                PartitionEngine.from_state(rules, arrays, info.meta, partition=p, partition_map=partition_map, **kwargs)
            )
        cluster = cls(engines)
        cluster.round_id = manifest.round_id
        return cluster

    @property
    def messages(self) -> int:
        return self.stats.messages

    @property
    def message_bytes(self) -> int:
        return self.stats.message_bytes

    def split(self, batch: MutationBatch) -> list[MutationBatch]:
        """``batch``'s mutations per partition (:func:`clustergnn.partition.split_by_owner`), in order."""
        parts = split_by_owner(batch, self.pmap)
        return [parts.get(p, batch.slice(0, 0)) for p in range(self.P)]

    def round(self, per_partition: list[MutationBatch]) -> tuple[list[RoundSummary], list[MutationBatch]]:
        """One round over the given per-partition batches; returns summaries (none if nothing was to do)
        and the deferred mutations per partition.  Deferred mutations get one retry within the round
        (:mod:`clustergnn.rounds` says when)."""
        if len(per_partition) != self.P:
            raise ValueError(f"need one batch per partition ({self.P}), got {len(per_partition)}")
        for part, b in zip(self.parts, per_partition):
            part.feed(b)
        self.round_id += 1
        out = run_round(
            local_fan_out(self.parts), self.round_id, RoundOptions(self.P, self.engines[0].num_layers), self.stats
        )
        return out.finished, [part.deferred for part in self.parts]

    def apply(self, batch: MutationBatch, max_rounds: int = 4) -> list[RoundSummary]:
        """Apply ``batch`` in as many rounds as deferred cross-partition edges need."""
        todo = self.split(batch)
        summaries: list[RoundSummary] = []
        for _ in range(max_rounds):
            s, todo = self.round(todo)
            summaries += s
            if not any(len(b) for b in todo):
                return summaries
        left = [int(b.src[0]) for b in todo if len(b)]
        raise MutationError(f"edges from vertex {left[0]}, which exists nowhere in the cluster")

    def embeddings(self, ids, layer: int = -1) -> torch.Tensor:
        ids = np.asarray(ids, dtype=np.int64)
        owner = self.pmap.owner(ids)
        out = None
        for p in range(self.P):
            m = np.flatnonzero(owner == p)
            if not m.size:
                continue
            rows = self.engines[p].embeddings(ids[m], layer)
            if out is None:
                out = torch.zeros(len(ids), rows.shape[1])
            out[torch.from_numpy(m)] = rows.cpu()
        return out if out is not None else torch.zeros(0, self.engines[0].dims[layer])
