"""The partition owner: a thin shell around :class:`clustergnn.partitioned.PartitionEngine`.

It moves bytes and nothing else: it reads its Kafka partition (``streams``), feeds records to the
engine one atomic record at a time, dead-letters the records the engine rejects, keeps deferred
mutations for the next round, and answers the round driver's steps (the shape of
:class:`clustergnn.rounds.RoundPartition`) and the gateway's reads.  The class is plain Python;
``ray.remote`` is applied where it is created (``actors/cluster.py``), so it can be driven in one
process too.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from clustergnn.config import Config
from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.mutations import MutationBatch
from clustergnn.partition import PartitionMap
from clustergnn.partitioned import LayerMsg, PartitionEngine, Published, RoundSummary, StructMsg
from clustergnn.rules import rules_from_dgl

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A record (or the deferred rest of one) waiting for a remote vertex to appear."""

    batch: MutationBatch
    offset: int
    timestamp_ms: int
    since_s: float


@dataclass(frozen=True)
class IngestReport:
    """What one partition's ``ingest``/``retry`` step did: what the round driver needs
    (:class:`clustergnn.rounds.IngestReport`: ``busy``, ``deferred``, ``struct_out``) and what the
    coordinator derives watermarks and visible time from."""

    partition: int
    busy: bool  # anything applied or still pending: the round must run its propagation steps
    mutations: int
    visible_offset: int  # every offset below is applied (or dead-lettered) once the round ends
    oldest_pending_ts_ms: int | None  # Kafka timestamp of the oldest record not yet applied
    caught_up_at_ms: int | None  # the poll started then found nothing more: all produced before is read
    dead_letters: int
    deferred: int = 0  # mutations this round's ingest deferred that still wait (the retry trigger)
    struct_out: dict[int, StructMsg] = field(default_factory=dict)


def _device(config: Config) -> str:
    want = config.cluster.device
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


class PartitionOwner:
    """Owner of partition ``partition``: its engine, its Kafka partition, its pending records."""

    def __init__(
        self,
        partition: int,
        config: Config,
        layers: list[torch.nn.Module],
        partition_map: PartitionMap,
        feature_dim: int,
        start_offset: int | None = None,
        activation=torch.relu,
    ) -> None:
        from streams.consumer import MutationConsumer  # Kafka stays in streams/; imported where used

        torch.set_num_threads(1)  # P owners share the machine's cores
        self.partition = partition
        self.config = config
        self.device = _device(config)
        rules = rules_from_dgl(list(layers), feature_dim)
        self.engine = PartitionEngine(
            rules,
            partition=partition,
            partition_map=partition_map,
            device=self.device,
            collaborative=config.cluster.collaborative,
            activation=activation,
            publish=not config.cluster.collaborative,
        )
        kc = config.kafka
        self.consumer = MutationConsumer(
            kc.bootstrap,
            kc.topic,
            [partition],
            partition_map,
            feature_dim=feature_dim,
            dead_letter_topic=kc.dlq,
            start_offsets=None if start_offset is None else {partition: start_offset},
            kafka_config={"fetch_max_wait_ms": kc.fetch_max_wait_ms},
        )
        self.pending: list[_Pending] = []
        self.next_offset = start_offset or 0
        self.pending_timeout_s = config.cluster.pending_timeout_s
        self.applied = 0
        self.dead_letters = 0
        self.round_id = 0
        self._open = False
        self._caught_up_at: int | None = None
        self._prev_poll_ms: int | None = None
        self._round_mutations = 0
        self._round_dead = 0
        self.last_round: RoundSummary | None = None

        self._t_rate = (time.time(), 0)
        log.info("partition %s up on %s (pid %s)", partition, self.device, os.getpid())

    # ------------------------------------------------------------------ round steps
    def ingest(self, round_id: int, max_records: int | None) -> IngestReport:
        """Step 1: poll, apply records atomically (deferring what waits for remote vertices).

        Polling here, once per round, rather than in a thread of its own: on a small machine a
        background poller's fetch loop costs the rounds more CPU than the wait it saves."""
        self.round_id = round_id
        t_poll_ms = int(time.time() * 1000)
        polled = self.consumer.poll(timeout_ms=self.config.kafka.poll_timeout_ms, max_records=max_records)
        # Read up to the high watermark of a fetch answered during this poll or the previous one: every
        # record produced before the previous poll started has been read.  (The fetch behind the
        # watermark may have been sent in the previous poll; so the earlier start time, not this one.)
        caught_up_at = self._prev_poll_ms if self.consumer.caught_up(self.partition) else None
        self._prev_poll_ms = t_poll_ms
        records: list[_Pending] = []
        n_dead = 0
        for pb in polled:
            n_dead += pb.dead_letters
            starts = np.concatenate([[0], np.cumsum(pb.record_sizes)])
            for i, off in enumerate(pb.record_offsets.tolist()):
                records.append(
                    _Pending(
                        pb.batch.slice(int(starts[i]), int(starts[i + 1])),
                        off,
                        int(pb.record_timestamps_ms[i]),
                        time.time(),
                    )
                )
            self.next_offset = pb.next_offset
        self._caught_up_at = caught_up_at
        todo = self.pending + records
        self.pending = []
        self._round_mutations, self._round_dead = 0, n_dead
        if todo:
            self._begin(round_id)
            self._feed(todo)
        return self._report()

    def retry(self, inbox: list[StructMsg]) -> IngestReport:
        """Step 1b (only when the round driver's retry trigger holds, ``clustergnn/rounds.py``): learn the
        vertices other partitions added this round, then retry the deferred mutations within the round."""
        if self._open:
            self.engine.begin_retry(inbox)
            todo, self.pending = self.pending, []
            self._feed(todo)
        return self._report()

    def _feed(self, todo: list[_Pending]) -> None:
        from streams.wire import DecodeErrorCode

        now = time.time()
        for rec in todo:
            try:
                deferred = self.engine.ingest(rec.batch)
            except (MutationError, UnknownVertexError) as exc:
                self.consumer.reject(
                    self.partition, rec.offset, rec.timestamp_ms, rec.batch, DecodeErrorCode.INVALID_MUTATION, str(exc)
                )
                self._round_dead += 1
                continue
            self._round_mutations += len(rec.batch) - len(deferred)
            self.applied += len(rec.batch) - len(deferred)
            if len(deferred):
                if now - rec.since_s > self.pending_timeout_s:
                    self.consumer.reject(
                        self.partition,
                        rec.offset,
                        rec.timestamp_ms,
                        deferred,
                        DecodeErrorCode.UNKNOWN_VERTEX,
                        f"edges from vertices unknown for {self.pending_timeout_s:.0f}s "
                        f"(first: {int(deferred.src[0])})",
                    )
                    self._round_dead += 1
                else:
                    self.pending.append(_Pending(deferred, rec.offset, rec.timestamp_ms, rec.since_s))

    def _report(self) -> IngestReport:
        return IngestReport(
            partition=self.partition,
            busy=self._open,
            mutations=self._round_mutations,
            visible_offset=min([p.offset for p in self.pending], default=self.next_offset),
            oldest_pending_ts_ms=min([p.timestamp_ms for p in self.pending], default=None),
            caught_up_at_ms=self._caught_up_at,
            dead_letters=self._round_dead,
            deferred=sum(len(p.batch) for p in self.pending),
            struct_out=self.engine.structure_outbox() if self._open else {},
        )

    def _begin(self, round_id: int) -> None:
        if not self._open:
            self.engine.begin_round(round_id)
            self._open = True

    def structure(self, round_id: int, inbox: list[StructMsg]) -> dict[int, LayerMsg]:
        """Step 2 (opens the round here if this partition had nothing to ingest)."""
        if not self._open:
            self._begin(round_id)
            self.engine.structure_outbox()
        return self.engine.structure(inbox)

    def layer(self, li: int, inbox: list[LayerMsg]) -> dict[int, LayerMsg]:
        """Steps 3..: one GNN layer (not the last: see ``finish_round``)."""
        return self.engine.layer(li, inbox)

    def finish_round(self, inbox: list[LayerMsg]) -> Published | None:
        """The last layer; closes the round; returns what changed in the final embeddings."""
        self.engine.layer(self.engine.num_layers - 1, inbox)
        self._open = False
        self.last_round = self.engine.end_round()
        self.dead_letters += self._round_dead
        return self.last_round.published

    def finish_round_then_ingest(
        self, inbox: list[LayerMsg], next_round: int, max_records: int | None
    ) -> tuple[Published | None, IngestReport]:
        """The last layer of this round, then the next round's ingest, in one call (one Ray step less
        per round; the round is closed before the next one starts, so nothing overlaps)."""
        published = self.finish_round(inbox)
        return published, self.ingest(next_round, max_records)

    # ------------------------------------------------------------------ reads
    def read(self, ids: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and versions of owned ``ids`` (``UnknownVertexError`` names an unknown id)."""
        emb = self.engine.embeddings(ids, layer)
        return emb.cpu().numpy(), self.engine.versions(ids)

    def status(self) -> dict:
        now = time.time()
        t0, n0 = self._t_rate
        rate = (self.applied - n0) / max(now - t0, 1e-9)
        self._t_rate = (now, self.applied)
        return {
            "partition": self.partition,
            "vertices": int(len(self.engine.owned_ids())),
            "ghosts": int(self.engine.ghost.sum()),
            "edges": int(self.engine.num_edges),
            "applied": self.applied,
            "pending": len(self.pending),
            "dead_letters": self.dead_letters,
            "next_offset": self.next_offset,
            "mutations_per_s": rate,
            "device": self.device,
            "pid": os.getpid(),
        }

    def ping(self) -> int:
        return self.partition

    def close(self) -> None:
        self.consumer.close()
