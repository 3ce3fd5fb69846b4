"""streams.probe: the log-end fetches behind ``max_staleness_ms = 0`` and the idle cluster's long poll, against
the broker (the embedded one, or CLUSTERGNN_TEST_BOOTSTRAP)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from kafka import KafkaProducer

from streams.broker import free_port
from streams.probe import LogEndProbe
from streams.topics import ensure_topic

P = 3


def produce(bootstrap: str, topic: str, counts: dict[int, int]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    try:
        for p, n in counts.items():
            for i in range(n):
                producer.send(topic, value=b"x%d" % i, partition=p).get(timeout=10)
    finally:
        producer.close()


def test_a_probe_reports_every_partitions_high_watermark(kafka_bootstrap: str, topic_name: Callable[[], str]) -> None:
    topic = topic_name()
    ensure_topic(kafka_bootstrap, topic, P)
    produce(kafka_bootstrap, topic, {0: 3, 1: 0, 2: 5})
    probe = LogEndProbe(kafka_bootstrap, topic, P)
    try:
        asked = time.time()
        res = probe.probe({0: 0, 1: 0, 2: 0}, asked_s=asked)
        assert res is not None and res.high_watermarks == {0: 3, 1: 0, 2: 5}
        assert res.sent_s >= asked
        assert not res.applied({0: 3, 1: 0, 2: 4}) and res.applied({0: 3, 1: 0, 2: 5})
        # a caller that asked before that probe was sent shares it: no second fetch
        assert probe.probe({0: 3, 1: 0, 2: 5}, asked_s=asked) is res and probe.probes == 1
        # one that asked later gets a probe of its own, from the offsets it names
        res2 = probe.probe({0: 3, 1: 0, 2: 5}, asked_s=time.time())
        assert res2 is not res and res2.high_watermarks == {0: 3, 1: 0, 2: 5} and probe.probes == 2
    finally:
        probe.close()


def test_a_watch_returns_when_data_arrives_and_proves_nothing_it_did_not_see(
    kafka_bootstrap: str, topic_name: Callable[[], str]
) -> None:
    """The long poll's proof, checked against a producer appending at random moments: every record whose
    append was acknowledged before a result's proven moment (its fetch's send time) lies below that
    result's high watermark.  (``sent + wait`` for an empty answer failed this on tansu: streams.probe.)"""
    topic = topic_name()
    ensure_topic(kafka_bootstrap, topic, P)
    acked: list[tuple[float, int, int]] = []  # (wall time acknowledged, partition, offset)
    stop = threading.Event()

    def producer_loop() -> None:
        rng = random.Random(7)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
        try:
            while not stop.is_set():
                md = producer.send(topic, value=b"y", partition=rng.randrange(P)).get(timeout=10)
                acked.append((time.time(), md.partition, md.offset))
                time.sleep(rng.uniform(0, 0.02))
        finally:
            producer.close()

    watcher = LogEndProbe(kafka_bootstrap, topic, P)
    thread = threading.Thread(target=producer_loop)
    thread.start()
    results = []
    try:
        applied = {p: 0 for p in range(P)}
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            res = watcher.watch(applied, 5)
            assert res is not None
            results.append((res, dict(applied)))
            applied = dict(res.high_watermarks)  # "apply" everything it saw; the next watch waits for more
    finally:
        stop.set()
        thread.join()
        watcher.close()
    assert len(acked) > 20 and len(results) > 20
    for res, _ in results:
        for t, p, offset in acked:
            if t < res.sent_s:
                assert offset < res.high_watermarks[p], (t, p, offset, res)
    # some answers carried new data, some were quiet
    assert any(not res.applied(applied) for res, applied in results)
    assert any(res.applied(applied) for res, applied in results)


def test_a_broker_that_is_not_there_proves_nothing(topic_name: Callable[[], str]) -> None:
    probe = LogEndProbe(f"127.0.0.1:{free_port()}", topic_name(), P)
    assert probe.probe({}, asked_s=time.time(), timeout_s=0.5) is None
    assert probe.watch({}, 5, timeout_s=0.5) is None
    probe.close()


def test_a_topic_that_does_not_exist_proves_nothing(kafka_bootstrap: str, topic_name: Callable[[], str]) -> None:
    probe = LogEndProbe(kafka_bootstrap, topic_name(), P)
    try:
        assert probe.probe({}, asked_s=time.time(), timeout_s=2) is None
    finally:
        probe.close()


def test_an_answer_larger_than_the_buffer_is_read_whole() -> None:
    """A fetch answer over the connection's 64 KB buffer (the log's end fetched with records in it) grows
    the buffer and is read whole: growing it while a view of it was open raised BufferError, and the rest
    of that answer then read as garbage ("N bytes after the answer") on the next request."""
    import socket
    import struct
    import threading

    from streams.probe import _Connection

    payload = bytes(range(256)) * 1200  # 300 KB
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            for _ in range(2):
                size = struct.unpack(">i", conn.recv(4, socket.MSG_WAITALL))[0]
                req = conn.recv(size, socket.MSG_WAITALL)
                cid = struct.unpack_from(">i", req, 4)[0]
                body = struct.pack(">i", cid) + payload
                conn.sendall(struct.pack(">i", len(body)) + body)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    try:
        c = _Connection("127.0.0.1", server.getsockname()[1], "test", 5.0)
        for _ in range(2):
            cid = c.send(1, 0, b"")
            r = c.receive(cid, 5.0)
            assert r.buf[r.pos :] == payload
        c.close()
    finally:
        server.close()
        t.join(5)
