"""Errors of the Kafka layer.  Bad *records* are not errors: they are values (``wire.DecodeError``)."""

from __future__ import annotations

from clustergnn.errors import ClusterGNNError


class StreamError(ClusterGNNError):
    """The mutation stream cannot be used as configured (topic missing, partition count wrong, ...)."""


class BrokerError(StreamError):
    """The embedded broker could not be started, found or stopped."""
