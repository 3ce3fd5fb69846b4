"""Write mutation batches to the mutation topic, each mutation in its owner's Kafka partition.

>>> with MutationProducer("127.0.0.1:9092", "mutations", HashPartitionMap(4)) as p:  # doctest: +SKIP
...     offsets = p.send(MutationBatch.add_edges([1, 2], [3, 4]))   # {3: 17, 0: 9}: last offset per partition

A batch is split by the owner of each mutation's routing vertex (``clustergnn.partition.split_by_owner``),
keeping batch order within each partition; the partition is set explicitly (``partition_map.owner``), never
left to Kafka's key hashing.  Arrow records hold up to ``max_mutations_per_record`` mutations and at
most about ``max_record_bytes`` bytes; JSON writes one record per mutation.  The producer is
idempotent (kafka-python's default), so retries neither duplicate nor reorder records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.producer.future import FutureRecordMetadata

from clustergnn.mutations import MutationBatch, feature_kinds_mask
from clustergnn.partition import PartitionMap, split_by_owner
from clustergnn.txn import TxnTag
from streams.errors import StreamError
from streams.topics import DEFAULT_MAX_MESSAGE_BYTES
from streams.wire import (
    ARROW_SCHEMA_VERSION,
    H_TXN,
    ArrowSchemaVersion,
    Compression,
    Format,
    encode_arrow_columns,
    encode_json_columns,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_MUTATIONS_PER_RECORD = 16_384
DEFAULT_MAX_RECORD_BYTES = 1_000_000
"""Below Kafka's default ``message.max.bytes`` (1 MiB), so records fit any broker's defaults."""
_RECORD_OVERHEAD_BYTES = 2048  # Arrow schema message, padding, EOS marker


@dataclass
class SendResult:
    """Records of one :meth:`MutationProducer.send_async` call, still in flight."""

    futures: dict[int, list[FutureRecordMetadata]] = field(default_factory=dict)
    records: int = 0
    mutations: int = 0
    value_bytes: int = 0

    def get(self, timeout_s: float | None = 30.0) -> dict[int, int]:
        """Wait for every record; the last offset written to each partition."""
        return {p: last for p, (_, last) in self.ranges(timeout_s).items()}

    def ranges(self, timeout_s: float | None = 30.0) -> dict[int, tuple[int, int]]:
        """Wait for every record; ``(first, last)`` offset written to each partition."""
        out: dict[int, tuple[int, int]] = {}
        for p, futs in self.futures.items():
            offs = [f.get(timeout=timeout_s).offset for f in futs]
            out[p] = (min(offs), max(offs))
        return out


@dataclass
class ProducerStats:
    records: int = 0
    mutations: int = 0
    value_bytes: int = 0


class MutationProducer:
    """Produce :class:`MutationBatch` es to ``topic``; ``format`` is ``"arrow"`` (default) or ``"json"``.

    Arrow records are written in ``schema_version`` 2 (``docs/wire-format.md``: rows without features
    take no feature bytes) unless told 1, for consumers older than version 2 during a rolling upgrade.
    ``kafka_config`` passes extra settings to kafka-python's ``KafkaProducer``.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partition_map: PartitionMap,
        format: Format = "arrow",
        *,
        max_mutations_per_record: int = DEFAULT_MAX_MUTATIONS_PER_RECORD,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        compression: Compression = "lz4",
        schema_version: ArrowSchemaVersion = ARROW_SCHEMA_VERSION,
        kafka_config: Mapping[str, Any] | None = None,
    ) -> None:
        if format not in ("arrow", "json"):
            raise StreamError(f"format must be 'arrow' or 'json', got {format!r}")
        if max_mutations_per_record < 1:
            raise StreamError(f"max_mutations_per_record must be >= 1, got {max_mutations_per_record}")
        if schema_version not in (1, 2):
            raise StreamError(f"schema_version must be 1 or 2, got {schema_version!r}")
        if max_record_bytes < 4 * _RECORD_OVERHEAD_BYTES:
            raise StreamError(f"max_record_bytes must be >= {4 * _RECORD_OVERHEAD_BYTES}, got {max_record_bytes}")
        self.topic = topic
        self.partition_map = partition_map
        self.format: Format = format
        self.max_mutations_per_record = max_mutations_per_record
        self.max_record_bytes = max_record_bytes
        self.max_txn_record_bytes = DEFAULT_MAX_MESSAGE_BYTES - _RECORD_OVERHEAD_BYTES
        self.compression: Compression = compression
        self.schema_version: ArrowSchemaVersion = schema_version
        self.stats = ProducerStats()
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": "clustergnn-producer",
            "acks": "all",
            # the broker drops a batch the client re-sends after a lost acknowledgement (KIP-98); with
            # acks=all and unlimited retries this is the default, said explicitly so a conflict raises
            "enable_idempotence": True,
            "linger_ms": 2,
            "max_request_size": max(max_record_bytes, DEFAULT_MAX_MESSAGE_BYTES) + 65536,
            "batch_size": 256 * 1024,
            # never create the mutation topic as a side effect of a metadata request: created that way it
            # gets the broker's default partition count, not one per owner (streams.topics.ensure_topics
            # creates it; an idle producer refreshing its metadata after a broker restart did, once)
            "allow_auto_create_topics": False,
        }
        config.update(kafka_config or {})
        self._producer = KafkaProducer(**config)
        self._checked = False

    # ------------------------------------------------------------------ API
    def send(
        self, batch: MutationBatch, timestamp_ms: int | None = None, timeout_s: float | None = 30.0
    ) -> dict[int, int]:
        """Write ``batch`` and wait until the broker has it; the last offset written per partition.

        The offsets let a client wait until its writes are reflected (read-your-writes).
        """
        return self.send_async(batch, timestamp_ms).get(timeout_s)

    def send_async(self, batch: MutationBatch, timestamp_ms: int | None = None) -> SendResult:
        """Hand ``batch`` to the client without waiting; ``.get()`` on the result waits."""
        self._check_topic()
        result = SendResult()
        for p, part in sorted(split_by_owner(batch, self.partition_map).items()):
            futs = result.futures.setdefault(p, [])
            for key, value, n in self._records(part):
                futs.append(
                    self._producer.send(self.topic, value=value, key=key, partition=p, timestamp_ms=timestamp_ms)
                )
                result.records += 1
                result.mutations += n
                result.value_bytes += len(value)
        self.stats.records += result.records
        self.stats.mutations += result.mutations
        self.stats.value_bytes += result.value_bytes
        return result

    def send_txn(
        self, batch: MutationBatch, txn_id: str, timestamp_ms: int | None = None, timeout_s: float | None = 30.0
    ) -> dict[int, int]:
        """Write ``batch`` as one transaction (``clustergnn/txn.py``): one Arrow record per partition it
        touches, each tagged with ``txn_id`` and the partitions; the owners apply all of it or none.

        ``StreamError`` (nothing written) when one partition's part would exceed ``max_txn_record_bytes``
        (the topic's ``max.message.bytes``): split the write.  Returns the offset per partition."""
        self._check_topic()
        parts = sorted(split_by_owner(batch, self.partition_map).items())
        tag = TxnTag(txn_id, tuple(p for p, _ in parts)).encode()
        records = []
        for p, part in parts:
            value = encode_arrow_columns(
                part.kind, part.src, part.dst, part.features.numpy(), self.compression, self.schema_version
            )
            if len(value) > self.max_txn_record_bytes:
                raise StreamError(
                    f"the part of this write for partition {p} is {len(value)} bytes as one record; a transaction "
                    f"writes one record per partition, at most {self.max_txn_record_bytes} bytes: split the write"
                )
            records.append((p, value, len(part)))
        futs = {
            p: self._producer.send(
                self.topic, value=value, partition=p, timestamp_ms=timestamp_ms, headers=[(H_TXN, tag)]
            )
            for p, value, _ in records
        }
        self.stats.records += len(records)
        self.stats.mutations += sum(n for _, _, n in records)
        self.stats.value_bytes += sum(len(v) for _, v, _ in records)
        return {p: int(f.get(timeout=timeout_s).offset) for p, f in futs.items()}

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float | None = 30.0) -> None:
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> MutationProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _check_topic(self) -> None:
        if self._checked:
            return
        parts = self._producer.partitions_for(self.topic)
        if not parts:
            raise StreamError(f"topic {self.topic!r} does not exist; create it first (streams.topics.ensure_topics)")
        if len(parts) != self.partition_map.num_partitions:
            raise StreamError(
                f"topic {self.topic!r} has {len(parts)} partitions, but the partition map has "
                f"{self.partition_map.num_partitions} owners"
            )
        self._checked = True

    def _records(self, part: MutationBatch) -> list[tuple[bytes | None, bytes, int]]:
        """``(key, value, n_mutations)`` records for the mutations of one partition, in order."""
        if self.format == "json":
            feats = part.features.numpy()
            return [(k, v, 1) for k, v in encode_json_columns(part.kind, part.src, part.dst, feats)]
        records = arrow_records(
            part,
            max_mutations=self.max_mutations_per_record,
            max_bytes=self.max_record_bytes,
            compression=self.compression,
            schema_version=self.schema_version,
        )
        return [(None, value, n) for value, n in records]


def arrow_records(
    part: MutationBatch,
    *,
    max_mutations: int = DEFAULT_MAX_MUTATIONS_PER_RECORD,
    max_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    compression: Compression = "lz4",
    schema_version: ArrowSchemaVersion = ARROW_SCHEMA_VERSION,
) -> list[tuple[bytes, int]]:
    """``(value, n_mutations)`` Arrow records holding ``part`` in order: at most ``max_mutations`` each,
    and at most about ``max_bytes`` (estimated before compression, so compressed records stay under it)."""
    feats = part.features.numpy()
    n = len(part)
    has = feature_kinds_mask(part.kind)
    # uncompressed bytes of each row: 17 of ids, then version 2: a 4-byte offset, a validity bit (counted
    # as a byte) and 4F on feature rows; version 1: 4F on every row of a record with feature rows (a
    # 1-wide null slot without)
    width = part.feature_dim if has.any() else 1
    if schema_version == 2:
        row_bytes = 22 + 4 * width * has.astype(np.int64)
    else:
        row_bytes = np.full(n, 17 + 4 * width, dtype=np.int64)
    ends = np.cumsum(row_bytes)
    budget = max_bytes - _RECORD_OVERHEAD_BYTES
    feat_start = np.concatenate([[0], np.cumsum(has)]) if has.any() else None
    out: list[tuple[bytes, int]] = []
    a = 0
    while a < n:
        fits = int(np.searchsorted(ends, (int(ends[a - 1]) if a else 0) + budget, side="right"))
        b = max(a + 1, min(n, a + max_mutations, fits))
        f = feats[feat_start[a] : feat_start[b]] if feat_start is not None else feats[:0]
        value = encode_arrow_columns(part.kind[a:b], part.src[a:b], part.dst[a:b], f, compression, schema_version)
        out.append((value, b - a))
        a = b
    return out
