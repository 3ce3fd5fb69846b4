"""Read an owner's Kafka partitions and decode them into :class:`MutationBatch` es.

An owner reads exactly its partitions (manual assignment: no consumer group, no rebalancing) from
offsets it chooses, and keeps its position itself; it never asks the broker for end offsets.

Each :meth:`MutationConsumer.poll` returns one :class:`PolledBatch` per partition that had records:
all valid records of that poll concatenated in offset order, plus which offsets they cover.  Bad
records go to the dead-letter topic (reason and source partition/offset in headers) and are left
out; the offsets they occupied are still covered, so the position moves past them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors

from clustergnn.codec import columns_to_batch
from clustergnn.mutations import MutationBatch
from clustergnn.partition import PartitionMap
from clustergnn.txn import TxnTag
from streams.errors import OffsetsGoneError, StreamError
from streams.topics import dead_letter_topic_for, ensure_topic
from streams.wire import H_TXN, DecodedRecord, DecodeError, DecodeErrorCode, decode_record

logger = logging.getLogger(__name__)


def _warn_if_slow_crc() -> None:
    """kafka-python checks record CRCs in pure Python (~10 MB/s here) unless the crc32c package is installed."""
    global _crc_checked
    if _crc_checked:
        return
    _crc_checked = True
    try:
        import crc32c  # noqa: F401
    except ImportError:
        logger.warning(
            "package crc32c is not installed: Kafka record CRCs are checked in pure Python (~10 MB/s); "
            "pip install crc32c"
        )


_crc_checked = False

DEFAULT_MAX_PARTITION_FETCH_BYTES = 32 << 20
DEFAULT_FETCH_MAX_BYTES = 64 << 20

# Dead-letter headers (values are UTF-8; numbers in ASCII decimal)
H_REASON = "dlq.reason"
H_DETAIL = "dlq.detail"
H_TOPIC = "dlq.source.topic"
H_PARTITION = "dlq.source.partition"
H_OFFSET = "dlq.source.offset"
H_TIMESTAMP = "dlq.source.timestamp_ms"


@dataclass(frozen=True, eq=False)
class PolledBatch:
    """The valid mutations one poll read from one Kafka partition, in offset order.

    ``[first_offset, next_offset)`` is the range of offsets this poll consumed (dead-lettered
    records included); after applying ``batch`` the owner's position is ``next_offset``.  The
    ``record_*`` arrays describe the valid records, one entry each, in order: mutation ``i`` of
    ``batch`` came from the record at :meth:`mutation_offsets` ``[i]``.
    """

    partition: int
    batch: MutationBatch
    first_offset: int
    next_offset: int
    record_offsets: np.ndarray  # int64
    record_timestamps_ms: np.ndarray  # int64, the Kafka record timestamps: a mutation's time
    record_sizes: np.ndarray  # int64, mutations per record
    dead_letters: int = 0
    record_txns: tuple[TxnTag | None, ...] = ()  # per valid record: its transaction tag (clustergnn/txn.py)

    def mutation_offsets(self) -> np.ndarray:
        """The Kafka offset of each mutation (its identity is ``(partition, offset)`` plus its row in the record)."""
        return np.repeat(self.record_offsets, self.record_sizes)

    def mutation_timestamps_ms(self) -> np.ndarray:
        return np.repeat(self.record_timestamps_ms, self.record_sizes)

    def __repr__(self) -> str:
        return (
            f"PolledBatch(partition={self.partition}, offsets=[{self.first_offset}, {self.next_offset}), "
            f"records={len(self.record_offsets)}, dead_letters={self.dead_letters}, {self.batch!r})"
        )


def _txn_tag(raw: bytes, partition: int) -> TxnTag | DecodeError:
    """The record's transaction tag, or why it is dead-lettered: it does not parse, or leaves this partition out."""
    try:
        tag = TxnTag.decode(raw)
    except ValueError as e:
        return DecodeError(DecodeErrorCode.BAD_TXN_TAG, str(e))
    if partition not in tag.parts:
        return DecodeError(
            DecodeErrorCode.BAD_TXN_TAG, f"transaction {tag.txn_id} names partitions {list(tag.parts)}, not {partition}"
        )
    return tag


@dataclass(frozen=True)
class DeadLetter:
    """One rejected record, as sent to the dead-letter topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    error: DecodeError

    def headers(self) -> list[tuple[str, bytes]]:
        return [
            (H_REASON, self.error.code.value.encode()),
            (H_DETAIL, self.error.message.encode("utf-8", errors="replace")),
            (H_TOPIC, self.topic.encode()),
            (H_PARTITION, str(self.partition).encode()),
            (H_OFFSET, str(self.offset).encode()),
            (H_TIMESTAMP, str(self.timestamp_ms).encode()),
        ]


class MutationConsumer:
    """Consume ``partitions`` of ``topic`` (manual assignment) and decode them into mutation batches.

    ``start_offsets`` maps a partition to the offset to read first (e.g. a snapshot's offset);
    partitions it does not name start at the earliest offset the broker still has.
    ``feature_dim`` is the expected feature width; ``None`` pins it to the first width seen.
    ``dead_letter_topic`` defaults to ``<topic>.dlq`` and is created if missing.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: Sequence[int],
        partition_map: PartitionMap,
        *,
        start_offsets: Mapping[int, int] | None = None,
        feature_dim: int | None = None,
        dead_letter_topic: str | None = None,
        kafka_config: Mapping[str, Any] | None = None,
        behind_fetch_wait_ms: int | None = None,
    ) -> None:
        self.topic = topic
        self.partitions = sorted(set(int(p) for p in partitions))
        if not self.partitions:
            raise StreamError("a consumer needs at least one partition")
        bad = [p for p in self.partitions if not 0 <= p < partition_map.num_partitions]
        if bad:
            raise StreamError(f"partitions {bad} are outside [0, {partition_map.num_partitions})")
        self.partition_map = partition_map
        self.feature_dim = feature_dim
        self.dead_letter_topic = dead_letter_topic or dead_letter_topic_for(topic)
        self.dead_letters_sent = 0
        self._bootstrap = bootstrap
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": "clustergnn-consumer",
            "group_id": None,
            "enable_auto_commit": False,
            # never reset silently: an offset that is gone is an error (OffsetsGoneError), not a skip or a replay
            "auto_offset_reset": "none",
            "max_partition_fetch_bytes": DEFAULT_MAX_PARTITION_FETCH_BYTES,
            "fetch_max_bytes": DEFAULT_FETCH_MAX_BYTES,
            "max_poll_records": 100_000,
            # a consumer never creates a topic: with a broker that auto-creates (tansu, or Kafka with
            # auto.create.topics.enable), one it asked about after a restart came back with the broker's
            # default partition count, not the owners' (streams.topics.ensure_topics then refused it)
            "allow_auto_create_topics": False,
        }
        config.update(kafka_config or {})
        if config.get("check_crcs", True):
            _warn_if_slow_crc()
        self._consumer = KafkaConsumer(**config)
        self.last_response_s: dict[int, float] = {}  # partition -> when a fetch response for it last arrived
        # partition -> (when the fetch behind the last parsed answer was sent, the high watermark it gave)
        self.highwater_sent_s: dict[int, tuple[float, int]] = {}
        self._log_bounds: dict[int, tuple[int, int]] = {}  # partition -> (log start, high watermark) then
        self._track_responses()
        if behind_fetch_wait_ms is not None:
            self._adapt_fetch_wait(int(config.get("fetch_max_wait_ms", 500)), int(behind_fetch_wait_ms))
        known = self._consumer.partitions_for_topic(topic)
        if not known:
            self._consumer.close()
            raise StreamError(f"topic {topic!r} does not exist; create it first (streams.topics.ensure_topics)")
        if len(known) != partition_map.num_partitions:
            self._consumer.close()
            raise StreamError(
                f"topic {topic!r} has {len(known)} partitions, but the partition map has "
                f"{partition_map.num_partitions} owners; Kafka partitions and owners are 1:1"
            )
        self._tps = {p: TopicPartition(topic, p) for p in self.partitions}
        self._consumer.assign(list(self._tps.values()))
        self._position: dict[int, int | None] = {p: None for p in self.partitions}
        start_offsets = dict(start_offsets or {})
        unknown = sorted(set(start_offsets) - set(self.partitions))
        if unknown:
            raise StreamError(
                f"start_offsets names partitions {unknown} that this consumer does not read ({self.partitions})"
            )
        for p in self.partitions:
            if p in start_offsets:
                self.seek(p, start_offsets[p])
        rest = [self._tps[p] for p in self.partitions if p not in start_offsets]
        if rest:
            self._consumer.seek_to_beginning(*rest)
        self._dead_lettered: dict[int, set[int]] = {}  # partition -> offsets dead-lettered before a restore
        self._dlq: KafkaProducer | None = None
        self._dlq_partitions: int | None = None
        self._dlq_lock = threading.Lock()

    def _track_responses(self) -> None:
        """Note when each fetch response arrives (kafka-python 2.3's fetcher parses every completed fetch,
        records or none, through ``_parse_fetched_data``): a high watermark is only evidence of being caught
        up if it is recent, and with the broker unreachable no response comes."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        parse = getattr(fetcher, "_parse_fetched_data", None)
        if parse is None:  # another kafka-python: caught_up() then trusts the last high watermark
            logger.warning("kafka-python without Fetcher._parse_fetched_data: broker silence goes unnoticed")
            return

        sent_at: dict[tuple[int, int], float] = {}  # (partition, fetch offset) -> when that fetch was sent
        handle = getattr(fetcher, "_handle_fetch_response", None)

        def handle_and_note(node_id: Any, fetch_offsets: Any, send_time: float, response: Any) -> Any:
            sent = time.time() - (time.monotonic() - send_time)  # kafka-python stamps sends with monotonic
            for tp, offset in fetch_offsets.items():
                sent_at[(tp.partition, int(offset))] = sent
            return handle(node_id, fetch_offsets, send_time, response)

        def parse_and_note(completed_fetch: Any) -> Any:
            data = completed_fetch.partition_data
            p = completed_fetch.topic_partition.partition
            sent = sent_at.pop((p, int(completed_fetch.fetched_offset)), None)
            if data.error_code == 0:
                self.last_response_s[p] = time.time()
                self._log_bounds[p] = (int(getattr(data, "log_start_offset", -1)), int(data.high_watermark))
                # the broker's high watermark in this answer covers every record produced before the fetch
                # was sent: with the position at it, that moment is this partition's visible time
                self.highwater_sent_s[p] = (sent if sent is not None else 0.0, int(data.high_watermark))
            return parse(completed_fetch)

        fetcher._parse_fetched_data = parse_and_note
        if handle is not None:  # looked up for each fetch sent, so every answer passes here
            fetcher._handle_fetch_response = handle_and_note

    def _adapt_fetch_wait(self, caught_up_ms: int, behind_ms: int) -> None:
        """Ask the broker to hold a fetch ``caught_up_ms`` while this consumer is at the log's end (new
        records then reach it within about that), and ``behind_ms`` while some partition's position is
        below the high watermark of its last answer, or none is known yet (a start, a replay).

        A broker answers at once when data is there, so the longer wait costs nothing on Kafka; but tansu
        (the embedded broker) lists every stored batch of the partition on each fetch and cuts that
        listing, and the batches it reads, at the fetch's wait: with 5 ms and a few thousand batches in a
        partition, a fetch from behind returned one batch or none, and replays crawled at about a record
        a second (the long chaos run's stall, docs/operations.md).  The wait is set on kafka-python's
        fetcher right before it builds each fetch request."""
        fetcher = getattr(self._consumer, "_fetcher", None)
        create = getattr(fetcher, "_create_fetch_requests", None)
        subs = getattr(fetcher, "_subscriptions", None)
        if create is None or subs is None:
            logger.warning(
                "kafka-python without Fetcher._create_fetch_requests: fetches always wait %s ms", caught_up_ms
            )
            return

        def behind() -> bool:
            for tp, state in list(subs.assignment.items()):
                got = self.highwater_sent_s.get(tp.partition)
                pos = getattr(state, "position", None)
                if got is None or (pos is not None and pos.offset < got[1]):
                    return True
            return False

        def create_adapted() -> Any:
            fetcher.config["fetch_max_wait_ms"] = behind_ms if behind() else caught_up_ms
            return create()

        fetcher._create_fetch_requests = create_adapted

    # ------------------------------------------------------------------ positions
    def seek(self, partition: int, offset: int) -> None:
        """Read ``partition`` from ``offset`` next (resume from a snapshot, or replay)."""
        if partition not in self._tps:
            raise StreamError(f"partition {partition} is not assigned to this consumer ({self.partitions})")
        if offset < 0:
            raise StreamError(f"offset must be >= 0, got {offset}")
        self._consumer.seek(self._tps[partition], offset)
        self._position[partition] = offset
        self._log_bounds.pop(partition, None)

    def position(self, partition: int) -> int | None:
        """The next offset to read from ``partition``: ``next_offset`` of the last poll, or the seek
        offset; ``None`` before anything was read from a partition that started at the beginning."""
        if partition not in self._position:
            raise StreamError(f"partition {partition} is not assigned to this consumer ({self.partitions})")
        return self._position[partition]

    def recall_dead_letters(self, partition: int, from_offset: int) -> int:
        """Before a replay of ``partition`` from ``from_offset`` (a restore from a snapshot, a rollback):
        read the dead-letter topic for records of ``partition`` at or after that offset that were already
        dead-lettered, so the replay counts them but does not send them again (the dead-letter topic stays
        one entry per bad record across restarts).  Returns how many it found.  Scans the dead-letter
        partition from its start: it holds only bad records, so it stays small."""
        if partition not in self._tps:
            raise StreamError(f"partition {partition} is not assigned to this consumer ({self.partitions})")
        seen: set[int] = set()
        reader = KafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="clustergnn-dlq-scan",
            allow_auto_create_topics=False,
        )
        try:
            parts = reader.partitions_for_topic(self.dead_letter_topic) or set()
            if parts:
                tp = TopicPartition(self.dead_letter_topic, partition % len(parts))
                reader.assign([tp])
                reader.seek_to_beginning(tp)
                end = reader.end_offsets([tp])[tp]
                while reader.position(tp) < end:
                    for rec in reader.poll(timeout_ms=1000).get(tp, []):
                        h = dict(rec.headers or [])
                        if (
                            h.get(H_TOPIC, b"").decode() == self.topic
                            and int(h.get(H_PARTITION, b"-1")) == partition
                            and int(h.get(H_OFFSET, b"-1")) >= from_offset
                        ):
                            seen.add(int(h[H_OFFSET]))
        finally:
            reader.close()
        self._dead_lettered[partition] = seen
        return len(seen)

    def _already_dead_lettered(self, partition: int, offset: int) -> bool:
        return offset in self._dead_lettered.get(partition, ())

    def caught_up(self, partition: int, since_s: float | None = None) -> bool:
        """True when this consumer has read up to the partition's high watermark as last reported by
        a fetch response (the broker's end of the log at the time it answered that fetch), and, with
        ``since_s``, that response arrived at or after ``since_s`` (time.time())."""
        if partition not in self._tps:
            raise StreamError(f"partition {partition} is not assigned to this consumer ({self.partitions})")
        if since_s is not None and self.last_response_s.get(partition, 0.0) < since_s:
            return False
        hw = self._consumer.highwater(self._tps[partition])
        return hw is not None and (self._position[partition] or 0) >= hw

    def caught_up_as_of(self, partition: int) -> float | None:
        """When the fetch was sent whose answer's high watermark this consumer has read up to (wall
        seconds): every record produced before then has been read.  None while not caught up with the
        last answer.  A silent broker sends no answers, so the moment stays where it was."""
        got = self.highwater_sent_s.get(partition)
        if got is None or got[0] <= 0.0:
            return None
        return got[0] if (self._position.get(partition) or 0) >= got[1] else None

    # ------------------------------------------------------------------ polling
    def poll(self, timeout_ms: int = 1000, max_records: int | None = None) -> list[PolledBatch]:
        """Fetch what is available (waiting up to ``timeout_ms``) and decode it; one entry per partition."""
        try:
            fetched = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        except kafka_errors.OffsetOutOfRangeError as exc:
            tp, offset = next(iter(exc.args[0].items())) if exc.args and isinstance(exc.args[0], dict) else (None, -1)
            p = tp.partition if tp is not None else self.partitions[0]
            raise OffsetsGoneError(self.topic, p, int(offset), *self._log_range(p)) from None
        self._check_log_bounds()
        out: list[PolledBatch] = []
        dead: list[DeadLetter] = []
        for tp in sorted(fetched, key=lambda t: t.partition):
            records = fetched[tp]
            if records:
                out.append(self._decode_partition(tp.partition, records, dead))
        if dead:
            self._send_dead_letters(dead, fetched)
        return out

    def _check_log_bounds(self) -> None:
        """A broker may answer a fetch past its end with no records rather than OFFSET_OUT_OF_RANGE (an
        in-memory broker restarted empty): a high watermark below what was already read, or a log start
        above the next offset to read, means records are gone."""
        for p, (start, hw) in self._log_bounds.items():
            pos = self._position.get(p)
            if pos is not None and (0 <= hw < pos or (start >= 0 and pos < start)):
                raise OffsetsGoneError(self.topic, p, pos, max(start, 0), hw)

    def _log_range(self, partition: int) -> tuple[int | None, int | None]:
        tp = self._tps[partition]
        try:
            return (
                int(self._consumer.beginning_offsets([tp], timeout_ms=5000)[tp]),
                int(self._consumer.end_offsets([tp], timeout_ms=5000)[tp]),
            )
        except Exception:  # noqa: BLE001 - the error names what it could find out
            return None, None

    def _decode_partition(self, partition: int, records: list[Any], dead: list[DeadLetter]) -> PolledBatch:
        valid: list[DecodedRecord] = []
        offsets: list[int] = []
        stamps: list[int] = []
        txns: list[TxnTag | None] = []
        n_dead = 0
        for rec in records:
            tag: TxnTag | None = None
            try:
                decoded = decode_record(rec.value, rec.key, partition, self.partition_map, self.feature_dim)
                raw = next((v for k, v in rec.headers or () if k == H_TXN), None)
                if raw is not None and not isinstance(decoded, DecodeError):
                    checked = _txn_tag(raw, partition)
                    if isinstance(checked, DecodeError):
                        decoded = checked
                    else:
                        tag = checked
            except Exception as exc:  # a decoder bug must not stop ingestion: the record is dead-lettered
                logger.exception("decoder failed on %s[%s]@%s", self.topic, partition, rec.offset)
                decoded = DecodeError(DecodeErrorCode.DECODE_FAILED, f"the decoder failed: {exc!r}")
            if isinstance(decoded, DecodeError):
                dead.append(DeadLetter(self.topic, partition, rec.offset, rec.timestamp, decoded))
                n_dead += 1
                continue
            if self.feature_dim is None and decoded.feature_dim is not None:
                self.feature_dim = decoded.feature_dim  # pinned: every later record must match
                logger.info(
                    "feature width pinned to %s by %s[%s]@%s", self.feature_dim, self.topic, partition, rec.offset
                )
            valid.append(decoded)
            offsets.append(rec.offset)
            stamps.append(rec.timestamp)
            txns.append(tag)
        next_offset = int(records[-1].offset) + 1
        self._position[partition] = next_offset
        return PolledBatch(
            partition=partition,
            batch=columns_to_batch(valid, self.feature_dim),
            first_offset=int(records[0].offset),
            next_offset=next_offset,
            record_offsets=np.asarray(offsets, dtype=np.int64),
            record_timestamps_ms=np.asarray(stamps, dtype=np.int64),
            record_sizes=np.asarray([len(v) for v in valid], dtype=np.int64),
            dead_letters=n_dead,
            record_txns=tuple(txns),
        )

    def was_dead_lettered(self, partition: int, offset: int) -> bool:
        """Whether the record at ``offset`` was dead-lettered in an earlier life (:meth:`recall_dead_letters`)."""
        return self._already_dead_lettered(partition, offset)

    # ------------------------------------------------------------------ dead letters
    def _send_dead_letters(self, dead: list[DeadLetter], fetched: Mapping[TopicPartition, list[Any]]) -> None:
        """Write dead letters and wait for them: a crash after this poll must not lose one."""
        self._dlq_producer()
        by_offset = {(tp.partition, r.offset): r for tp, recs in fetched.items() for r in recs}
        futures = []
        for d in dead:
            if self._already_dead_lettered(d.partition, d.offset):
                logger.info("%s[%s]@%s bad again after a rollback", d.topic, d.partition, d.offset)
                continue
            rec = by_offset[(d.partition, d.offset)]
            logger.warning("dead letter %s[%s]@%s: %s", d.topic, d.partition, d.offset, d.error)
            futures.append(
                self._dlq.send(
                    self.dead_letter_topic,
                    value=rec.value,
                    key=rec.key,
                    headers=d.headers(),
                    partition=d.partition % (self._dlq_partitions or 1),
                )
            )
        for f in futures:
            f.get(timeout=30)
        self.dead_letters_sent += len(futures)

    def _dlq_producer(self) -> KafkaProducer:
        with self._dlq_lock:  # a poller thread and the owner may both dead-letter
            return self._make_dlq_producer()

    def _make_dlq_producer(self) -> KafkaProducer:
        if self._dlq is None:
            ensure_topic(self._bootstrap, self.dead_letter_topic, self.partition_map.num_partitions, check_count=False)
            self._dlq = KafkaProducer(
                bootstrap_servers=self._bootstrap,
                client_id="clustergnn-dlq",
                acks="all",
                max_request_size=DEFAULT_MAX_PARTITION_FETCH_BYTES,
            )
            self._dlq_partitions = len(self._dlq.partitions_for(self.dead_letter_topic) or [0])
        return self._dlq

    def reject(
        self, partition: int, offset: int, timestamp_ms: int, batch: MutationBatch, code: DecodeErrorCode, message: str
    ) -> None:
        """Dead-letter a record that decoded but was rejected downstream (by the partition owner).

        The payload is the record's mutations re-encoded as Arrow; headers as for decode failures.
        """
        from streams.wire import encode_arrow

        if self._already_dead_lettered(partition, offset):
            logger.info("%s[%s]@%s rejected again after a rollback", self.topic, partition, offset)
            return
        producer = self._dlq_producer()
        d = DeadLetter(self.topic, partition, offset, timestamp_ms, DecodeError(code, message))
        logger.warning("dead letter %s[%s]@%s: %s", self.topic, partition, offset, d.error)
        producer.send(
            self.dead_letter_topic,
            value=encode_arrow(batch),
            key=None,
            headers=d.headers(),
            partition=partition % (self._dlq_partitions or 1),
        ).get(timeout=30)
        self.dead_letters_sent += 1

    def close(self) -> None:
        self._consumer.close()
        if self._dlq is not None:
            self._dlq.close()
            self._dlq = None

    def __enter__(self) -> MutationConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
