"""Fixtures for integration tests: a real Kafka-protocol broker on 127.0.0.1, started once per session.

``CLUSTERGNN_TEST_BOOTSTRAP=host:port`` points the suite at an already running broker instead (e.g.
a real Apache Kafka); otherwise the embedded broker (``streams.broker``) is started here, so CI needs
no hand-started service.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from streams.broker import EmbeddedBroker


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
