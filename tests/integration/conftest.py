"""Fixtures for integration tests: a real Kafka-protocol broker on 127.0.0.1, started once per session.

``CLUSTERGNN_TEST_BOOTSTRAP=host:port`` points the suite at an already running broker instead (e.g.
a real Apache Kafka); otherwise the embedded broker (``streams.broker``) is started here, so CI needs
no hand-started service.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clustergnn.mutations import MutationBatch
from streams.broker import EmbeddedBroker
from streams.consumer import MutationConsumer, PolledBatch


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a broker that lives for the whole test session."""
    external = os.environ.get("CLUSTERGNN_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    broker = EmbeddedBroker(port=0, log_path=log)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def topic_name(request: pytest.FixtureRequest) -> Callable[[], str]:
    """A fresh, unique topic name per call: tests share one broker but never a topic."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]

    def make() -> str:
        return f"t-{base}-{uuid.uuid4().hex[:8]}"

    return make


# ----------------------------------------------------------------------------- helpers (import from here)


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
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
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


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray on 127.0.0.1 for the whole session (starting Ray costs seconds)."""
    import ray

    from actors.ray_env import init_ray
    from clustergnn.config import ClusterConfig

    init_ray(ClusterConfig(ray_num_cpus=8))
    yield
    ray.shutdown()
