"""Fixtures shared by every test tier that needs a real service on 127.0.0.1.

* ``kafka_bootstrap``: a real Kafka-protocol broker, started once per session (the embedded one from
  ``streams.broker``), or ``CLUSTERGNN_TEST_BOOTSTRAP=host:port`` for an already running broker (e.g. a
  real Apache Kafka), so CI needs no hand-started service;
* ``topic_name``: a fresh topic name per call (tests share one broker, never a topic);
* ``ray_local``: a local Ray on 127.0.0.1 for the whole session (starting Ray costs seconds).

Imports of Kafka and Ray happen inside the fixtures: the pure core tier (``tests/core``) never loads them.
Helpers for talking to the broker directly are in ``tests/kafka_util.py``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a broker that lives for the whole test session."""
    external = os.environ.get("CLUSTERGNN_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    from streams.broker import EmbeddedBroker

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


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A local Ray on 127.0.0.1 for the whole session (starting Ray costs seconds)."""
    import ray

    from actors.ray_env import init_ray
    from clustergnn.config import ClusterConfig

    init_ray(ClusterConfig(ray_num_cpus=8))
    yield
    ray.shutdown()
