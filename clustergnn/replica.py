"""A read replica of the final embeddings, kept by whoever serves reads (the gateway's process).

Partition owners publish, at the end of every round, the final-layer rows that changed and the
vertices removed (:class:`clustergnn.partitioned.Published`); the coordinator applies them here before
it advances the watermark, so a read served from the replica reflects exactly the completed rounds,
without a call to any owner.  (Collaborative mode does not materialise the last layer: its reads go to
the owners, which finish the last layer for the asked vertices.)

Replica-finish serving (``cluster.replica_finish``; docs/gateway.md, "Replica-finish serving"): owners
stop each round's update at the last layer's aggregates and publish those, with in-degrees and self
terms (:meth:`clustergnn.partitioned.PartitionEngine._finish_inputs`); :class:`FinishingReplica` keeps
them per vertex and finishes the asked rows at read time with the engine's own finish
(:func:`clustergnn.rules.finish_rows`), one small batch per read.  A GAT last layer caches no aggregate:
it stays eager (its final rows are published and kept, as :class:`EmbeddingReplica` does).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from clustergnn.aggregate.base import Aggregation
from clustergnn.graph import MutableGraph
from clustergnn.partitioned import Published
from clustergnn.rules import LayerRule, finish_rows


def _remove_published(g: MutableGraph, pubs: list[Published]) -> None:
    """Remove from a replica's id map the vertices a round's publications say were removed."""
    gone = np.concatenate([p.removed for p in pubs]) if pubs else np.zeros(0, np.int64)
    if gone.size:
        present = gone[g.lookup(gone) >= 0]
        if present.size:
            g.remove_vertices(np.unique(present))
            g.end_batch()


class EmbeddingReplica:
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._ids = MutableGraph(capacity)  # only its id <-> slot map is used
        self.rows = np.zeros((capacity, dim), dtype=np.float32)
        self.versions = np.zeros(capacity, dtype=np.int64)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._ids.num_vertices

    def apply(self, pubs: list[Published]) -> None:
        """Apply one round's publications (all partitions) atomically with respect to readers."""
        with self._lock:
            g = self._ids
            _remove_published(g, pubs)
            for p in pubs:
                if not p.ids.size:
                    continue
                slots = g.lookup(p.ids)
                new = slots < 0
                if new.any():
                    slots[new] = g.add_vertices(p.ids[new])
                    g.end_batch()
                    if g.capacity > len(self.rows):
                        rows = np.zeros((g.capacity, self.dim), dtype=np.float32)
                        rows[: len(self.rows)] = self.rows
                        ver = np.zeros(g.capacity, dtype=np.int64)
                        ver[: len(self.versions)] = self.versions
                        self.rows, self.versions = rows, ver
                self.rows[slots] = p.rows
                self.versions[slots] = p.versions

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows and versions of ``ids``; ``UnknownVertexError`` names the first unknown id."""
        with self._lock:
            slots = self._ids.slots_of(np.asarray(ids, dtype=np.int64))
            return self.rows[slots], self.versions[slots]


def finishes_on_read(rule: LayerRule) -> bool:
    """Whether replica-finish serving finishes ``rule`` (a last layer) on read: every rule that caches its
    aggregate; GAT does not (its aggregate is recomputed from the in-edges), so it stays eager."""
    return rule.aggregation is not Aggregation.ATTENTION


def make_replica(last: LayerRule, replica_finish: bool) -> EmbeddingReplica | FinishingReplica:
    """The replica a coordinator keeps for a model whose last layer is ``last``."""
    if replica_finish and finishes_on_read(last):
        return FinishingReplica(last)
    return EmbeddingReplica(last.out_dim)


class FinishingReplica:
    """The last layer's finish inputs per vertex, finished on read (module docstring).

    Per vertex: the aggregate (``msg_dim`` wide, in the owners' aggregate dtype), the in-degree, the
    version, and where the rule reads them the self term (``selfc`` or the layer input) and the own
    message.  ``get`` gathers the asked rows under the lock and finishes them outside it."""

    def __init__(self, rule: LayerRule, capacity: int = 1024) -> None:
        self.rule = rule.to(torch.device("cpu"))
        self.dim = rule.out_dim
        self._ids = MutableGraph(capacity)  # only its id <-> slot map is used
        self._tables: dict[str, np.ndarray] = {}
        self.versions = np.zeros(capacity, dtype=np.int64)
        self.indeg = np.zeros(capacity, dtype=np.int64)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._ids.num_vertices

    @property
    def nbytes(self) -> int:
        """Bytes of the per-vertex tables (capacity rows)."""
        return int(self.versions.nbytes + self.indeg.nbytes + sum(t.nbytes for t in self._tables.values()))

    def _table(self, name: str, rows: np.ndarray) -> np.ndarray:
        t = self._tables.get(name)
        if t is None:  # made at its first publication (its width and dtype are the owners')
            t = self._tables[name] = np.zeros((len(self.versions), *rows.shape[1:]), dtype=rows.dtype)
        return t

    def _check(self, pubs: list[Published]) -> None:
        """Every publication's rows fit the tables already held (checked before anything is applied)."""
        for p in pubs:
            for name, rows in (("agg", p.rows), ("self", p.self_rows), ("msg", p.msg_rows)):
                t = self._tables.get(name)
                if rows is not None and t is not None and (t.dtype != rows.dtype or t.shape[1:] != rows.shape[1:]):
                    raise ValueError(
                        f"published {name} rows are {rows.dtype} {rows.shape[1:]}, "
                        f"the replica holds {t.dtype} {t.shape[1:]}"
                    )

    def _slots(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids``, adding the unknown ones (their rows zeroed: a slot may be reused)."""
        g = self._ids
        slots = g.lookup(ids)
        new = slots < 0
        if new.any():
            slots[new] = g.add_vertices(ids[new])
            g.end_batch()
            if g.capacity > len(self.versions):
                grow = g.capacity - len(self.versions)
                self.versions = np.concatenate([self.versions, np.zeros(grow, np.int64)])
                self.indeg = np.concatenate([self.indeg, np.zeros(grow, np.int64)])
                for k, t in self._tables.items():
                    self._tables[k] = np.concatenate([t, np.zeros((grow, *t.shape[1:]), t.dtype)])
            fresh = slots[new]
            self.versions[fresh] = 0
            self.indeg[fresh] = 0
            for t in self._tables.values():
                t[fresh] = 0
        return slots

    def apply(self, pubs: list[Published]) -> None:
        """Apply one round's publications (all partitions) atomically with respect to readers."""
        bad = [p for p in pubs if not p.finish_inputs]
        if bad:
            raise ValueError("a finishing replica takes finish inputs (replica-finish serving), got final rows")
        with self._lock:
            self._check(pubs)
            g = self._ids
            _remove_published(g, pubs)
            for p in pubs:
                if p.ids.size:
                    slots = self._slots(p.ids)
                    self._table("agg", p.rows)[slots] = p.rows
                    self.indeg[slots] = p.indeg
                    self.versions[slots] = p.versions
                if p.self_ids is not None and p.self_ids.size and (p.self_rows is not None or p.msg_rows is not None):
                    slots = self._slots(p.self_ids)
                    if p.self_rows is not None:
                        self._table("self", p.self_rows)[slots] = p.self_rows
                    if p.msg_rows is not None:
                        self._table("msg", p.msg_rows)[slots] = p.msg_rows

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Final rows (finished now) and versions of ``ids``; ``UnknownVertexError`` names the first unknown id."""
        with self._lock:
            slots = self._ids.slots_of(np.asarray(ids, dtype=np.int64))
            got = {k: t[slots] for k, t in self._tables.items()}  # copies: finished outside the lock
            indeg, versions = self.indeg[slots], self.versions[slots]
        rule = self.rule
        if "agg" not in got:  # nothing published yet (no vertex): slots_of raised for any id
            return np.zeros((0, self.dim), np.float32), versions
        t = {k: torch.from_numpy(v) for k, v in got.items()}
        selfv = t.get("self")
        with torch.no_grad():
            out = finish_rows(
                rule,
                t["agg"],
                torch.from_numpy(indeg),
                selfv if selfv is not None and not rule.self_term_at_finish else None,
                selfv if rule.self_term_at_finish else None,
                t.get("msg"),
            )
        return out.numpy().astype(np.float32, copy=False), versions
