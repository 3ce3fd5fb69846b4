"""clustergnn: exact, incremental GNN embeddings over graphs that never stop changing.

The core is pure: no Ray, Kafka or gRPC here.  ``actors/`` wraps it in Ray, ``streams/`` in Kafka.
"""

from __future__ import annotations

from clustergnn.errors import ClusterGNNError, MutationError, UnknownVertexError, UnsupportedModelError
from clustergnn.mutations import MutationBatch, MutationKind

__all__ = [
    "ClusterGNNError",
    "Engine",
    "MutationBatch",
    "MutationError",
    "MutationKind",
    "UnknownVertexError",
    "UnsupportedModelError",
]


def __getattr__(name: str):  # the engine pulls in torch + DGL models; import it on first use
    if name == "Engine":
        from clustergnn.engine import Engine

        return Engine
    raise AttributeError(f"module 'clustergnn' has no attribute {name!r}")
