"""A mutable directed multigraph with external int64 ids, built for O(batch + touched adjacency) edits.

Storage (``BlockAdjacency``, one for in-edges and one for out-edges): every vertex owns a contiguous
block of an ``int32`` pool holding its neighbours' local slots, with a capacity that doubles when it
fills (amortised O(1) appends, like a vector).  A block that outgrows its capacity moves to the pool's
tail and leaves garbage; the pool compacts itself when garbage exceeds the live entries, which costs
O(live) once per doubling and is therefore amortised O(1) per edit.  Removing an edge rewrites only the
blocks it touches.  With both directions stored, capacity slack (< 2x) and garbage (< 2x) the structure
stays well under 64 bytes per directed edge (each direction costs 4 bytes per entry).

Ids: external ``int64`` ids map to dense local *slots*.  Ids in ``[0, DIRECT_ID_LIMIT)`` resolve through
a direct-address table (vectorised); other ids (negative, or huge such as hashes) through a dict.  A
slot freed by a vertex removal is reused only after the batch that freed it, so every slot means one
vertex for the whole of a batch (the incremental rules rely on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clustergnn import cpu_kernels
from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.memory import DICT_ENTRY_BYTES, MemoryEntry, entries_of

DIRECT_ID_LIMIT = 1 << 28  # ids below this use a table (4 bytes per id up to the largest id seen)
_MIN_BLOCK = 4
BULK_APPEND_MIN = 1 << 20  # appends of at least this many edges count their owners once (an initial graph)
# an initial graph's endpoints are counted as they are looked up (MutableGraph.lookup_counted32), a thread
# per side: no separate count pass over the edges (docs/engine.md, "Build time on this machine")
LOOKUP_COUNTED = True
# ... and where they are all consecutive ids just bound to consecutive slots (0..n-1 -> 0..n-1), their slots
# are computed, not looked up, and no slot arrays are made (MutableGraph.add_edges_in_range)
ID_RANGE_APPEND = True
_PLACE_AHEAD = 16  # entries ahead whose pool line the bulk placement requests (its cursor twice as far)


def unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values (sort-based: several times faster than ``np.unique``'s hashing here)."""
    if len(a) < 2:
        return np.asarray(a, dtype=np.int64).copy()
    a = np.sort(a)
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


def argsort_stable(a: np.ndarray) -> np.ndarray:
    """Stable argsort of integers; torch's parallel sort is ~5x faster than numpy's on large inputs."""
    if len(a) < 65536:
        return np.argsort(a, kind="stable")
    import torch

    return torch.sort(torch.from_numpy(np.ascontiguousarray(a)), stable=True).indices.numpy()


def union(*arrays: np.ndarray) -> np.ndarray:
    return unique(np.concatenate(arrays))


def members(values: np.ndarray, probe: np.ndarray) -> np.ndarray:
    """``np.isin(values, probe)`` for a strictly increasing ``values`` (the engine's row sets): one binary
    search per probe, a few µs where ``np.isin`` costs ~60 µs of its own for a few hundred rows.  Any
    other ``values`` get ``np.isin``."""
    n = len(values)
    if n > 1 and not bool((values[1:] > values[:-1]).all()):
        return np.isin(values, probe)
    mask = np.zeros(n, dtype=bool)
    if n and len(probe):
        pos = np.searchsorted(values, probe)
        ok = pos < n
        pos = pos[ok]
        mask[pos[values[pos] == probe[ok]]] = True
    return mask


def segment_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``range(starts[i], starts[i] + lengths[i])`` for all i, vectorised."""
    lengths = lengths.astype(np.int64, copy=False)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.cumsum(lengths) - lengths
    return np.repeat(starts.astype(np.int64, copy=False) - offs, lengths) + np.arange(total, dtype=np.int64)


class BlockAdjacency:
    """Per-vertex neighbour blocks in one growable ``int32`` pool (see module docstring)."""

    def __init__(self, capacity: int = 0) -> None:
        self.start = np.zeros(capacity, dtype=np.int64)
        self.length = np.zeros(capacity, dtype=np.int64)
        self.cap = np.zeros(capacity, dtype=np.int64)
        self.pool = np.zeros(1024, dtype=np.int32)
        self.used = 0  # pool entries handed out (live blocks + garbage)
        self.garbage = 0
        self._count = np.zeros(0, dtype=np.int64)  # scratch for the fused append (all zero between calls)
        # the pool's room after a compaction and its growth when full, as a factor of what it must hold
        # (a partition's owners use less than 2: docs/distributed.md, "The same graph through the cluster")
        self.pool_growth = 2.0

    # --------------------------------------------------------------- sizing
    def grow_vertices(self, capacity: int) -> None:
        n = len(self.start)
        if capacity <= n:
            return
        for name in ("start", "length", "cap"):
            arr = getattr(self, name)
            new = np.zeros(capacity, dtype=arr.dtype)
            new[:n] = arr
            setattr(self, name, new)

    def _reserve_pool(self, extra: int) -> None:
        need = self.used + extra
        if need <= len(self.pool):
            return
        new = np.zeros(max(need, int(self.pool_growth * len(self.pool))), dtype=np.int32)
        new[: self.used] = self.pool[: self.used]
        self.pool = new

    def nbytes(self) -> int:
        return self.pool.nbytes + self.start.nbytes + self.length.nbytes + self.cap.nbytes

    def memory_report(self) -> dict[str, MemoryEntry]:
        """The pool (allocated, garbage and slack included), the per-vertex block arrays, the append scratch."""
        arrays = {"pool": self.pool, "start": self.start, "length": self.length, "cap": self.cap}
        return {**entries_of("", "structure", arrays), **entries_of("", "scratch", {"append_count": self._count})}

    @property
    def num_entries(self) -> int:
        return int(self.length.sum())

    # --------------------------------------------------------------- reads
    def gather(self, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All entries of ``owners``' blocks: ``(owner repeated per entry, neighbour)``, owner-major."""
        owners = np.asarray(owners, dtype=np.int64)
        lens = self.length[owners]
        pos = segment_positions(self.start[owners], lens)
        return np.repeat(owners, lens), self.pool[pos].astype(np.int64)

    def gather_csr(self, owners: np.ndarray, dtype: type = np.int64) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr, values)``: the blocks of ``owners`` as CSR rows (``dtype``: int64, or int32 where the
        entries fit), without the owner column."""
        owners = np.ascontiguousarray(owners, dtype=np.int64)
        lens = self.length[owners]
        indptr = np.zeros(len(owners) + 1, dtype=dtype)
        np.cumsum(lens, out=indptr[1:])
        if cpu_kernels.enabled():
            values = np.empty(int(indptr[-1]), dtype=dtype)
            kernel = cpu_kernels.gather_blocks if len(values) >= 1 << 18 else cpu_kernels.gather_blocks_serial
            kernel(self.start, self.length, self.pool, owners, indptr, values)
        else:
            values = self.pool[segment_positions(self.start[owners], lens)].astype(dtype)
        return indptr, values

    def neighbours(self, v: int) -> np.ndarray:
        s = int(self.start[v])
        return self.pool[s : s + int(self.length[v])].astype(np.int64)

    # --------------------------------------------------------------- edits
    def append(self, owners: np.ndarray, nbrs: np.ndarray) -> None:
        """Append ``nbrs[i]`` to the block of ``owners[i]`` (vectorised, grouped by owner)."""
        if len(owners) == 0:
            return
        order = argsort_stable(owners)
        o, nb = owners[order], nbrs[order]
        first = np.flatnonzero(np.concatenate(([True], o[1:] != o[:-1])))
        uniq = o[first]
        counts = np.diff(np.append(first, len(o)))
        need = self.length[uniq] + counts
        grow = need > self.cap[uniq]
        if grow.any():
            g = uniq[grow]
            new_cap = np.maximum(np.maximum(need[grow], 2 * self.cap[g]), _MIN_BLOCK)
            self._reserve_pool(int(new_cap.sum()))
            new_start = self.used + np.cumsum(new_cap) - new_cap
            old_pos = segment_positions(self.start[g], self.length[g])
            new_pos = segment_positions(new_start, self.length[g])
            self.pool[new_pos] = self.pool[old_pos]
            self.garbage += int(self.cap[g].sum())
            self.used += int(new_cap.sum())
            self.start[g] = new_start
            self.cap[g] = new_cap
        rank = np.arange(len(o)) - np.repeat(first, counts)
        self.pool[self.start[o] + self.length[o] + rank] = nb
        self.length[uniq] += counts
        if self.garbage > max(self.used // 2, 1 << 16):
            self.compact()

    def find(self, owners: np.ndarray, nbrs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Match each ``(owners[i], nbrs[i])`` to a distinct entry (multi-edges: one copy each).

        Returns ``(uniq_owners, entry_owner, entry_value, entry_removed)`` over the gathered blocks of
        the owners, and raises ``MutationError`` naming the first pair without enough copies.
        """
        uniq = unique(owners)
        e_owner, e_val = self.gather(uniq)
        want = (owners.astype(np.int64) << 32) | nbrs.astype(np.int64)
        have = (e_owner << 32) | e_val
        wk, wc = np.unique(want, return_counts=True)
        order = argsort_stable(have)
        hs = have[order]
        gstart = np.searchsorted(hs, hs, side="left")
        rank = np.arange(len(hs)) - gstart
        idx = np.minimum(np.searchsorted(wk, hs), max(len(wk) - 1, 0))
        needed = np.where(wk[idx] == hs, wc[idx], 0) if len(wk) else np.zeros(len(hs), np.int64)
        removed_sorted = rank < needed
        avail = np.searchsorted(hs, wk, side="right") - np.searchsorted(hs, wk, side="left")
        short = np.flatnonzero(avail < wc)
        if short.size:
            k = int(wk[short[0]])
            raise _MissingEntry(k >> 32, k & 0xFFFFFFFF, int(wc[short[0]]), int(avail[short[0]]))
        removed = np.zeros(len(have), dtype=bool)
        removed[order] = removed_sorted
        return uniq, e_owner, e_val, removed

    def rewrite(self, uniq: np.ndarray, e_owner: np.ndarray, e_val: np.ndarray, keep: np.ndarray) -> None:
        """Rewrite the blocks of ``uniq`` (gathered as ``e_owner, e_val``) keeping only ``keep`` entries."""
        k_owner = e_owner[keep]
        counts = np.bincount(np.searchsorted(uniq, k_owner), minlength=len(uniq))
        pos = segment_positions(self.start[uniq], counts)
        self.pool[pos] = e_val[keep]
        self.length[uniq] = counts

    def remove(self, owners: np.ndarray, nbrs: np.ndarray, present: bool = False) -> None:
        """Remove one entry per ``(owners[i], nbrs[i])`` pair; raise before changing anything if missing
        (``present``: the caller knows every pair has its copies; the fused path then does not count)."""
        if len(owners) == 0:
            return
        if cpu_kernels.enabled():
            self._remove_fused(owners, nbrs, present)
            return
        uniq, e_owner, e_val, removed = self.find(owners, nbrs)
        self.rewrite(uniq, e_owner, e_val, ~removed)

    def count_pairs(self, owners: np.ndarray, nbrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, copies)``: the distinct ``owner << 32 | neighbour`` pairs asked about, sorted, and how
        many entries of each the blocks hold (one scan of each touched block; fused kernels only)."""
        keys = np.unique((owners.astype(np.int64) << 32) | nbrs.astype(np.int64))
        gptr = np.flatnonzero(np.diff(keys >> 32, prepend=-1, append=-2)).astype(np.int64)
        copies = np.zeros(len(keys), dtype=np.int64)
        cpu_kernels.remove_pairs(self.start, self.length, self.pool, keys, copies, gptr, copies, False)
        return keys, copies

    def _remove_fused(self, owners: np.ndarray, nbrs: np.ndarray, present: bool = False) -> None:
        """``remove`` through ``cpu_kernels.remove_pairs``: count every requested pair's copies first (and
        raise like ``find``, for the smallest pair short of copies), then remove; same blocks as ``find``.
        ``present``: no count (the caller counted)."""
        keys, want = np.unique((owners.astype(np.int64) << 32) | nbrs.astype(np.int64), return_counts=True)
        gptr = np.flatnonzero(np.diff(keys >> 32, prepend=-1, append=-2)).astype(np.int64)
        avail = np.zeros(len(keys), dtype=np.int64)
        if not present:
            cpu_kernels.remove_pairs(self.start, self.length, self.pool, keys, want, gptr, avail, False)
            short = np.flatnonzero(avail < want)
            if short.size:
                k = int(keys[short[0]])
                raise _MissingEntry(k >> 32, k & 0xFFFFFFFF, int(want[short[0]]), int(avail[short[0]]))
        cpu_kernels.remove_pairs(self.start, self.length, self.pool, keys, want, gptr, avail, True)

    def remove_values(self, owners: np.ndarray, drop: np.ndarray) -> None:
        """In the blocks of ``owners`` drop every entry whose neighbour is marked in boolean ``drop``."""
        uniq = unique(owners)
        e_owner, e_val = self.gather(uniq)
        self.rewrite(uniq, e_owner, e_val, ~drop[e_val])

    def clear(self, owners: np.ndarray) -> None:
        self.length[owners] = 0

    def compact(self) -> None:
        """Copy every live block to a fresh pool, dropping garbage (amortised: see module docstring)."""
        n = len(self.start)
        cap = np.where(self.length > 0, np.maximum(self.cap, _MIN_BLOCK), 0)
        cap = np.minimum(cap, np.maximum(2 * self.length, _MIN_BLOCK) * (self.length > 0))
        new_start = np.cumsum(cap) - cap
        total = int(cap.sum())
        pool = np.zeros(max(int(total * self.pool_growth), 1024), dtype=np.int32)
        pool[segment_positions(new_start, self.length)] = self.pool[segment_positions(self.start, self.length)]
        self.pool, self.start, self.cap = pool, new_start.astype(np.int64), cap.astype(np.int64)
        self.start[:n][cap == 0] = 0
        self.used, self.garbage = total, 0

    # --------------------------------------------------------------- state
    def export_csr(self, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64, neighbours int32)``: the blocks of ``owners``, each in its block order."""
        indptr, values = self.gather_csr(owners)
        return indptr, values.astype(np.int32)

    def load_csr(self, owners: np.ndarray, indptr: np.ndarray, values: np.ndarray) -> None:
        """Fill the (empty) blocks of ``owners`` with CSR rows, keeping each row's order: a block's order
        is all that reads see (the pool's layout is not), so this equals the adjacency it was taken from."""
        if self.used:
            raise RuntimeError(f"load_csr needs an empty adjacency, this one holds {self.used} pool entries")
        length = np.diff(indptr).astype(np.int64)
        cap = np.where(length > 0, np.maximum(length, _MIN_BLOCK), 0)
        start = np.cumsum(cap) - cap
        total = int(cap.sum())
        self.pool = np.zeros(max(2 * total, 1024), dtype=np.int32)
        self.pool[segment_positions(start, length)] = values
        self.start[owners], self.length[owners], self.cap[owners] = start, length, cap
        self.used, self.garbage = total, 0


class _MissingEntry(Exception):
    def __init__(self, owner: int, nbr: int, wanted: int, present: int) -> None:
        super().__init__(owner, nbr, wanted, present)
        self.owner, self.nbr, self.wanted, self.present = owner, nbr, wanted, present


@dataclass
class EdgeLog:
    """Directed edges added and removed by a batch, as local slots (removals include vertex removals)."""

    add_src: list[np.ndarray]
    add_dst: list[np.ndarray]
    rem_src: list[np.ndarray]
    rem_dst: list[np.ndarray]

    @classmethod
    def new(cls) -> EdgeLog:
        return cls([], [], [], [])

    @staticmethod
    def _cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def added(self) -> tuple[np.ndarray, np.ndarray]:
        return self._cat(self.add_src), self._cat(self.add_dst)

    def removed(self) -> tuple[np.ndarray, np.ndarray]:
        return self._cat(self.rem_src), self._cat(self.rem_dst)


@dataclass(frozen=True)
class Savepoint:
    """A mark of :class:`MutableGraph`'s per-batch slot bookkeeping (:meth:`MutableGraph.savepoint`)."""

    pending_free: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class GraphState:
    """A graph's complete state between batches, live slots only (:meth:`MutableGraph.export`).

    Slot numbers are kept (``slots``, ``free``, ``next_slot``): the incremental rules add a row's terms
    in source-slot order and new vertices take the free slots first, so a graph restored with the same
    slots and the same blocks continues bit for bit like the original.  Rows of the CSRs follow
    ``slots``; neighbours are slots.
    """

    slots: np.ndarray  # (n,) int64, ascending: the live slots
    ids: np.ndarray  # (n,) int64: external id of each live slot
    in_indptr: np.ndarray  # (n + 1,) int64
    in_nbrs: np.ndarray  # (E,) int32: source slot of each in-edge, in block order
    out_indptr: np.ndarray  # (n + 1,) int64
    out_nbrs: np.ndarray  # (E,) int32: destination slot of each out-edge, in block order
    free: np.ndarray  # int64: dead slots, in the order new vertices will take them
    next_slot: int  # slots [0, next_slot) have been handed out

    def check(self) -> None:
        """``ValueError`` naming the first inconsistency (a corrupt or mismatched state)."""
        n, nxt = len(self.slots), self.next_slot
        if self.ids.shape != (n,) or self.in_indptr.shape != (n + 1,) or self.out_indptr.shape != (n + 1,):
            raise ValueError(
                f"graph state: {n} slots but ids {self.ids.shape}, in_indptr {self.in_indptr.shape}, "
                f"out_indptr {self.out_indptr.shape} (want ({n},), ({n + 1},), ({n + 1},))"
            )
        used = np.zeros(max(nxt, 0), dtype=np.int64)
        for what, a in (("slot", self.slots), ("free slot", self.free)):
            bad = np.flatnonzero((a < 0) | (a >= nxt))
            if bad.size:
                raise ValueError(f"graph state: {what} {int(a[bad[0]])} is outside [0, next_slot={nxt})")
            np.add.at(used, a, 1)
        if nxt and (used != 1).any():
            s = int(np.flatnonzero(used != 1)[0])
            raise ValueError(f"graph state: slot {s} is listed {int(used[s])} times as live or free, want once")
        if len(unique(self.ids)) != n:
            raise ValueError("graph state: an external id is bound to two slots")
        live = np.zeros(max(nxt, 0), dtype=bool)
        live[self.slots] = True
        for what, ptr, nb in (("in", self.in_indptr, self.in_nbrs), ("out", self.out_indptr, self.out_nbrs)):
            if ptr[0] != 0 or (np.diff(ptr) < 0).any() or ptr[-1] != len(nb):
                raise ValueError(f"graph state: {what}_indptr is not a CSR index of {len(nb)} entries")
            if nb.size and (nb.min() < 0 or nb.max() >= nxt or not live[nb].all()):
                raise ValueError(f"graph state: an {what}-edge names a slot that is not live")
        # the two directions must hold the same multiset of edges
        keys_in = (self.in_nbrs.astype(np.int64) << 32) | np.repeat(self.slots, np.diff(self.in_indptr))
        keys_out = np.repeat(self.slots, np.diff(self.out_indptr)) << 32 | self.out_nbrs.astype(np.int64)
        if len(keys_in) != len(keys_out) or not np.array_equal(np.sort(keys_in), np.sort(keys_out)):
            raise ValueError(
                f"graph state: in-edges ({len(keys_in)}) and out-edges ({len(keys_out)}) do not mirror each other"
            )


class MutableGraph:
    """Vertices (external id <-> slot), in- and out-adjacency.  Knows nothing of features or models."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = 0
        self.ext_of = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.inn = BlockAdjacency()
        self.out = BlockAdjacency()
        self._table = np.full(0, -1, dtype=np.int32)  # direct-address: ext id -> slot
        self._dict: dict[int, int] = {}  # ids outside the table's range
        self._next = 0  # slots [0, _next) have been handed out at some point
        self._free: list[np.ndarray] = []  # freed slots, reusable after the batch
        self._pending_free: list[np.ndarray] = []
        self._grow(capacity)

    # --------------------------------------------------------------- sizes
    def _grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        capacity = max(capacity, 2 * self.capacity)
        ext = np.full(capacity, -1, dtype=np.int64)
        ext[: self.capacity] = self.ext_of
        alive = np.zeros(capacity, dtype=bool)
        alive[: self.capacity] = self.alive
        self.ext_of, self.alive = ext, alive
        self.inn.grow_vertices(capacity)
        self.out.grow_vertices(capacity)
        self.capacity = capacity

    @property
    def next_slot(self) -> int:
        """Slots ``[0, next_slot)`` have been handed out at some point (every live or free slot is below)."""
        return self._next

    @property
    def num_vertices(self) -> int:
        return int(self.alive.sum())

    @property
    def num_edges(self) -> int:
        return self.inn.num_entries

    def in_degree(self, slots: np.ndarray | None = None) -> np.ndarray:
        return self.inn.length if slots is None else self.inn.length[slots]

    def out_degree(self, slots: np.ndarray | None = None) -> np.ndarray:
        return self.out.length if slots is None else self.out.length[slots]

    def alive_slots(self) -> np.ndarray:
        return np.flatnonzero(self.alive)

    def structure_nbytes(self) -> int:
        """Bytes held by the graph structure (adjacency pools, per-vertex arrays, id maps)."""
        dict_bytes = len(self._dict) * DICT_ENTRY_BYTES  # rough CPython dict entry + two ints
        return (
            self.inn.nbytes()
            + self.out.nbytes()
            + self.ext_of.nbytes
            + self.alive.nbytes
            + self._table.nbytes
            + dict_bytes
        )

    def memory_report(self) -> dict[str, MemoryEntry]:
        """Every array of the structure: both adjacencies (``in.``/``out.``), the id maps, the free lists."""
        out = {f"in.{k}": v for k, v in self.inn.memory_report().items()}
        out |= {f"out.{k}": v for k, v in self.out.memory_report().items()}
        out |= entries_of("", "structure", {"ext_of": self.ext_of, "alive": self.alive, "id_table": self._table})
        lists = {"free_slots": self._free, "pending_free_slots": self._pending_free}
        free = {f"{name}.{i}": a for name, parts in lists.items() for i, a in enumerate(parts)}
        out |= entries_of("", "structure", free)
        if self._dict:
            n = len(self._dict)
            out["id_dict"] = MemoryEntry("structure", "object", (n,), n * DICT_ENTRY_BYTES)
        return out

    # --------------------------------------------------------------- state
    def export(self) -> GraphState:
        """The complete state between batches (``RuntimeError`` inside one: slots freed by the batch are
        not reusable yet, a state that has no compact form)."""
        if self._pending_free:
            raise RuntimeError("cannot export the graph inside a batch (slots freed by it are pending); call end_batch")
        slots = self.alive_slots().astype(np.int64)
        in_indptr, in_nbrs = self.inn.export_csr(slots)
        out_indptr, out_nbrs = self.out.export_csr(slots)
        free = np.concatenate(self._free).astype(np.int64) if self._free else np.zeros(0, dtype=np.int64)
        return GraphState(slots, self.ext_of[slots].copy(), in_indptr, in_nbrs, out_indptr, out_nbrs, free, self._next)

    @classmethod
    def from_export(cls, state: GraphState, capacity: int = 16) -> MutableGraph:
        """A graph equal to the exported one: same slots, ids, and per-vertex in- and out-edge order."""
        g = cls(max(capacity, state.next_slot))
        g.load(state)
        return g

    def load(self, state: GraphState) -> None:
        """Make this empty graph equal to the exported one (see :class:`GraphState`)."""
        if self._next or self._free:
            raise RuntimeError(f"load needs an empty graph, this one has handed out {self._next} slots")
        state.check()
        self._grow(state.next_slot)
        self.ext_of[state.slots] = state.ids
        self.alive[state.slots] = True
        self._bind(state.ids, state.slots)
        self._next = int(state.next_slot)
        self._free = [state.free.astype(np.int64)] if state.free.size else []
        self.inn.load_csr(state.slots, state.in_indptr, state.in_nbrs)
        self.out.load_csr(state.slots, state.out_indptr, state.out_nbrs)

    # --------------------------------------------------------------- ids
    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of external ``ids``; ``-1`` where the id is not a live vertex."""
        ids = np.asarray(ids, dtype=np.int64)
        if cpu_kernels.enabled():
            out = np.empty(len(ids), dtype=np.int64)
            if cpu_kernels.lookup_direct(self._table, np.ascontiguousarray(ids), out) and self._dict:
                other = np.flatnonzero((ids < 0) | (ids >= DIRECT_ID_LIMIT))
                get = self._dict.get
                out[other] = [get(int(i), -1) for i in ids[other]]
            return out
        out = np.full(len(ids), -1, dtype=np.int64)
        direct = (ids >= 0) & (ids < len(self._table))
        out[direct] = self._table[ids[direct]]
        other = np.flatnonzero(~direct & ((ids < 0) | (ids >= DIRECT_ID_LIMIT)))
        if other.size and self._dict:
            get = self._dict.get
            out[other] = [get(int(i), -1) for i in ids[other]]
        return out

    def lookup32(self, ids: np.ndarray) -> np.ndarray:
        """:meth:`lookup` as ``int32`` (slots are below 2^31: the id table is int32), half the bytes of an
        initial graph's endpoint slots; ``ids`` int64."""
        if cpu_kernels.enabled() and not self._dict and len(ids):
            out = np.empty(len(ids), dtype=np.int32)
            cpu_kernels.lookup_direct(self._table, np.ascontiguousarray(ids, dtype=np.int64), out)
            return out
        return self.lookup(ids).astype(np.int32)

    def lookup_counted32(
        self, src_ids: np.ndarray, dst_ids: np.ndarray, id_range: tuple[int, int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`lookup32` of an initial graph's endpoints (``len >= BULK_APPEND_MIN``, ids int64), both
        sides at once (a thread each) and each endpoint's slot counted into its adjacency's append counts
        as it is found, for :meth:`add_edges_slots` with ``counted=True`` next (which skips its own
        count pass over the edges).  ``id_range = (lo, hi, base)``: the live ids ``lo..hi-1`` are bound
        to the slots ``base..`` in order (the caller just added them so), which the kernel computes
        instead of reading the id table; other ids are looked up.  ``(src slots, dst slots)``; ``None``
        where the kernels are off, ids go through the dict, or some endpoint is not a live vertex (then
        nothing is counted)."""
        n = len(src_ids)
        if not (cpu_kernels.enabled() and not self._dict and n >= BULK_APPEND_MIN and LOOKUP_COUNTED):
            return None
        lo, hi, base = id_range if id_range is not None else (0, 0, 0)
        self._counts_ready()
        ls, ld = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
        missing = np.zeros(2, dtype=np.int64)
        _lookup_count_pair(
            self._table,
            np.ascontiguousarray(src_ids, dtype=np.int64),
            np.ascontiguousarray(dst_ids, dtype=np.int64),
            ls,
            ld,
            self.out._count,
            self.inn._count,
            lo,
            hi,
            base,
            missing,
        )
        if missing.any():
            self.inn._count[:] = 0
            self.out._count[:] = 0
            return None
        return ls, ld

    def add_edges_in_range(self, src_ids: np.ndarray, dst_ids: np.ndarray, id_range: tuple[int, int, int]) -> bool:
        """Append the edges ``src_ids -> dst_ids`` (ids, int64, ``len >= BULK_APPEND_MIN``) where every
        endpoint lies in ``id_range = (lo, hi, base)``: live ids ``lo..hi-1`` bound to the slots ``base..``
        in order (an initial graph's vertices, just added so).  No slot array is made or looked up: the
        count (a thread per side) and the placement compute ``id - lo + base``; the same blocks, entries
        and order as :meth:`lookup32` and :meth:`add_edges_slots`.  False (nothing changed) where the
        kernels are off or an endpoint is outside the range (look them up instead)."""
        lo, hi, base = id_range
        if not (cpu_kernels.enabled() and len(src_ids) >= BULK_APPEND_MIN and ID_RANGE_APPEND):
            return False
        if lo < 0 or hi > DIRECT_ID_LIMIT or base + hi - lo > 2**31 - 1:
            return False
        self._counts_ready()
        src_ids = np.ascontiguousarray(src_ids, dtype=np.int64)
        dst_ids = np.ascontiguousarray(dst_ids, dtype=np.int64)
        outside = np.zeros(2, dtype=np.int64)
        _count_range_pair(src_ids, dst_ids, self.out._count, self.inn._count, lo, hi, lo - base, outside)
        if outside.any():
            self.inn._count[:] = 0
            self.out._count[:] = 0
            return False
        self._append_pair_bulk(src_ids, dst_ids, counted=True, offset=lo - base)
        return True

    def slots_of(self, ids: np.ndarray, what: str = "vertex") -> np.ndarray:
        """Slots of ``ids``; ``UnknownVertexError`` naming the first id that is not a live vertex."""
        slots = self.lookup(ids)
        bad = np.flatnonzero(slots < 0)
        if bad.size:
            raise UnknownVertexError(f"unknown {what} id {int(np.asarray(ids)[bad[0]])} (not in the graph or removed)")
        return slots

    def _bind(self, ids: np.ndarray, slots: np.ndarray) -> None:
        direct = (ids >= 0) & (ids < DIRECT_ID_LIMIT)
        if direct.any():
            top = int(ids[direct].max()) + 1
            if top > len(self._table):
                table = np.full(max(top, 2 * len(self._table)), -1, dtype=np.int32)
                table = table[: max(top, min(2 * len(self._table), DIRECT_ID_LIMIT))]
                table[: len(self._table)] = self._table
                self._table = table
            self._table[ids[direct]] = slots[direct]
        for i, s in zip(ids[~direct].tolist(), slots[~direct].tolist()):
            self._dict[i] = s

    def _unbind(self, ids: np.ndarray) -> None:
        direct = (ids >= 0) & (ids < DIRECT_ID_LIMIT)
        self._table[ids[direct]] = -1
        for i in ids[~direct].tolist():
            self._dict.pop(i, None)

    # --------------------------------------------------------------- vertex edits
    def add_vertices(self, ids: np.ndarray, checked: bool = False) -> np.ndarray:
        """Bind new ids to slots; ``MutationError`` (nothing changed) if any exists or repeats
        (``checked``: the caller has verified that none does)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        if not checked:
            existing = np.flatnonzero(self.lookup(ids) >= 0)
            if existing.size:
                raise MutationError(f"cannot add vertex {int(ids[existing[0]])}: it already exists")
            srt = np.sort(ids)
            twice = np.flatnonzero(srt[1:] == srt[:-1])
            if twice.size:
                raise MutationError(
                    f"cannot add vertex {int(srt[twice[0]])}: it already exists (added twice in one batch)"
                )
        slots = self._take_slots(len(ids))
        self.ext_of[slots] = ids
        self.alive[slots] = True
        self.inn.length[slots] = 0
        self.out.length[slots] = 0
        self._bind(ids, slots)
        return slots

    def _take_slots(self, n: int) -> np.ndarray:
        free = np.concatenate(self._free) if self._free else np.zeros(0, dtype=np.int64)
        reuse, rest = free[:n], free[n:]
        self._free = [rest] if rest.size else []
        fresh_n = n - len(reuse)
        if self._next + fresh_n > self.capacity:
            self._grow(self._next + fresh_n)
        fresh = np.arange(self._next, self._next + fresh_n, dtype=np.int64)
        self._next += fresh_n
        return np.concatenate([reuse, fresh])

    def discard_vertices(self, slots: np.ndarray) -> None:
        """Undo of ``add_vertices`` within the same batch, once the vertices' edges are gone: their ids
        are unbound and their slots, never visible outside the batch, are free at once."""
        self.alive[slots] = False
        self._unbind(self.ext_of[slots])
        self._free.insert(0, slots)

    def remove_vertices(self, ids: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Remove vertices and all their edges.  Returns their slots and the removed directed edges."""
        slots = self.slots_of(ids)
        uniq, counts = np.unique(slots, return_counts=True)
        if (counts > 1).any():
            raise UnknownVertexError(
                f"unknown vertex id {int(self.ext_of[uniq[counts > 1][0]])} (removed twice in one batch)"
            )
        gone = np.zeros(self.capacity, dtype=bool)
        gone[slots] = True
        o_src, o_dst = self.out.gather(slots)  # v -> w
        i_dst, i_src = self.inn.gather(slots)  # u -> v
        keep_in = ~gone[i_src]  # an edge between two removed vertices is listed once, as an out-edge
        rem_src = np.concatenate([o_src, i_src[keep_in]])
        rem_dst = np.concatenate([o_dst, i_dst[keep_in]])
        # readers of the removed vertices lose them from their in-blocks; writers from their out-blocks
        w = o_dst[~gone[o_dst]]
        if w.size:
            self.inn.remove_values(w, gone)
        u = i_src[keep_in]
        if u.size:
            self.out.remove_values(u, gone)
        self.inn.clear(slots)
        self.out.clear(slots)
        self.alive[slots] = False
        self._unbind(np.asarray(ids, dtype=np.int64))
        self._pending_free.append(slots)
        return slots, (rem_src, rem_dst)

    def restore_vertices(self, ids: np.ndarray, slots: np.ndarray, edges: tuple[np.ndarray, np.ndarray]) -> None:
        """Undo of ``remove_vertices`` within the same batch."""
        self.alive[slots] = True
        self.ext_of[slots] = ids
        self._bind(np.asarray(ids, dtype=np.int64), slots)
        self._pending_free = [p for p in self._pending_free if p is not slots]
        self.add_edges_slots(*edges)

    def savepoint(self) -> Savepoint:
        """Mark the batch's slot bookkeeping before a transactional group of edits.  A caller that undoes
        its edits (``remove_edges_slots`` / ``add_edges_slots``, ``restore_vertices``,
        ``discard_vertices``, in reverse order) then calls :meth:`rollback` with the mark."""
        return Savepoint(tuple(self._pending_free))

    def rollback(self, savepoint: Savepoint) -> None:
        """Restore the slots freed in this batch to what they were at ``savepoint``."""
        self._pending_free = list(savepoint.pending_free)

    def end_batch(self) -> np.ndarray:
        """Release slots freed by this batch for reuse by later batches; returns them."""
        freed = np.concatenate(self._pending_free) if self._pending_free else np.zeros(0, dtype=np.int64)
        if freed.size:
            self._free.append(freed)
        self._pending_free = []
        return freed

    # --------------------------------------------------------------- edge edits
    def add_edges_slots(self, src: np.ndarray, dst: np.ndarray, counted: bool = False) -> None:
        """Append the edges ``src -> dst`` (slots); ``counted``: :meth:`lookup_counted32` returned them and
        their owners are counted already."""
        if counted:
            self._append_pair_bulk(src, dst, counted=True)
            return
        if cpu_kernels.enabled() and len(src):
            # int32 slots (an initial graph's, MutableGraph.lookup32) stay int32: no 16 B/edge of copies
            dt = np.int32 if src.dtype == dst.dtype == np.int32 else np.int64
            self._append_pair(np.ascontiguousarray(src, dtype=dt), np.ascontiguousarray(dst, dtype=dt))
            return
        self.inn.append(dst, src)
        self.out.append(src, dst)

    def _counts_ready(self) -> None:
        for adj in (self.inn, self.out):
            if len(adj._count) < len(adj.start):
                adj._count = np.zeros(len(adj.start), dtype=np.int64)

    def _append_pair(self, src: np.ndarray, dst: np.ndarray) -> None:
        """Both directions of the new edges in one kernel call, one adjacency per core."""
        a, b = self.inn, self.out
        self._counts_ready()
        if len(src) >= BULK_APPEND_MIN:
            self._append_pair_bulk(src, dst)
            return
        for adj, owners in ((a, dst), (b, src)):
            # room first, so that neither side can fail half-way
            adj._reserve_pool(int(cpu_kernels.append_need(adj.length, adj.cap, owners, adj._count, _MIN_BLOCK)))
        res = np.zeros(4, dtype=np.int64)
        few = len(src) < cpu_kernels.APPEND_PAIR_PARALLEL
        (cpu_kernels.block_append_pair_serial if few else cpu_kernels.block_append_pair)(
            a.start,
            a.length,
            a.cap,
            a.pool,
            a.used,
            a._count,
            b.start,
            b.length,
            b.cap,
            b.pool,
            b.used,
            b._count,
            src,
            dst,
            _MIN_BLOCK,
            res,
        )
        assert res[0] >= 0 and res[2] >= 0, "pool room was reserved"
        for adj, used, garbage in ((a, res[0], res[1]), (b, res[2], res[3])):
            adj.used = int(used)
            adj.garbage += int(garbage)
            if adj.garbage > max(adj.used // 2, 1 << 16):
                adj.compact()

    def _append_pair_bulk(self, src: np.ndarray, dst: np.ndarray, counted: bool = False, offset: int = 0) -> None:
        """:meth:`_append_pair` for an initial graph's edges: each side counts its owners once (or found
        them counted: ``counted``), sizes the pool, grows the blocks that overflow in slot order (an
        O(vertices) pass) and appends in input order; ``block_append`` counts the owners four times over
        the edges.  The blocks get the same entries in the same order and the same capacities (only
        where a moved block lands in the pool differs, which no read sees).  ``offset``: ``src``/``dst``
        are ids, the slots ``id - offset``."""
        a, b = self.inn, self.out
        need = np.zeros(2, dtype=np.int64)
        if counted:
            need[0] = _need_of_counts(a.length, a.cap, a._count, _MIN_BLOCK)
            need[1] = _need_of_counts(b.length, b.cap, b._count, _MIN_BLOCK)
        else:
            _count_need_pair(a.length, a.cap, a._count, b.length, b.cap, b._count, src, dst, _MIN_BLOCK, need)
        try:
            a._reserve_pool(int(need[0]))
            b._reserve_pool(int(need[1]))
        except BaseException:
            a._count[:] = 0
            b._count[:] = 0
            raise
        res = np.zeros(4, dtype=np.int64)
        _place_counted_pair(
            a.start, a.length, a.cap, a.pool, a.used, a._count,
            b.start, b.length, b.cap, b.pool, b.used, b._count,
            src, dst, offset, _MIN_BLOCK, res,
        )  # fmt: skip
        for adj, used, garbage in ((a, res[0], res[1]), (b, res[2], res[3])):
            adj.used = int(used)
            adj.garbage += int(garbage)
            if adj.garbage > max(adj.used // 2, 1 << 16):
                adj.compact()

    def count_edges_slots(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Copies of each edge ``src[i] -> dst[i]`` in the graph (fused kernels only), each counted in the
        shorter of its two blocks: ``dst``'s in-block or ``src``'s out-block, which mirror each other (a
        hub's block is scanned only where the other end's block is longer)."""
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        copies = np.zeros(len(src), dtype=np.int64)
        by_out = self.out.length[src] < self.inn.length[dst]
        for adj, sel, owner, nbr in ((self.inn, ~by_out, dst, src), (self.out, by_out, src, dst)):
            if sel.any():
                o, v = owner[sel], nbr[sel]
                keys, c = adj.count_pairs(o, v)
                copies[sel] = c[np.searchsorted(keys, (o << 32) | v)]
        return copies

    def remove_edges_slots(self, src: np.ndarray, dst: np.ndarray, present: bool = False) -> None:
        """Remove one copy of each edge; ``MutationError`` naming the first missing edge, nothing changed
        (``present``: the caller counted the copies, as a stretch's net effect does: not counted again)."""
        if len(src) == 0:
            return
        try:
            self.inn.remove(dst, src, present)
        except _MissingEntry as e:
            s_id, d_id = int(self.ext_of[e.nbr]), int(self.ext_of[e.owner])
            have = "it does not exist" if e.present == 0 else f"only {e.present} of {e.wanted} copies exist"
            raise MutationError(f"cannot remove edge {s_id} -> {d_id}: {have}") from None
        self.out.remove(src, dst, True)  # present: the two directions always mirror each other

    def in_edges(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(src, dst)`` of every in-edge of ``slots`` (dst-major)."""
        dst, src = self.inn.gather(slots)
        return src, dst

    def out_edges(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(src, dst)`` of every out-edge of ``slots`` (src-major)."""
        return self.out.gather(slots)

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Every directed edge as ``(src slot, dst slot)``, grouped by destination."""
        return self.in_edges(self.alive_slots())


if cpu_kernels.AVAILABLE:
    import numba

    from clustergnn.cpu_kernels import jit, pjit, prefetch_span

    @jit
    def _lookup_count(table, ids, out, count, lo, hi, base):  # pragma: no cover - jitted
        """``out[i] = table[ids[i]]`` (-1 outside the table; ``ids[i] - lo + base`` for ids in ``[lo, hi)``,
        where the table holds that) and ``count[out[i]] += 1`` where found; returns how many were not."""
        missing = 0
        n = table.shape[0]
        for i in range(ids.shape[0]):
            v = ids[i]
            if lo <= v < hi:
                s = v - lo + base
            else:
                s = table[v] if 0 <= v < n else -1
            out[i] = s
            if s >= 0:
                count[s] += 1
            else:
                missing += 1
        return missing

    @pjit
    def _lookup_count_pair(
        table, src_ids, dst_ids, ls, ld, out_count, in_count, lo, hi, base, missing
    ):  # pragma: no cover - jitted
        for side in numba.prange(2):
            if side == 0:
                missing[0] = _lookup_count(table, dst_ids, ld, in_count, lo, hi, base)
            else:
                missing[1] = _lookup_count(table, src_ids, ls, out_count, lo, hi, base)

    @jit
    def _need_of_counts(length, cap, count, min_block):  # pragma: no cover - jitted
        """The pool entries the blocks that overflow by ``count`` take (``block_append``'s growth rule:
        ``max(length + c, 2 cap, min_block)``)."""
        need = 0
        for o in range(count.shape[0]):
            c = count[o]
            if c > 0 and length[o] + c > cap[o]:
                need += max(length[o] + c, 2 * cap[o], min_block)
        return need

    @jit
    def _count_need(length, cap, owners, count, min_block):  # pragma: no cover - jitted
        """Count ``owners`` into the all-zero ``count``; the pool entries the overflowing blocks take
        (``block_append``'s growth rule: ``max(length + c, 2 cap, min_block)``)."""
        for i in range(owners.shape[0]):
            count[owners[i]] += 1
        return _need_of_counts(length, cap, count, min_block)

    @pjit
    def _count_need_pair(
        in_length, in_cap, in_count, out_length, out_cap, out_count, src, dst, min_block, need
    ):  # pragma: no cover - jitted
        for side in numba.prange(2):
            if side == 0:
                need[0] = _count_need(in_length, in_cap, dst, in_count, min_block)
            else:
                need[1] = _count_need(out_length, out_cap, src, out_count, min_block)

    @jit
    def _count_range(ids, count, lo, hi, offset):  # pragma: no cover - jitted
        """``count[ids[i] - offset] += 1`` while every id is in ``[lo, hi)``; returns 1 at the first that is
        not (the counts are then partial: the caller zeroes them), else 0."""
        for i in range(ids.shape[0]):
            v = ids[i]
            if v < lo or v >= hi:
                return 1
            count[v - offset] += 1
        return 0

    @pjit
    def _count_range_pair(src_ids, dst_ids, out_count, in_count, lo, hi, offset, outside):  # pragma: no cover
        for side in numba.prange(2):
            if side == 0:
                outside[0] = _count_range(dst_ids, in_count, lo, hi, offset)
            else:
                outside[1] = _count_range(src_ids, out_count, lo, hi, offset)

    @jit
    def _place_counted(start, length, cap, pool, used, owners, nbrs, offset, count, min_block):  # pragma: no cover
        """Move the blocks that overflow (by ``count``, left all-zero) to the pool's tail in slot order,
        then append ``nbrs[i]`` to ``owners[i]``'s block in input order (``count`` serves as each block's
        write cursor meanwhile; ``offset``: ``owners``/``nbrs`` are ids, the slots ``id - offset``).
        Returns ``(used, garbage)``."""
        garbage = 0
        for o in range(count.shape[0]):
            c = count[o]
            if c > 0:
                if length[o] + c > cap[o]:
                    new_cap = max(length[o] + c, 2 * cap[o], min_block)
                    s = start[o]
                    for k in range(length[o]):
                        pool[used + k] = pool[s + k]
                    garbage += cap[o]
                    start[o] = used
                    cap[o] = new_cap
                    used += new_cap
                count[o] = start[o] + length[o]  # from here on: where the block's next entry goes
                length[o] += c
        m = owners.shape[0]
        for i in range(m):  # one random read-write per entry (the cursor), not start and length
            if i + 2 * _PLACE_AHEAD < m:  # the cursor a pool prefetch will read, then that pool entry
                prefetch_span(count, owners[i + 2 * _PLACE_AHEAD] - offset, 1)
            if i + _PLACE_AHEAD < m:
                prefetch_span(pool, count[owners[i + _PLACE_AHEAD] - offset], 1)
            o = owners[i] - offset
            p = count[o]
            pool[p] = nbrs[i] - offset
            count[o] = p + 1
        count[:] = 0
        return used, garbage

    @pjit
    def _place_counted_pair(
        in_start, in_length, in_cap, in_pool, in_used, in_count,
        out_start, out_length, out_cap, out_pool, out_used, out_count,
        src, dst, offset, min_block, result,
    ):  # fmt: skip  # pragma: no cover - jitted
        for side in numba.prange(2):
            if side == 0:
                u, g = _place_counted(
                    in_start, in_length, in_cap, in_pool, in_used, dst, src, offset, in_count, min_block
                )
            else:
                u, g = _place_counted(
                    out_start, out_length, out_cap, out_pool, out_used, src, dst, offset, out_count, min_block
                )
            result[2 * side] = u
            result[2 * side + 1] = g
