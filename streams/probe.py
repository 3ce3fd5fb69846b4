"""Is the log's end applied?  Fetches of every partition's high watermark, for reads that ask for a
freshness the owners' last reports cannot prove (``max_staleness_ms = 0``) and for the idle cluster's long
poll (``actors/cluster.py``, ``Cluster._idle``).

What a Fetch answer proves.  A Fetch response carries each partition's high watermark as the broker saw it
when it answered, so an answer to a fetch *sent* at wall time ``t`` proves that every record produced
before ``t`` lies below that watermark.  When every partition's watermark is at or below the offset the
owners have applied, every record produced before ``t`` is applied: the cluster's visible time is at least
``t`` (:meth:`LogEndProbe.probe`).

A long poll proves no more than its send time.  A fetch with ``min_bytes = 1`` from the applied offsets is
held by the broker up to its ``max_wait_ms`` unless data arrives (:meth:`LogEndProbe.watch`), which makes it
a cheap way to notice new data on an idle cluster.  It is tempting to read an answer that came back empty
after the full wait as proof that nothing was appended until ``sent + wait``, or an outstanding fetch as
proof that nothing was appended since it was sent.  Neither holds in general, and the first was seen to
fail: tansu checks its log at half-wait intervals and answers from the last check, so with a 5 ms wait 60
of 640 empty answers missed records whose append was acknowledged up to 1.6 ms before ``sent + wait``
(tests/streams/test_probe.py checks the send-time proof the same way).  A broker need not answer the
moment data arrives either (tansu answered data appended 10 ms into a 50 ms wait after 27 ms), and an
answer may be on its way.  So only answers are evidence, and only of their send time.

Why not kafka-python's consumer: its 3.x client runs every fetch through a background I/O thread and a
generic protocol codec, which made the idle long poll the costliest thing of an idle cluster (0.12 cores
for a 10 ms wait).  Fetch v4 and Metadata v4 are small fixed formats (supported by Apache Kafka 0.11 to
4.x and by tansu), so this module speaks them itself over one blocking socket per broker, one ``recv`` per
answer (the kernel's receive timeout, not Python's poll-then-recv): about 0.2 ms of CPU per fetch on this
kind of VM, most of it the kernel's wake-up, none while waiting (0.03 cores for a 5 ms wait).
ListOffsets is not used: tansu answers it wrong (../shared/STACK.md), and Fetch is what the owners' own
watermarks come from.  A probe asks with ``max_wait_ms = 0`` (the broker answers at once); tansu answers
that with no partitions at all, so against it a probe waits 1 ms (about 1.3 ms a round trip).

Probes are serialized, and a caller whose wait began before a probe was sent takes that probe's result
instead of sending another, so many concurrent bounded reads cost one broker round trip.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

logger = logging.getLogger(__name__)
FETCH_WAIT_MS = 1
"""A probe's broker wait where ``max_wait_ms = 0`` gets no partitions back (tansu); elsewhere 0."""
PARTITION_MAX_BYTES = 1
"""Bytes asked per partition: the watermark is what matters (a broker may still send one record batch)."""

_FETCH, _METADATA = 1, 3  # API keys
_FETCH_V, _METADATA_V = 4, 4
# partition errors after which the leaders are looked up again
_STALE_LEADER = {3, 5, 6, 74, 75, 100}  # unknown topic/partition, leader not available, not leader, epochs


@dataclass(frozen=True)
class ProbeResult:
    sent_s: float
    """Wall time (``time.time()``) proven: every record produced before it lies below ``high_watermarks``."""
    high_watermarks: dict[int, int]
    """Partition -> the broker's high watermark in its answer."""

    def applied(self, watermark: Mapping[int, int]) -> bool:
        """Every record below the high watermarks is applied (``watermark[p]`` = next offset not applied)."""
        return all(watermark.get(p, 0) >= hw for p, hw in self.high_watermarks.items())


class ProtocolError(Exception):
    """An answer that does not parse, or that names a different request."""


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def _take(self, fmt: str, n: int):  # noqa: ANN202
        if self.pos + n > len(self.buf):
            raise ProtocolError(f"answer ends at byte {len(self.buf)}, wanted {n} more at {self.pos}")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def i8(self) -> int:
        return self._take(">b", 1)

    def i16(self) -> int:
        return self._take(">h", 2)

    def i32(self) -> int:
        return self._take(">i", 4)

    def i64(self) -> int:
        return self._take(">q", 8)

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        s = self.buf[self.pos : self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_bytes(self) -> int:
        n = self.i32()
        self.pos += max(n, 0)
        if self.pos > len(self.buf):
            raise ProtocolError("a bytes field runs past the answer's end")
        return n


def _string(s: str) -> bytes:
    b = s.encode()
    return struct.pack(">h", len(b)) + b


class _Connection:
    """One blocking TCP connection to one broker; one request at a time."""

    def __init__(self, host: str, port: int, client_id: str, timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # blocking mode with the kernel's receive timeout: one recv syscall per read (Python's own timeouts
        # poll() before every recv, and on this kind of VM each syscall and wake-up is dear)
        self.sock.settimeout(None)
        self._rcvtimeo = -1.0
        self._buf = bytearray(1 << 16)
        self._client = _string(client_id)
        self._cid = 0

    def send(self, api_key: int, version: int, body: bytes) -> int:
        self._cid = (self._cid + 1) & 0x7FFFFFFF
        msg = struct.pack(">hhi", api_key, version, self._cid) + self._client + body
        self.sock.sendall(struct.pack(">i", len(msg)) + msg)
        return self._cid

    def receive(self, cid: int, timeout_s: float) -> _Reader:
        """The answer to request ``cid``; ``TimeoutError`` (an ``OSError``) if none came in ``timeout_s``."""
        timeout_s = round(max(timeout_s, 0.001), 3)
        if timeout_s != self._rcvtimeo:  # SO_RCVTIMEO bounds each blocking recv
            sec = int(timeout_s)
            tv = struct.pack("ll", sec, int((timeout_s - sec) * 1e6))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self._rcvtimeo = timeout_s
        view, have, need = memoryview(self._buf), 0, 4
        while have < need:
            try:
                got = self.sock.recv_into(view[have:])
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise TimeoutError(f"no answer to request {cid} within {timeout_s} s") from None
            if not got:
                raise ConnectionError("the broker closed the connection")
            have += got
            if have >= 4 and need == 4:
                need = 4 + struct.unpack_from(">i", self._buf)[0]
                if need > len(self._buf):  # a larger answer than usual: grow and keep what was read
                    view.release()  # a bytearray with a view open cannot grow (BufferError)
                    self._buf.extend(bytes(need - len(self._buf)))
                    view = memoryview(self._buf)
        if have > need:
            raise ProtocolError(f"{have - need} bytes after the answer to request {cid}")
        r = _Reader(bytes(view[4:need]))
        if r.i32() != cid:
            raise ProtocolError(f"answer to request {cid} carries another correlation id")
        return r

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class LogEndProbe:
    """Fetches of ``topic``'s ``partitions`` over blocking sockets of its own (one per leader broker,
    connected lazily, dropped on any error); :meth:`probe` and :meth:`watch` are thread-safe, one at a time."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, client_id: str = "clustergnn-freshness-probe"):
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, int(partitions)
        self.client_id = client_id
        self._lock = threading.Lock()
        self._brokers: dict[int, tuple[str, int]] = {}
        self._leaders: dict[int, int] = {}  # partition -> node id; empty: look them up
        self._conns: dict[int, _Connection] = {}
        self._last: ProbeResult | None = None
        self._probe_wait_ms = 0  # FETCH_WAIT_MS once the broker answered a 0 wait with no partitions
        self._empty_answer = False  # the last fetch's answers parsed but named no partition of the topic
        self._warned = False
        self.probes = 0  # probes answered
        self.fetches = 0  # fetch requests answered (probes and watches)

    # ------------------------------------------------------------------ wire
    def _lookup_leaders(self, timeout_s: float) -> None:
        err: Exception | None = None
        for hostport in self.bootstrap.split(","):
            host, _, port = hostport.strip().rpartition(":")
            try:
                conn = _Connection(host or "127.0.0.1", int(port), self.client_id, timeout_s)
            except (OSError, ValueError) as exc:
                err = exc
                continue
            try:
                body = struct.pack(">i", 1) + _string(self.topic) + b"\x00"  # one topic, no auto-creation
                r = conn.receive(conn.send(_METADATA, _METADATA_V, body), timeout_s)
                r.i32()  # throttle
                brokers = {}
                for _ in range(r.i32()):
                    node, host_, port_ = r.i32(), r.string(), r.i32()
                    r.string()  # rack
                    brokers[node] = (host_ or "127.0.0.1", port_)
                r.string()  # cluster id
                r.i32()  # controller
                leaders = {}
                for _ in range(r.i32()):
                    r.i16()
                    name = r.string()
                    r.i8()
                    for _ in range(r.i32()):
                        perr, p, leader = r.i16(), r.i32(), r.i32()
                        for _ in range(r.i32()):
                            r.i32()
                        for _ in range(r.i32()):
                            r.i32()
                        if name == self.topic and perr == 0 and leader >= 0:
                            leaders[p] = leader
            except (OSError, ProtocolError, ConnectionError) as exc:
                err = exc
                continue
            finally:
                conn.close()
            missing = set(range(self.partitions)) - set(leaders)
            if missing:
                raise ProtocolError(f"no leader known for partitions {sorted(missing)} of {self.topic!r}")
            self._brokers, self._leaders = brokers, leaders
            return
        raise ConnectionError(f"no bootstrap broker of {self.bootstrap!r} answered: {err!r}")

    def _connection(self, node: int, timeout_s: float) -> _Connection:
        conn = self._conns.get(node)
        if conn is None:
            host, port = self._brokers[node]
            conn = self._conns[node] = _Connection(host, port, self.client_id, timeout_s)
        return conn

    def _drop(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
        self._leaders = {}

    def _fetch(
        self, offsets: Mapping[int, int], wait_ms: int, timeout_s: float
    ) -> dict[int, tuple[float, float, int]] | None:
        """One fetch per leader from ``offsets``: partition -> (wall time sent, seconds from sending to the
        answer, high watermark); None unless every partition answered without error."""
        self._empty_answer = False
        try:
            if not self._leaders:
                self._lookup_leaders(timeout_s)
            by_node: dict[int, list[int]] = {}
            for p in range(self.partitions):
                by_node.setdefault(self._leaders[p], []).append(p)
            sent = []
            for node, parts in by_node.items():
                body = b"".join(
                    struct.pack(">iqi", p, max(0, int(offsets.get(p, 0))), PARTITION_MAX_BYTES) for p in parts
                )
                body = (
                    struct.pack(">iiiib", -1, int(wait_ms), 1, 1 << 20, 0)  # replica, wait, min bytes, max, uncommitted
                    + struct.pack(">i", 1)
                    + _string(self.topic)
                    + struct.pack(">i", len(parts))
                    + body
                )
                conn = self._connection(node, timeout_s)
                t_wall, t_mono = time.time(), time.monotonic()
                sent.append((conn, conn.send(_FETCH, _FETCH_V, body), t_wall, t_mono))
            got: dict[int, tuple[float, float, int]] = {}
            named = 0  # partitions of the topic the answers name (with or without an error)
            deadline = time.monotonic() + timeout_s
            for conn, cid, t_wall, t_mono in sent:
                r = conn.receive(cid, deadline - time.monotonic())
                held = time.monotonic() - t_mono
                r.i32()  # throttle
                for _ in range(r.i32()):
                    topic = r.string()
                    for _ in range(r.i32()):
                        p, err, hw = r.i32(), r.i16(), r.i64()
                        r.i64()  # last stable offset
                        for _ in range(max(r.i32(), 0)):  # aborted transactions
                            r.i64()
                            r.i64()
                        r.skip_bytes()  # records
                        if topic != self.topic:
                            continue
                        named += 1
                        if err == 0:
                            got[p] = (t_wall, held, int(hw))
                        elif err in _STALE_LEADER:
                            self._leaders = {}
            self.fetches += len(sent)
            self._empty_answer = named == 0
            return got if len(got) == self.partitions else None
        except (OSError, ProtocolError, ConnectionError, KeyError, ValueError) as exc:
            self._drop()  # a half-read answer leaves the stream unusable: start over next time
            if not self._warned:
                logger.warning("log-end fetch failed (%r): nothing proven; retried on the next call", exc)
                self._warned = True
            return None

    # ------------------------------------------------------------------ uses
    def probe(self, applied: Mapping[int, int], *, asked_s: float, timeout_s: float = 1.0) -> ProbeResult | None:
        """The high watermarks of fetches sent after ``asked_s`` (a probe another caller sent after that
        moment counts), reading from the ``applied`` offsets; None if not every partition answered in
        ``timeout_s`` (broker unreachable: nothing is proven)."""
        with self._lock:
            if self._last is not None and self._last.sent_s >= asked_s:
                return self._last
            got = self._fetch(applied, self._probe_wait_ms, timeout_s)
            if got is None and self._empty_answer and self._probe_wait_ms == 0:  # tansu: ask again, waiting
                self._probe_wait_ms = FETCH_WAIT_MS
                got = self._fetch(applied, self._probe_wait_ms, timeout_s)
            if got is None:
                return None
            self.probes += 1
            self._last = ProbeResult(min(s for s, _, _ in got.values()), {p: hw for p, (_, _, hw) in got.items()})
            return self._last

    def watch(self, applied: Mapping[int, int], wait_ms: int, timeout_s: float = 5.0) -> ProbeResult | None:
        """A long poll for an idle cluster: fetches from the ``applied`` offsets that the broker holds up to
        ``wait_ms`` unless data arrives.  The result's ``sent_s`` is the moment proven, the send time (not
        ``sent + wait_ms``: see the module doc); its high watermarks say whether data is waiting.  None if
        not every partition answered in ``timeout_s``."""
        with self._lock:
            got = self._fetch(applied, int(wait_ms), timeout_s)
            if got is None:
                return None
            return ProbeResult(min(s for s, _, _ in got.values()), {p: hw for p, (_, _, hw) in got.items()})

    def close(self) -> None:
        with self._lock:
            self._drop()
