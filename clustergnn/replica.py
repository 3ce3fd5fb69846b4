"""A read replica of the final embeddings, kept by whoever serves reads (the gateway's process).

Partition owners publish, at the end of every round, the final-layer rows that changed and the
vertices removed (:class:`clustergnn.partitioned.Published`); the coordinator applies them here before
it advances the watermark, so a read served from the replica reflects exactly the completed rounds,
without a call to any owner.  (Collaborative mode does not materialise the last layer: its reads go to
the owners, which finish the last layer for the asked vertices.)
"""

from __future__ import annotations

import threading

import numpy as np

from clustergnn.graph import MutableGraph
from clustergnn.partitioned import Published


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
            gone = np.concatenate([p.removed for p in pubs]) if pubs else np.zeros(0, np.int64)
            if gone.size:
                present = gone[g.lookup(gone) >= 0]
                if present.size:
                    g.remove_vertices(np.unique(present))
                    g.end_batch()
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
