"""What a read of embeddings returns, and how it can fail: the contract between the cluster and its edge.

The gRPC gateway (``actors/``) and every backend (the Ray cluster, or a single in-process engine in
unit tests) speak these types, so the edge never depends on how embeddings are computed.

Freshness (DESIGN.md promise 2): a mutation's time is its Kafka record timestamp and its identity is
``(kafka partition, offset)``.  A backend's *watermark* maps each Kafka partition to the next offset
not yet visible, i.e. every record below it is applied through every layer on every partition.  A
read with ``max_staleness_ms = S`` answers only once the watermark covers every record produced more
than ``S`` ms before the answer; ``staleness_ms`` of an answer is ``now - (time of the oldest record
not yet visible)`` (0 when nothing produced is pending).

Read-your-writes: ``min_offsets = {p: o}`` asks that record ``o`` of Kafka partition ``p`` be visible,
i.e. ``watermark[p] > o``; the offsets a write returns (the last record per partition) can be passed
back as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clustergnn.errors import ClusterGNNError
from clustergnn.mutations import MutationBatch

# Kafka partition -> offset.  For a watermark: the next offset that is not yet visible.
Offsets = Mapping[int, int]


class StalenessDeadlineError(ClusterGNNError, TimeoutError):
    """The staleness bound (or the requested offsets) was not met before the read's deadline."""


class PartitionUnavailableError(ClusterGNNError, RuntimeError):
    """A partition owner is down or recovering; reads that need it cannot be answered now."""


class InvalidReadError(ClusterGNNError, ValueError):
    """The read itself is malformed (bad layer, negative staleness, too many ids, ...)."""


@dataclass(frozen=True)
class ReadResult:
    """Embeddings for the requested ids, in request order, and how fresh they are.

    Attributes:
        embeddings: ``(n, D)`` float32.
        versions: ``(n,)`` int64, per vertex: a counter that grows each time the vertex's embedding at
            this layer changes (0 = as loaded).
        staleness_ms: how old the answer may be: now minus the produce time of the oldest mutation not
            yet reflected (0.0 when every produced mutation is reflected).
        watermark: Kafka partition -> next offset not yet visible, at the time of the answer.
        layer: the layer that was served (resolved: ``-1`` becomes the last layer's index).
    """

    embeddings: np.ndarray
    versions: np.ndarray
    staleness_ms: float
    watermark: dict[int, int]
    layer: int


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    alive: bool
    num_vertices: int
    watermark: dict[int, int]
    lag: int
    applied_mutations: int
    mutations_per_s: float


@dataclass(frozen=True)
class ClusterStatus:
    partitions: list[PartitionStatus]
    watermark: dict[int, int]
    num_layers: int
    embedding_dims: list[int]
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return bool(self.partitions) and all(p.alive for p in self.partitions)


class EmbeddingBackend(Protocol):
    """What the gateway needs from a cluster (or from a single engine in tests)."""

    def read(
        self,
        ids: np.ndarray,
        *,
        layer: int = -1,
        max_staleness_ms: float | None = None,
        min_offsets: Offsets | None = None,
        timeout_s: float = 5.0,
    ) -> ReadResult:
        """Embeddings of ``ids`` (int64).  Raises ``UnknownVertexError`` (naming the id),
        ``InvalidReadError``, ``StalenessDeadlineError`` or ``PartitionUnavailableError``."""
        ...

    def apply(self, batch: MutationBatch) -> dict[int, int]:
        """Write ``batch`` to the mutation log; returns Kafka partition -> offset of its last record."""
        ...

    def status(self) -> ClusterStatus: ...
