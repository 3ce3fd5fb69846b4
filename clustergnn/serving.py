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

A read with a bound waits for it up to its deadline (then ``StalenessDeadlineError``), or, with
``answer_now=True``, is answered at once with what is visible and says whether the bound held
(``ReadResult.bound_met``; non-blocking bounded staleness, as Materialize offers it).
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
        layer: the layer that was served, resolved to ``0 .. num_layers-1`` (:func:`resolve_layer`).
        model_digest: sha256 of the model (layer types, config and weights) that produced the answer.
        bound_met: the answer meets the read's ``max_staleness_ms`` and ``min_offsets``.  Always True for
            a read without ``answer_now`` (it answers only when its bound holds, else raises
            ``StalenessDeadlineError``); False only for an ``answer_now`` read whose bound did not hold,
            whose ``staleness_ms`` and ``watermark`` then say how far off it is.
    """

    embeddings: np.ndarray
    versions: np.ndarray
    staleness_ms: float
    watermark: dict[int, int]
    layer: int
    model_digest: str = ""
    bound_met: bool = True


def resolve_layer(layer: int | None, num_layers: int) -> int:
    """The proto's layer numbering, the one numbering of every backend and client.

    Layer ``i`` in ``0 .. num_layers-1`` is the output of GNN layer ``i`` (``num_layers-1`` = the final
    embeddings); a negative ``i`` counts from the last (``-1`` = last, ``-num_layers`` = first); ``None``
    (unset) means ``-1``.  The input features are not a layer.  Returns the non-negative index, or
    raises :class:`InvalidReadError` naming the allowed range.
    """
    if layer is None:
        layer = -1
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise InvalidReadError(f"layer must be an integer, got {layer!r}")
    layer = int(layer)
    if not -num_layers <= layer < num_layers:
        raise InvalidReadError(
            f"layer must be in [{-num_layers}, {num_layers - 1}] (0 = first GNN layer's output, -1 = the "
            f"final embeddings; {num_layers} layers), got {layer}"
        )
    return layer % num_layers


FEATURES = -1
"""The ``layer`` an answer reports for a read of the input features (``input_features=True``)."""


def resolve_read(layer: int | None, num_layers: int, input_features: bool = False) -> int:
    """The layer index a read serves: :func:`resolve_layer`, or :data:`FEATURES` for the input features
    (then ``layer`` must be unset)."""
    if input_features:
        if layer is not None:
            raise InvalidReadError(f"layer must be unset when input_features is set, got layer {layer}")
        return FEATURES
    return resolve_layer(layer, num_layers)


@dataclass(frozen=True)
class ModelInfo:
    """Which model a cluster serves: what ``Status`` reports and every answer names by its digest.

    Attributes:
        layer_types: the DGL class of each layer, e.g. ``["SAGEConv", "SAGEConv"]``.
        dims: input width, then each layer's output width (``len(layer_types) + 1`` values).
        digest: sha256 over the layer types, the model config and every weight (``model_digest``).
    """

    layer_types: list[str]
    dims: list[int]
    digest: str

    def describe(self) -> str:
        kinds = sorted(set(self.layer_types))
        arrows = "->".join(str(d) for d in self.dims)
        return f"{'/'.join(kinds)} {arrows}, weights sha256 {self.digest[:12]}"


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    alive: bool
    num_vertices: int
    watermark: dict[int, int]
    lag: int
    applied_mutations: int
    mutations_per_s: float
    node: str = ""
    """Address of the Ray node its owner runs on ("" when unknown, e.g. while it is being re-created)."""
    memory_bytes: dict[str, int] = field(default_factory=dict)
    """Its engine's arrays by kind (``clustergnn.memory.MEMORY_KINDS``: cache, per_slot, structure, scratch,
    model), allocated bytes (``Engine.memory_report``); empty when unknown."""
    rss_bytes: int = 0
    """Resident memory of its owner's whole process (0 when unknown)."""


@dataclass(frozen=True)
class ClusterStatus:
    partitions: list[PartitionStatus]
    watermark: dict[int, int]
    num_layers: int
    embedding_dims: list[int]
    extra: dict[str, float] = field(default_factory=dict)
    model: ModelInfo | None = None

    @property
    def healthy(self) -> bool:
        return bool(self.partitions) and all(p.alive for p in self.partitions)


class EmbeddingBackend(Protocol):
    """What the gateway needs from a cluster (or from a single engine in tests)."""

    def read(
        self,
        ids: np.ndarray,
        *,
        layer: int | None = None,
        max_staleness_ms: float | None = None,
        min_offsets: Offsets | None = None,
        timeout_s: float = 5.0,
        input_features: bool = False,
        answer_now: bool = False,
    ) -> ReadResult:
        """Embeddings of ``ids`` (int64) at ``layer`` (:func:`resolve_layer`; ``None`` = the final
        embeddings), or their stored input features with ``input_features=True`` (``layer`` unset;
        :func:`resolve_read` checks both).  Raises ``UnknownVertexError`` (naming the id),
        ``InvalidReadError``, ``StalenessDeadlineError`` or ``PartitionUnavailableError``.

        ``max_staleness_ms`` / ``min_offsets`` bound the answer's freshness: the read waits up to
        ``timeout_s`` for them to hold, then raises ``StalenessDeadlineError``.  With ``answer_now=True``
        it judges the bound once and answers at once with what is visible, ``bound_met=False`` when the
        bound did not hold (never ``StalenessDeadlineError`` for the bound; the other errors stay, and a
        backend still replaying its log after a start raises ``PartitionUnavailableError`` at once instead
        of being waited for).  Without a bound ``answer_now`` changes nothing."""
        ...

    def apply(self, batch: MutationBatch) -> dict[int, int]:
        """Write ``batch`` to the mutation log; returns Kafka partition -> offset of its last record.

        A backend that judges writes also has ``apply_txn(batch, txn_id) -> offsets`` (one transaction,
        applied whole or not at all, ``clustergnn/txn.py``) and ``await_txn(txn_id, offsets, timeout_s)
        -> bool`` (True: applied and visible; False: no verdict yet; ``WriteRejectedError``: rejected,
        nothing applied); the gateway's ``Apply`` then answers the verdict (docs/gateway.md, "Writes")."""
        ...

    def status(self) -> ClusterStatus: ...
