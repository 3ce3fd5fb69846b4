"""Topic names and creation: the mutation topic (one Kafka partition per owner) and its dead-letter topic."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import StreamError

logger = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""``max.message.bytes`` set on topics we create: Arrow records of 64k mutations exceed Kafka's 1 MB default."""


def dead_letter_topic_for(topic: str) -> str:
    """The default dead-letter topic of ``topic``: ``<topic>.dlq``."""
    return topic + DLQ_SUFFIX


@dataclass(frozen=True)
class TopicInfo:
    name: str
    num_partitions: int
    created: bool


def _partition_count(admin: KafkaAdminClient, topic: str) -> int | None:
    try:
        described = admin.describe_topics([topic])
    except KafkaError:
        return None
    if not described or described[0].get("error_code", 0) != 0:
        return None
    return len(described[0]["partitions"]) or None


def ensure_topic(
    bootstrap: str,
    topic: str,
    num_partitions: int,
    *,
    replication_factor: int = 1,
    max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
    timeout_s: float = 10.0,
    check_count: bool = True,
) -> TopicInfo:
    """Create ``topic`` with ``num_partitions`` partitions if missing; check the count if present.

    The partition count is the number of owners, so a topic with another count is an error, never
    silently reused (``check_count=False`` skips that check, for the dead-letter topic).
    """
    if num_partitions < 1:
        raise StreamError(f"num_partitions must be >= 1, got {num_partitions}")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="clustergnn-admin")
    try:
        created = False
        existing = _partition_count(admin, topic)
        if existing is None:
            configs = {"max.message.bytes": str(max_message_bytes)} if max_message_bytes else {}
            try:
                admin.create_topics([NewTopic(topic, num_partitions, replication_factor, topic_configs=configs)])
                created = True
                logger.info("created topic %s with %s partitions", topic, num_partitions)
            except TopicAlreadyExistsError:
                pass  # a concurrent creator won; its count is checked below
            deadline = time.monotonic() + timeout_s
            while (existing := _partition_count(admin, topic)) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if existing is None:
                raise StreamError(f"topic {topic!r} was created but is not visible after {timeout_s} s")
        if check_count and existing != num_partitions:
            raise StreamError(
                f"topic {topic!r} has {existing} partitions, but the partition map has {num_partitions} owners; "
                "Kafka partitions and owners are 1:1"
            )
        return TopicInfo(topic, existing, created)
    finally:
        admin.close()


def ensure_topics(
    bootstrap: str, topic: str, num_partitions: int, *, dead_letter_topic: str | None = None, **kwargs: object
) -> TopicInfo:
    """:func:`ensure_topic` for the mutation topic and its dead-letter topic (same partition count)."""
    info = ensure_topic(bootstrap, topic, num_partitions, **kwargs)  # type: ignore[arg-type]
    dlq = dead_letter_topic or dead_letter_topic_for(topic)
    ensure_topic(bootstrap, dlq, num_partitions, check_count=False, **kwargs)  # type: ignore[arg-type]
    return info
