"""Errors of the Kafka layer.  Bad *records* are not errors: they are values (``wire.DecodeError``)."""

from __future__ import annotations

from clustergnn.errors import ClusterGNNError


class StreamError(ClusterGNNError):
    """The mutation stream cannot be used as configured (topic missing, partition count wrong, ...)."""


class BrokerError(StreamError):
    """The embedded broker could not be started, found or stopped."""


class OffsetsGoneError(StreamError):
    """The log no longer holds the offsets an owner must read next (a broker restarted with an empty log,
    retention passed, the topic recreated): reading on would skip or re-apply mutations, so ingestion stops."""

    def __init__(self, topic: str, partition: int, offset: int, log_start: int | None, log_end: int | None) -> None:
        span = f"[{log_start}, {log_end})" if log_start is not None else "unknown (broker unreachable)"
        super().__init__(
            f"offset {offset} of {topic}[{partition}] is gone: the log now holds offsets {span}. Mutations from "
            f"offset {offset} on cannot be read; restore the log or start from a snapshot taken after the gap "
            "(docs/operations.md, 'The log lost records')"
        )
        self.topic, self.partition, self.offset = topic, partition, offset
        self.log_start, self.log_end = log_start, log_end
