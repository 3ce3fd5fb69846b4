"""Exceptions of the core.  Each message names the bad value and, where there is one, the allowed set."""

from __future__ import annotations


class ClusterGNNError(Exception):
    """Base class of clustergnn's own errors."""


class MutationError(ClusterGNNError, ValueError):
    """A mutation or batch is malformed or does not fit the graph; the batch was not applied."""


class UnknownVertexError(ClusterGNNError, KeyError):
    """A vertex id is not in the graph (never added, or removed)."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class UnsupportedModelError(ClusterGNNError, TypeError):
    """A model layer (or its configuration) has no exact incremental rule."""


class WriteRejectedError(ClusterGNNError):
    """A transactional write was judged by the partition owners and rejected whole: nothing of it applied
    (the message names the partition, the mutation and why)."""
