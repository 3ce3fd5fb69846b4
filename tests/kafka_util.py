"""Helpers for tests that talk to the broker directly (raw records, draining a consumer, dead letters)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clustergnn.mutations import MutationBatch
from streams.consumer import MutationConsumer, PolledBatch


def raw_send(bootstrap: str, topic: str, records: list[tuple[int, bytes | None, bytes | None]]) -> list[int]:
    """Write ``(partition, key, value)`` records as they are, in order; their offsets."""
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        futs = [p.send(topic, key=k, value=v, partition=part) for part, k, v in records]
        return [f.get(timeout=10).offset for f in futs]
    finally:
        p.close()


def drain(consumer: MutationConsumer, until: dict[int, int], timeout_s: float = 15.0) -> dict[int, list[PolledBatch]]:
    """Poll until each partition's position reaches ``until[p]`` (a next offset); batches per partition."""
    out: dict[int, list[PolledBatch]] = {p: [] for p in until}
    deadline = time.monotonic() + timeout_s
    while any((consumer.position(p) or 0) < n for p, n in until.items()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: positions { {p: consumer.position(p) for p in until} }, want {until}")
        for pb in consumer.poll(timeout_ms=200):
            out.setdefault(pb.partition, []).append(pb)
    return out


def joined(batches: list[PolledBatch], feature_dim: int = 0) -> MutationBatch:
    return MutationBatch.concat([b.batch for b in batches]) if batches else MutationBatch.empty(feature_dim)


def read_all(bootstrap: str, topic: str, partitions: list[int], expect: int, timeout_s: float = 15.0) -> list:
    """Every raw record of ``topic`` (``expect`` of them), for checking dead-letter topics."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    c.assign([TopicPartition(topic, p) for p in partitions])
    c.seek_to_beginning()
    got: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expect and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                got.extend(recs)
        # a short extra poll so that too many records shows up as a failure, not a pass
        for recs in c.poll(timeout_ms=300).values():
            got.extend(recs)
    finally:
        c.close()
    return got
