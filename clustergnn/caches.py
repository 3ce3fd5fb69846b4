"""An engine's per-slot state: every layer's cache tables and the per-vertex arrays that grow with them.

Per layer ``l`` (``L`` layers, tables indexed by slot, ``capacity`` rows, zero for free slots):

* ``h[l]``: ``(capacity, D_l)`` float32 - layer inputs/outputs (``h[0]`` = features, ``h[L]`` = output);
* ``msg[l]``: ``(capacity, msg_dim)`` float32 - the cached message ``m_u`` (:mod:`clustergnn.rules`);
* ``agg[l]``: ``(capacity, msg_dim)`` - the aggregate: float32 for sums under a drift bound
  (``LayerRule.narrow_sum``; float64 for the others), float32 for maxes, None for GAT;
* ``drift[l]``: ``(capacity,)`` float32 - a narrow sum's rounding budget per row: a bound on how far
  ``agg[l]``'s row is from its exact sum, reset when the row is recomputed (:data:`DRIFT_MAX`);
* ``selfc[l]``: ``(capacity, self_dim)`` float32 - the self term, None for rules without one.

Two tables are not kept where they would only duplicate another (docs/engine.md, "Memory per vertex"):

* ``msg[0]`` **is** ``h[0]`` (the same tensor) when layer 0's message is its input itself
  (``LayerRule.message_is_input``: SAGE mean/gcn widening, GIN, GraphConv without an out-degree norm
  and with the weight after the sum), in an engine without ghosts.  The delta rule needs the *old*
  message of a source whose features a batch updated: the engine writes the pre-batch rows back into
  ``h[0]`` after layer 0's new messages and self terms are taken, and the update writes the new ones
  (``msg[srcs] = m_new``), as it does for any cached message (:mod:`clustergnn.propagation`).
* ``selfc[l]`` is None where the rule recomputes its self term at finish (``self_term_at_finish``: a
  widening SAGE mean, whose finish is already a matmul per finished row; GIN outside the fused finish,
  whose self term is a scale); ``Engine.finish`` and ``aggregate.sum.finish_gathered`` compute
  ``self_term(h[l][rows])`` from the layer's input instead.

A narrow (float32) sum is rounded once per batch that changes its row (the batch's terms are added in
float64, then the row is stored): each rounding is off by at most ``u |a|`` (``u = 2^-24``, ``|a|`` the
row's largest entry), which ``drift`` adds up; when it passes ``k u |a|``, ``k`` the row's in-degree
clamped to ``[DRIFT_MIN, DRIFT_MAX]``, the row is recomputed from its in-edges (as DGL sums) and its
budget reset (:meth:`Propagation._budget_drift`): no row carries more rounding than a float32 sum over
its own in-edges may (``deg - 1`` roundings), nor more than ``DRIFT_MAX u`` of its largest entry, besides
what its last recompute rounded (as with float64 sums).

``h[l]`` (``0 < l < L``) is None where layer ``l`` reads its input only through its cached message and
self term (``LayerRule.input_kept_as_images``: a narrowing SAGE mean, ``W_neigh h`` and ``W_self h + b``,
both narrower than ``h``), in an engine without ghosts that keeps its caches (not ``mode="full"``).
Layer ``l - 1`` then stores its output as those two images (:meth:`Propagation._store_images`):
a row changed where either image changed bit for bit (layer ``l`` reads nothing else of it, so
where both are equal its outputs are too), its new message is handed to layer ``l`` (whose delta
rule still reads the old one from ``msg[l]``), and a read of ``h[l]`` finishes layer ``l - 1`` again
(``Engine.embeddings``).  Likewise ``h[L]``, the output, is None where the last layer's finish reads
only cached rows and costs no matmul (``LayerRule.finished_on_read``: a narrowing SAGE mean, ``selfc +
agg / deg``): the layer keeps its aggregates current, every row it updated counts as changed (its
``version`` moves), and reads finish the rows asked for.

**Owned rows** (an engine with ghosts, a partition: ``ghost_rows=False``).  A ghost only has messages
(:attr:`Caches.GHOST_FREE`): there the tables ``h``, ``agg``, ``selfc`` and ``drift`` are indexed by an
*owned row* instead of the slot, ``rowmap[slot]`` (-1 for ghosts and free slots), with a row per owned
vertex (:meth:`Caches.assign_rows` when one is added, :meth:`Caches.clear_rows` frees it with its slot),
and grow by :data:`ROW_GROWTH`, not 2x; ``msg`` and the per-slot arrays stay indexed by slot (``msg``
covering the slots handed out, grown by :data:`ROW_GROWTH`: :meth:`Caches.grow`).  Code that
indexes those four tables by slot goes through :meth:`Caches.rows` / :meth:`Caches.rt` (the identity,
the same array, without ghosts).  A row's number only says where its values are stored: every row is
computed from the same terms in the same order as with slot-indexed tables, so the values are the same
bits (docs/distributed.md, "The same graph through the cluster").

The tables are replaced when they grow, so code that keeps them across a growth must re-read them
(:meth:`Caches.layer` makes a fresh :class:`LayerTables` view per use).
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from clustergnn import cpu_kernels
from clustergnn.aggregate.base import Aggregation
from clustergnn.graph import union, unique
from clustergnn.memory import MemoryEntry, entries_of

if TYPE_CHECKING:  # rules.py imports the aggregation modules, which import this one
    from clustergnn.rules import LayerRule

ROUNDING = 2.0**-24  # float32's unit roundoff: |fl(x) - x| <= ROUNDING |fl(x)| (half an ulp)
# a narrow sum's row may carry as many roundings as a float32 sum over its in-edges performs (its
# in-degree: DGL's own forward), but at least DRIFT_MIN and at most DRIFT_MAX, each of the row's current
# size: its budget is checked against ROUNDING * clamp(indeg, DRIFT_MIN, DRIFT_MAX) * its largest entry
DRIFT_MIN, DRIFT_MAX = 16, 1024
# owned-row tables (ghost_rows=False) grow by this factor (slot-indexed tables double with the graph)
ROW_GROWTH = 1.25


# index_select / index_copy_ are several times faster than advanced indexing on CPU; rows are unique
def gather_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` for a 1-D index tensor."""
    return t.index_select(0, idx)


def put_rows(t: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> None:
    """``t[idx] = v`` (cast to ``t``'s dtype) for a 1-D index tensor of distinct rows."""
    t.index_copy_(0, idx, v.to(t.dtype))


@dataclass(frozen=True)
class RowView:
    """Rows of the caches: a plain slice when they are ``0..n-1`` (no copies), else gathered by index."""

    idx: torch.Tensor
    n: int | None  # rows are exactly 0..n-1

    @classmethod
    def of(cls, rows: np.ndarray, idx: torch.Tensor) -> RowView:
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
class LayerTables:
    """The tables one layer ``l`` reads and writes: ``msg[l]``, ``agg[l]``, ``selfc[l]`` and ``h[l+1]``, and
    its input ``h[l]`` (a self term not cached is recomputed from it)."""

    msg: torch.Tensor
    agg: torch.Tensor | None
    selfc: torch.Tensor | None
    h_out: torch.Tensor | None  # None: kept as the next layer's message and self term
    h_in: torch.Tensor | None
    drift: torch.Tensor | None = None  # the narrow sum's rounding budget per row (None: float64 or no sum)


class Scratch:
    """Reusable scratch arrays of the hot path (kept all -1 / all zero between calls)."""

    def __init__(self) -> None:
        self._posmap = np.zeros(0, dtype=np.int64)
        self._bits = np.zeros(0, dtype=np.uint64)  # cpu_kernels.unique_live's bitmap

    def memory_report(self) -> dict[str, MemoryEntry]:
        return entries_of("", "scratch", {"posmap": self._posmap, "unique_bits": self._bits})

    def posmap(self, capacity: int) -> np.ndarray:
        """An all -1 ``int64`` map over at least ``capacity`` slots (callers leave it all -1)."""
        if len(self._posmap) < capacity:
            self._posmap = np.full(capacity, -1, dtype=np.int64)
        return self._posmap

    def positions(self, rows: np.ndarray, values: np.ndarray, capacity: int) -> np.ndarray:
        """Index of each of ``values`` in ``rows`` (-1 if absent), through the dense map: O(n), where
        ``np.searchsorted`` costs a binary search per value."""
        posmap = self.posmap(capacity)
        posmap[rows] = np.arange(len(rows))
        out = posmap[values]
        posmap[rows] = -1
        return out

    def unique_live(self, parts: list[np.ndarray], live: np.ndarray, fused: bool) -> np.ndarray:
        """Sorted distinct values of ``parts`` that are ``live``."""
        if not fused:
            rows = union(*parts)
            return rows[live[rows]]
        if len(self._bits) * 64 < len(live):
            self._bits = np.zeros(len(live) // 64 + 1, dtype=np.uint64)
        return cpu_kernels.unique_live(np.concatenate(parts).astype(np.int64, copy=False), live, self._bits)


class Caches:
    """Every layer's tables plus the per-slot arrays ``ghost``, ``remote_out`` and ``version``."""

    def __init__(
        self,
        rules: list[LayerRule],
        device: torch.device,
        in_dim: int,
        alias_input_msg: bool = True,
        drop_inputs: bool = False,
        drop_output: bool = False,
        ghost_rows: bool = True,
        output_elsewhere: bool = False,
    ) -> None:
        """``alias_input_msg``: ``msg[0]`` may be ``h[0]`` (module docstring; False in a partition, whose
        ghosts have messages but no inputs).  ``drop_inputs``: a hidden ``h[l]`` may be left out where
        layer ``l`` keeps it as its message and self term (module docstring).  ``drop_output``: ``h[L]``
        may be left out where the last layer's finish is cheap from its cached rows (module docstring).
        ``ghost_rows=False``: ``h``/``agg``/``selfc``/``drift`` have owned rows only (module docstring).
        ``output_elsewhere``: ``h[L]`` is left out wherever the last layer caches its aggregate (a read replica
        finishes it from published rows: :class:`clustergnn.replica.FinishingReplica`)."""
        self.device = device
        self.capacity = 0
        # owned rows (module docstring): None where the four tables are indexed by slot
        self.rowmap: np.ndarray | None = None if ghost_rows else np.zeros(0, dtype=np.int64)
        self.slot_of = None if ghost_rows else np.zeros(0, dtype=np.int64)  # each owned row's slot (-1: free)
        self.row_capacity = 0  # rows of h/agg/selfc/drift (= capacity where indexed by slot)
        self._rows_used = 0  # rows [0, _rows_used) have been handed out
        self._free_rows = None if ghost_rows else np.zeros(0, dtype=np.int64)  # freed rows, from the end first
        dims = [in_dim] + [r.out_dim for r in rules]
        self.msg0_is_h0 = alias_input_msg and rules[0].message_is_input
        # h[l] kept? (inputs and the final output always are)
        self.h_kept = [True] + [not (drop_inputs and r.input_kept_as_images) for r in rules[1:]]
        self.h_kept.append(
            not (drop_output and rules[-1].finished_on_read)
            and not (output_elsewhere and rules[-1].aggregation is not Aggregation.ATTENTION)
        )
        self.h: list[torch.Tensor | None] = [self.zeros(0, d) if k else None for d, k in zip(dims, self.h_kept)]
        self.msg: list[torch.Tensor] = [self.zeros(0, r.msg_dim) for r in rules]
        if self.msg0_is_h0:
            self.msg[0] = self.h[0]
        self.agg: list[torch.Tensor | None] = [self._agg_zeros(r) for r in rules]
        self.drift: list[torch.Tensor | None] = [
            torch.zeros(0, device=device) if a is not None and a.dtype == torch.float32 and r.narrow_sum else None
            for a, r in zip(self.agg, rules, strict=True)
        ]
        self.selfc: list[torch.Tensor | None] = [
            self.zeros(0, r.self_dim or r.out_dim) if r.has_self_term and not r.self_term_at_finish else None
            for r in rules
        ]
        # names of the tables not kept (derived from others): a state written with them is still read
        self.derived = {"msg0"} if self.msg0_is_h0 else set()
        self.derived |= {f"selfc{li}" for li, r in enumerate(rules) if r.has_self_term and r.self_term_at_finish}
        self.derived |= {f"h{li}" for li, kept in enumerate(self.h_kept) if not kept}
        self.ghost = np.zeros(0, dtype=bool)  # slots that mirror another partition's vertex
        self.remote_out = np.zeros(0, dtype=np.int64)  # out-edges held by other partitions
        self.version = np.zeros(0, dtype=np.int64)  # round in which the final embedding last changed

    def zeros(self, n: int, d: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(n, d, dtype=dtype, device=self.device)

    def _agg_zeros(self, rule: LayerRule) -> torch.Tensor | None:
        if rule.aggregation is Aggregation.SUM:
            return self.zeros(0, rule.msg_dim, torch.float32 if rule.narrow_sum else torch.float64)
        if rule.aggregation is Aggregation.MAX:
            return self.zeros(0, rule.msg_dim)
        return None

    def t(self, a: np.ndarray) -> torch.Tensor:
        """``a`` as an int64 index tensor on the caches' device."""
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(self.device)

    def layer(self, li: int) -> LayerTables:
        return LayerTables(self.msg[li], self.agg[li], self.selfc[li], self.h[li + 1], self.h[li], self.drift[li])

    def tables(self) -> list[torch.Tensor]:
        """Every distinct table (``msg[0]`` once when it is ``h[0]``)."""
        tables = [*self.h, *self.msg[self.msg0_is_h0 :], *self.agg, *self.selfc, *self.drift]
        return [t for t in tables if t is not None]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tables())

    def memory_report(self) -> dict[str, MemoryEntry]:
        """Every table (kind ``cache``) and per-slot array (``per_slot``), named as in :meth:`row_specs`."""
        named = self._named()
        tables = {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}
        per_slot = {k: v for k, v in named.items() if not isinstance(v, torch.Tensor)}
        if self.rowmap is not None:  # the owned-row maps (module docstring)
            per_slot |= {"rowmap": self.rowmap, "slot_of": self.slot_of, "free_rows": self._free_rows}
        return {**entries_of("", "cache", tables), **entries_of("", "per_slot", per_slot)}

    def _grown(self, t: torch.Tensor | None, capacity: int) -> torch.Tensor | None:
        if t is None:
            return None
        new = torch.zeros(capacity, *t.shape[1:], dtype=t.dtype, device=self.device)
        new[: t.shape[0]] = t
        return new

    def grow(self, capacity: int, used: int | None = None) -> None:
        """Slot capacity ``capacity``: every slot-indexed table and array (the owned-row tables grow
        with :meth:`assign_rows`).  With owned rows and ``used`` (slots ``[0, used)`` handed out), the
        ``msg`` tables cover ``used`` slots, grown by :data:`ROW_GROWTH` up to ``capacity``, not the
        graph's doubled capacity (the per-slot arrays, 1-8 bytes a slot, do follow it)."""
        if self.rowmap is not None and used is not None:
            self._grow_msg(min(capacity, max(used, 1)))
        if capacity <= self.capacity:
            return
        if self.rowmap is not None and used is None:
            self._grow_msg(capacity)
        by_slot = [] if self.rowmap is not None else [self.h, self.msg, self.agg, self.selfc, self.drift]
        for tables in by_slot:
            tables[:] = [
                self.h[0] if tables is self.msg and li == 0 and self.msg0_is_h0 else self._grown(t, capacity)
                for li, t in enumerate(tables)
            ]
        for name in ("ghost", "remote_out", "version") + (("rowmap",) if self.rowmap is not None else ()):
            old = getattr(self, name)
            arr = np.zeros(capacity, dtype=old.dtype) if name != "rowmap" else np.full(capacity, -1, dtype=old.dtype)
            arr[: len(old)] = old
            setattr(self, name, arr)
        self.capacity = capacity
        if self.rowmap is None:
            self.row_capacity = capacity

    def _grow_msg(self, need: int) -> None:
        have = self.msg[0].shape[0]
        if need <= have:
            return
        rows = max(need, int(have * ROW_GROWTH), 16)
        self.msg[:] = [self._grown(t, rows) for t in self.msg]

    # ---------------------------------------------------------------- owned rows (module docstring)
    def rows(self, slots: np.ndarray) -> np.ndarray:
        """The rows of ``h``/``agg``/``selfc``/``drift`` that hold owned ``slots`` (``slots`` itself, the
        same array, where those tables are indexed by slot)."""
        return slots if self.rowmap is None else self.rowmap[slots]

    def rt(self, slots: np.ndarray) -> torch.Tensor:
        """:meth:`rows` as an index tensor (:meth:`t`)."""
        return self.t(self.rows(slots))

    def slots_of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The slots of owned ``rows`` (the inverse of :meth:`rows`)."""
        return rows if self.rowmap is None else self.slot_of[rows]

    def assign_rows(self, slots: np.ndarray) -> None:
        """Give each of ``slots`` (owned vertices just added) that has none a zero row of the owned-row
        tables: freed rows first, then new ones (the tables grow by :data:`ROW_GROWTH`)."""
        if self.rowmap is None or not len(slots):
            return
        slots = np.asarray(slots, dtype=np.int64)
        slots = slots[self.rowmap[slots] < 0]
        n = len(slots)
        if not n:
            return
        reuse = min(n, len(self._free_rows))
        rows = np.empty(n, dtype=np.int64)
        if reuse:
            rows[:reuse] = self._free_rows[len(self._free_rows) - reuse :][::-1]
            self._free_rows = self._free_rows[: len(self._free_rows) - reuse]
        rows[reuse:] = np.arange(self._rows_used, self._rows_used + n - reuse)
        self._rows_used += n - reuse
        if self._rows_used > self.row_capacity:
            self._grow_rows(max(self._rows_used, int(self.row_capacity * ROW_GROWTH), 16))
        self.rowmap[slots] = rows
        self.slot_of[rows] = slots

    def _grow_rows(self, rows: int) -> None:
        for tables in (self.h, self.agg, self.selfc, self.drift):
            tables[:] = [self._grown(t, rows) for t in tables]
        if self.msg0_is_h0:  # pragma: no cover - never with owned rows (a partition does not alias)
            self.msg[0] = self.h[0]
        old = self.slot_of
        self.slot_of = np.full(rows, -1, dtype=np.int64)
        self.slot_of[: len(old)] = old
        self.row_capacity = rows

    def _owned_tables(self) -> list[torch.Tensor]:
        tables = [*self.h, *self.agg, *self.selfc, *self.drift]
        return [t for t in tables if t is not None and not (self.msg0_is_h0 and t is self.msg[0])]

    # ---------------------------------------------------------------- state (clustergnn.state)
    def row_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Name -> (dtype, trailing shape) of every per-slot array :meth:`export_rows` writes."""
        return {
            name: (
                np.dtype(str(t.dtype).removeprefix("torch.")) if isinstance(t, torch.Tensor) else t.dtype,
                tuple(t.shape[1:]),
            )
            for name, t in self._named().items()
        }

    def _named(self) -> dict[str, torch.Tensor | np.ndarray]:
        out: dict[str, torch.Tensor | np.ndarray] = {}
        for name in ("h", "msg", "agg", "selfc", "drift"):
            for li, t in enumerate(getattr(self, name)):
                if t is not None and f"{name}{li}" not in self.derived:
                    out[f"{name}{li}"] = t
        for name in ("ghost", "remote_out", "version"):
            out[name] = getattr(self, name)
        return out

    # The tables a ghost never uses: a ghost is a source whose messages its owner sends (``msg``), it has
    # no layer outputs, aggregates or self terms here, so those rows stay zero (tests/core/test_state.py)
    GHOST_FREE = ("h", "agg", "selfc", "drift")

    @classmethod
    def _ghost_free(cls, name: str) -> bool:
        return name.rstrip("0123456789") in cls.GHOST_FREE

    def _rows_of(self, name: str, idx: torch.Tensor, own_idx: torch.Tensor) -> torch.Tensor:
        return own_idx if self._ghost_free(name) else idx

    def _check_ghost_mask(self, ghosts: np.ndarray | None) -> None:
        if self.rowmap is not None and ghosts is None:
            raise ValueError("an engine with owned rows exports and loads rows with their ghost mask")

    def export_rows(self, slots: np.ndarray, ghosts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Rows ``slots`` of every table and per-slot array, as numpy copies (named as in :meth:`row_specs`).
        The values are the caches' own bits (float64 aggregates stay float64), so loading them back
        gives the same tables.  ``ghosts`` (a mask over ``slots``): the tables of :attr:`GHOST_FREE`
        keep only the rows of the other slots (a ghost's are zero); required with owned rows."""
        self._check_ghost_mask(ghosts)
        idx = self.t(slots)
        own_idx = idx if ghosts is None else self.rt(slots[~ghosts])
        out = {}
        for name, t in self._named().items():
            if isinstance(t, torch.Tensor):
                out[name] = t.index_select(0, self._rows_of(name, idx, own_idx)).cpu().numpy()
            else:
                out[name] = t[slots].copy()
        return out

    def ghost_free_names(self) -> set[str]:
        """The names in :meth:`row_specs` of the tables that ``export_rows(..., ghosts)`` shortens."""
        return {name for name in self._named() if self._ghost_free(name)}

    def load_rows(self, slots: np.ndarray, arrays: dict[str, np.ndarray], ghosts: np.ndarray | None = None) -> None:
        """Write rows ``slots`` from ``arrays`` (checked by the caller against :meth:`row_specs`), as
        :meth:`export_rows` wrote them with the same ``ghosts``; ghost rows of the shortened tables are
        left as they are (zero in a new engine).  With owned rows, the other slots get theirs first;
        ``ghosts`` None there means a state whose shortened tables have every slot's row (written
        before ghost rows were left out): the ghosts' (zero) rows, by ``arrays["ghost"]``, are dropped."""
        if self.rowmap is not None and ghosts is None:
            ghosts = np.asarray(arrays["ghost"], dtype=bool)
            arrays = {k: v[~ghosts] if self._ghost_free(k) else v for k, v in arrays.items()}
        if ghosts is not None:
            self.assign_rows(slots[~ghosts])
        idx = self.t(slots)
        own_idx = idx if ghosts is None else self.rt(slots[~ghosts])
        for name, t in self._named().items():
            if isinstance(t, torch.Tensor):
                src = torch.from_numpy(np.ascontiguousarray(arrays[name])).to(self.device)
                t.index_copy_(0, self._rows_of(name, idx, own_idx), src)
            else:
                t[slots] = arrays[name]

    def upgrade(self, arrays: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """``arrays`` of a state written before the narrow sums (float64 ``agg{l}``, no ``drift{l}``) as this
        engine keeps them: each float64 row rounded once to float32, its budget that rounding's bound
        (``ROUNDING`` times the row's largest entry); other states unchanged (and not read here)."""
        new: dict[str, np.ndarray] = {}
        for li, d in enumerate(self.drift):
            name = f"agg{li}"
            if d is None or name not in arrays or f"drift{li}" in arrays or arrays[name].dtype != np.float64:
                continue
            a = new[name] = arrays[name].astype(np.float32)
            big = np.abs(a).max(axis=1, initial=0.0) if a.ndim == 2 else np.zeros(len(a), np.float32)
            new[f"drift{li}"] = (big * np.float32(ROUNDING)).astype(np.float32)
        return ChainMap(new, arrays) if new else arrays

    def clear_rows(self, slots: np.ndarray) -> None:
        """Zero every row of ``slots`` (freed, or undone); with owned rows, free the rows they had."""
        self.remote_out[slots] = 0
        self.ghost[slots] = False
        idx = self.t(slots)
        if self.rowmap is None:
            for t in self.tables():
                t[idx] = 0
            return
        for t in self.msg:
            t[idx] = 0
        slots = np.asarray(slots, dtype=np.int64)
        rows = self.rowmap[slots]
        own = rows >= 0
        if not own.any():
            return
        rows = unique(rows[own])  # a slot may be listed twice
        ridx = self.t(rows)
        for t in self._owned_tables():
            t[ridx] = 0
        self.rowmap[slots[own]] = -1
        self.slot_of[rows] = -1
        self._free_rows = np.concatenate([self._free_rows, rows[::-1]])

    def store(
        self, li: int, rows: np.ndarray, out: torch.Tensor, force: np.ndarray, detect: bool, fused: bool
    ) -> np.ndarray:
        """Write ``h_{li+1}[rows] = out``; return the rows that changed (plus ``force``, e.g. new vertices)."""
        h = self.h[li + 1]
        if detect and fused:
            diff = np.empty(len(rows), dtype=bool)
            cpu_kernels.store_changed(
                h.numpy(), np.ascontiguousarray(self.rows(rows), dtype=np.int64), out.contiguous().numpy(), False, diff
            )
            changed = rows[diff]
            return union(changed, force) if force.size else changed
        idx = self.rt(rows)
        if detect:
            diff = (out != gather_rows(h, idx)).any(dim=1).cpu().numpy()
            changed = rows[diff]
            if force.size:
                changed = union(changed, force)
        else:
            changed = rows
        put_rows(h, idx, out)
        return changed
