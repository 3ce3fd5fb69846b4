"""Is the log's end applied?  A fetch-based probe of every partition's high watermark, for reads that
ask for a freshness the owners' last reports cannot prove (``max_staleness_ms = 0`` on an idle cluster).

A Fetch response carries the partition's high watermark as the broker saw it when it answered, so a
response to a fetch *sent* at time ``t`` proves that every record produced before ``t`` lies below that
watermark.  When every partition's watermark is at or below the offset the owners have applied, every
record produced before ``t`` is applied: the cluster's visible time is at least ``t``.  The probe asks
with ``fetch_max_wait_ms = 0`` (the broker answers at once) from the offsets the owners have applied, so
it reads at most a few records it throws away.  ListOffsets is not used: the embedded broker answers it
wrong (../shared/STACK.md), and Fetch is what the owners' own watermarks come from.

Probes are serialized, and a caller whose wait began before a probe was sent takes that probe's result
instead of sending another, so many concurrent bounded reads cost one broker round trip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)
FETCH_WAIT_MS = 1
WATCH_POLL_MS = 10


@dataclass(frozen=True)
class ProbeResult:
    sent_s: float
    """Wall time (``time.time()``) the oldest of the fetches was sent: the moment proven."""
    high_watermarks: dict[int, int]
    """Partition -> the broker's high watermark in its answer."""

    def applied(self, watermark: Mapping[int, int]) -> bool:
        """Every record below the high watermarks is applied (``watermark[p]`` = next offset not applied)."""
        return all(watermark.get(p, 0) >= hw for p, hw in self.high_watermarks.items())


class LogEndProbe:
    """One lazily connected consumer of ``topic``'s ``partitions``; :meth:`probe` is thread-safe."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, int(partitions)
        self._lock = threading.Lock()
        self._consumer: Any = None
        self._tps: dict[int, Any] = {}
        self._answers: dict[int, tuple[float, int]] = {}  # partition -> (sent wall time, high watermark)
        self._held: dict[int, float] = {}  # partition -> seconds between sending the fetch and its answer
        self._watch_pos: dict[int, int] | None = None  # where watch() last sought
        self._watch_since = 0.0  # the send time of the oldest answer watch() last used
        self._last: ProbeResult | None = None
        self.probes = 0

    def _connect(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="clustergnn-freshness-probe",
            fetch_max_wait_ms=FETCH_WAIT_MS,
            enable_incremental_fetch_sessions=False,  # every answer must carry every partition
            fetch_min_bytes=1,
            max_partition_fetch_bytes=1024,
            auto_offset_reset="latest",
        )
        self._tps = {p: TopicPartition(self.topic, p) for p in range(self.partitions)}
        self._consumer.assign(list(self._tps.values()))
        fetcher = self._consumer._fetcher
        handle = fetcher._handle_fetch_response

        def note(node_id, fetch_offsets, send_time, response):  # noqa: ANN001 - kafka-python's callback
            held_s = time.monotonic() - send_time
            sent = time.time() - held_s
            for topic_data in response.responses:
                for data in topic_data.partitions:
                    if topic_data.topic == self.topic and data.error_code == 0:
                        p = data.partition_index
                        self._answers[p] = (sent, int(data.high_watermark))
                        self._held[p] = held_s
            return handle(node_id, fetch_offsets, send_time, response)

        fetcher._handle_fetch_response = note  # looked up per fetch sent: every answer passes here

    def probe(self, applied: Mapping[int, int], *, asked_s: float, timeout_s: float = 1.0) -> ProbeResult | None:
        """The high watermarks of fetches sent after ``asked_s`` (a probe another caller sent after that
        moment counts), reading from the ``applied`` offsets; None if not every partition answered in
        ``timeout_s`` (broker unreachable: nothing is proven)."""
        with self._lock:
            if self._last is not None and self._last.sent_s >= asked_s:
                return self._last
            if self._consumer is None:
                self._connect()
            t0 = time.time()
            for p, tp in self._tps.items():
                self._consumer.seek(tp, max(0, int(applied.get(p, 0))))
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                self._consumer.poll(timeout_ms=5)
                got = {p: a for p, a in self._answers.items() if a[0] >= t0}
                if len(got) == self.partitions:
                    self.probes += 1
                    self._last = ProbeResult(min(s for s, _ in got.values()), {p: hw for p, (_, hw) in got.items()})
                    return self._last
            logger.warning("freshness probe: not every partition answered within %.1fs", timeout_s)
            return None

    def watch(self, applied: Mapping[int, int], wait_ms: int, timeout_s: float = 5.0) -> ProbeResult | None:
        """A long poll for an idle cluster: fetches from the ``applied`` offsets that the broker holds up to
        ``wait_ms`` unless data arrives.  Each answer proves only its fetch's send time (the result's
        ``sent_s``), not ``sent + wait``: the embedded broker answered held fetches empty although records
        acknowledged before then existed.  The high watermarks say whether data is waiting.
        None if not every partition answered in ``timeout_s``."""
        with self._lock:
            if self._consumer is None:
                self._connect()
            fetcher = self._consumer._fetcher
            fetcher.config["fetch_max_wait_ms"] = int(wait_ms)
            try:
                want = {p: max(0, int(applied.get(p, 0))) for p in self._tps}
                if want != self._watch_pos:  # seeking drops the fetch in flight: only when the offsets moved
                    for p, tp in self._tps.items():
                        self._consumer.seek(tp, want[p])
                    self._watch_pos = want
                # any answer newer than the last one used proves something new (its high watermark is the
                # log's end when the broker answered, whatever offset the fetch was for)
                since = self._watch_since
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    self._consumer.poll(timeout_ms=WATCH_POLL_MS)  # short slices: act on an answer at once
                    got = {p: a for p, a in self._answers.items() if a[0] > since}
                    if len(got) == self.partitions:
                        # only the send time is proven: the embedded broker was seen answering a held fetch
                        # empty while records acknowledged before ``sent + wait`` existed
                        proven = [sent for sent, _ in got.values()]
                        self._watch_since = min(sent for sent, _ in got.values())
                        return ProbeResult(min(proven), {p: hw for p, (_, hw) in got.items()})
                return None
            finally:
                fetcher.config["fetch_max_wait_ms"] = FETCH_WAIT_MS

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None
