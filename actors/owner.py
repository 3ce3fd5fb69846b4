"""The partition owner: a thin shell around :class:`clustergnn.partitioned.PartitionEngine`.

It moves bytes and nothing else: it reads its Kafka partition (``streams``), feeds records to the
engine one atomic record at a time, dead-letters the records the engine rejects, keeps deferred
mutations for the next round, and answers the round driver's steps (the shape of
:class:`clustergnn.rounds.RoundPartition`) and the gateway's reads.  The class is plain Python;
``ray.remote`` is applied where it is created (``actors/cluster.py``), so it can be driven in one
process too.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clustergnn.config import Config
from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.memory import process_rss_bytes
from clustergnn.mutations import MutationBatch
from clustergnn.partition import PartitionMap
from clustergnn.partitioned import LayerMsg, PartitionEngine, Published, RoundSummary, StructMsg
from clustergnn.rules import LayerRule
from clustergnn.txn import (
    CommittedTxns,
    TxnDecision,
    TxnTag,
    TxnVote,
    adds_of,
    decides_alone,
    own_decision,
    pack_strings,
    unpack_strings,
)

if TYPE_CHECKING:
    from clustergnn.snapshot import Manifest, PartInfo

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """A record (or the deferred rest of one) waiting for a remote vertex to appear."""

    batch: MutationBatch
    offset: int
    timestamp_ms: int  # the record's Kafka timestamp (the producer's clock, for CreateTime topics)
    since_s: float  # wall time this owner read it (or restored it from a snapshot)
    txn: TxnTag | None = None  # a transaction's part: applied only on the coordinator's commit

    @property
    def ref_ms(self) -> int:
        """The latest moment the record can have been produced at: its timestamp, or the moment it was
        read if that is earlier (a producer whose clock runs ahead must not make the record wait for, or
        claim visibility of, a future the others have not reached)."""
        return min(self.timestamp_ms, int(self.since_s * 1000))


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
    # remote edge sources of every waiting record (deferred, or a transaction's part and what waits behind
    # it): the retry trigger calls this partition only if another one added or removed one of them
    waiting_on: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    has_ghosts: bool = True  # it mirrors another partition's vertex (no ghost anywhere: an isolated round)
    # this ingest's votes on transactions (clustergnn/txn.py): the ones it decided alone (``final``), then
    # the part it holds, if it holds one
    txn_votes: tuple[TxnVote, ...] = ()
    struct_out: dict[int, StructMsg] = field(default_factory=dict)


def _timed(step: str):
    """Record a round call's whole in-owner time as ``call:<step>`` (:class:`PhaseTimes`)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            with self.phases(f"call:{step}"):
                return fn(self, *args, **kwargs)

        return wrapper

    return deco


class PhaseTimes:
    """Wall time of each phase inside this owner's round calls, and of each call as a whole (``call:<step>``),
    recent values only: what a round's step costs inside the owner, to set against the coordinator's
    time for the same step (the rest is Ray's call, scheduling and the reply's serialisation;
    ``scripts/bench_cluster.py`` prints both).  Timing costs ~1 us a phase."""

    def __init__(self, keep: int = 2048) -> None:
        self.ms: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=keep))

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name].append((time.perf_counter() - t0) * 1000)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{phase: {n, p50, p99, mean}}`` in ms over the recent values."""
        out = {}
        for name, d in self.ms.items():
            a = np.fromiter(d, dtype=np.float64)
            if a.size:
                p50, p99 = np.percentile(a, [50, 99])
                out[name] = {"n": int(a.size), "p50": float(p50), "p99": float(p99), "mean": float(a.mean())}
        return out


OWNER_PREFIX = "owner."  # the owner's own arrays in a snapshot part, beside the engine's
PENDING_PREFIX = OWNER_PREFIX + "pending_"  # its deferred records (and CommittedTxns.PREFIX: applied transactions)


def pending_arrays(pending: list[_Pending]) -> dict[str, np.ndarray]:
    """The deferred records as columns: their mutations concatenated (kind/src/dst/features) plus one
    size, offset and Kafka timestamp per record, so :func:`pending_from_arrays` cuts them apart again."""
    batch = MutationBatch.concat([p.batch for p in pending]) if pending else MutationBatch.empty()
    cols = {
        "kind": batch.kind,
        "src": batch.src,
        "dst": batch.dst,
        "features": batch.features.detach().cpu().numpy().astype(np.float32, copy=False),
        "sizes": np.array([len(p.batch) for p in pending], dtype=np.int64),
        "offsets": np.array([p.offset for p in pending], dtype=np.int64),
        "timestamps_ms": np.array([p.timestamp_ms for p in pending], dtype=np.int64),
    }
    cols["txn_lens"], cols["txn_bytes"] = pack_strings([str(p.txn) if p.txn else None for p in pending])
    return {PENDING_PREFIX + k: np.ascontiguousarray(v).copy() for k, v in cols.items()}


def pending_from_arrays(arrays: Mapping[str, np.ndarray], now_s: float) -> list[_Pending]:
    """Inverse of :func:`pending_arrays`; each record's wait starts at ``now_s`` (the restore)."""
    c = {k[len(PENDING_PREFIX) :]: v for k, v in arrays.items() if k.startswith(PENDING_PREFIX)}
    if not c:
        return []
    batch = MutationBatch(c["kind"], c["src"], c["dst"], torch.from_numpy(c["features"]))
    starts = np.concatenate([[0], np.cumsum(c["sizes"])]).astype(np.int64)
    raw = unpack_strings(c.get("txn_lens", np.full(len(c["offsets"]), -1)), c.get("txn_bytes", np.zeros(0, np.uint8)))
    tags = [TxnTag.decode(t.encode()) if t is not None else None for t in raw]
    return [
        _Pending(batch.slice(int(starts[i]), int(starts[i + 1])), int(off), int(ts), now_s, tags[i])
        for i, (off, ts) in enumerate(zip(c["offsets"].tolist(), c["timestamps_ms"].tolist(), strict=True))
    ]


def _node_ip() -> str:
    """The address of the Ray node this process runs on ("" outside Ray: an owner built in a test)."""
    try:
        import ray

        return ray.util.get_node_ip_address() if ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 - informational only (Status); never a reason not to start
        return ""


def _process_start_s() -> float:
    """When this process started (epoch seconds, from /proc; now where there is none): the imports before
    ``__init__`` count too."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _device(config: Config) -> str:
    want = config.cluster.device
    if want == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return want


class PartitionOwner:
    """Owner of partition ``partition``: its engine, its Kafka partition, its pending records.

    ``restore_from``: a committed snapshot; the owner reads its own part (``snapshot.uri``), builds its
    engine with ``PartitionEngine.from_state``, restores its deferred records and seeks its consumer to
    the part's ``next_offset`` (``start_offset`` is then ignored).

    **Replay.**  Every owner starts in replay mode: deferred mutations never time out (a remote source
    may only be missing because its partition has not replayed it yet) until the coordinator calls
    :meth:`end_replay`, once every partition has caught up with its log; the timeout then counts from
    that moment.
    """

    def __init__(
        self,
        partition: int | None,
        config: Config,
        rules: list[LayerRule],
        partition_map: PartitionMap,
        feature_dim: int,
        start_offset: int | None = None,
        activation=torch.relu,
        restore_from: Manifest | None = None,
    ) -> None:
        t_init = time.time()
        torch.set_num_threads(1)  # P owners share the machine's cores
        self.partition = partition
        self._node_ip = _node_ip()
        if partition is None:  # a spare: its process is up and everything imported; :meth:`adopt` makes it an owner
            log.info("spare owner up (pid %s)", os.getpid())
            return
        self.config = config
        self.device = _device(config)
        kw = dict(
            partition=partition,
            partition_map=partition_map,
            device=self.device,
            collaborative=config.cluster.collaborative,
            activation=activation,
            publish=not config.cluster.collaborative,
            replica_finish=config.cluster.replica_finish,
        )
        self.feature_dim = feature_dim
        self._rules, self._engine_kw = rules, kw
        self._store = None
        self.consumer = None
        start_offset = self._load(restore_from, start_offset)
        t_consumer = time.time()
        self._partition_map = partition_map
        self.consumer = self._open_consumer(start_offset)
        self.next_offset = start_offset or 0
        t_recall = time.time()
        self._recall_dead_letters()
        self._reset_round_state()
        self._started_s = time.time()
        self.phases = PhaseTimes()
        # where an owner's start goes (Cluster.start logs it): the process and its imports, the engine
        # (empty or restored), the Kafka consumer, the dead-letter recall
        self.startup = {
            "process_s": t_init - _process_start_s(),
            "restore_s": t_consumer - t_init,
            "consumer_s": t_recall - t_consumer,
            "recall_s": self._started_s - t_recall,
        }
        log.info("partition %s up on %s (pid %s)", partition, self.device, os.getpid())

    def _open_consumer(self, start_offset: int | None):
        """This partition's consumer, reading from ``start_offset`` (None: where the log starts)."""
        from streams.consumer import MutationConsumer  # Kafka stays in streams/; imported where used

        kc = self.config.kafka
        return MutationConsumer(
            kc.bootstrap,
            kc.topic,
            [self.partition],
            self._partition_map,
            feature_dim=self.feature_dim,
            dead_letter_topic=kc.dlq,
            start_offsets=None if start_offset is None else {self.partition: start_offset},
            kafka_config={"fetch_max_wait_ms": kc.fetch_max_wait_ms},
            behind_fetch_wait_ms=kc.fetch_behind_wait_ms,
        )

    def adopt(self, *args: Any, **kwargs: Any) -> int:
        """Become the owner a spare stands by for (the constructor's arguments); returns the partition."""
        if self.partition is not None:
            raise RuntimeError(f"owner of partition {self.partition} is no spare")
        self.__init__(*args, **kwargs)
        return self.partition

    def _load(self, manifest: Manifest | None, start_offset: int | None) -> int | None:
        """A fresh engine: empty, or this partition's part of ``manifest`` (with its deferred records);
        returns the offset to read from next (the part's ``next_offset``; else ``start_offset``)."""
        self.pending = []
        window_ms = self.config.gateway.apply_dedup_window_s * 1000.0
        if manifest is None:
            self.engine = PartitionEngine(self._rules, **self._engine_kw)
            self.done = CommittedTxns(window_ms)
            return start_offset
        t0 = time.perf_counter()
        arrays, info = self.store().read_part(manifest, self.partition)
        self.pending = pending_from_arrays(arrays, time.time())
        self.done = CommittedTxns.from_arrays(arrays, window_ms)
        engine_arrays = {k: v for k, v in arrays.items() if not k.startswith(OWNER_PREFIX)}
        self.engine = PartitionEngine.from_state(self._rules, engine_arrays, info.meta["engine"], **self._engine_kw)
        log.info(
            "partition %s restored from snapshot %s (round %s) in %.2fs: %s vertices, %s pending records, "
            "replaying from offset %s",
            self.partition,
            manifest.snapshot_id,
            manifest.round_id,
            time.perf_counter() - t0,
            len(self.engine.owned_ids()),
            len(self.pending),
            info.next_offset,
        )
        return info.next_offset

    def _recall_dead_letters(self) -> None:
        """The replay from here meets records that were dead-lettered before (this owner's previous life):
        learn which, so each bad record stays in the dead-letter topic once.  From the oldest deferred
        record, which may have timed out into the dead-letter topic after the snapshot."""
        since = min([p.offset for p in self.pending], default=self.next_offset)
        try:
            n = self.consumer.recall_dead_letters(self.partition, since)
        except Exception:  # noqa: BLE001 - at worst a bad record is dead-lettered twice
            log.exception("partition %s: could not read the dead-letter topic; bad records may repeat", self.partition)
            return
        if n:
            log.info("partition %s: %s records from offset %s on were dead-lettered before", self.partition, n, since)

    def _reset_round_state(self) -> None:
        self.replaying = True  # see the class docstring
        self._snap: dict[str, Any] | None = None  # the part being written in the background
        self._snap_thread: threading.Thread | None = None
        self.applied = 0
        self.dead_letters = 0
        self.round_id = 0
        self._open = False
        self._caught_up_at: int | None = None
        self._round_mutations = 0
        self._round_dead = 0
        self._held: _Pending | None = None  # the transaction part everything behind waits for
        self._vote: TxnVote | None = None
        self._decisions: dict[str, TxnDecision] = {}
        self._final_votes: list[TxnVote] = []
        self.last_round: RoundSummary | None = None
        self._t_rate = (time.time(), 0)

    def restore(self, manifest: Manifest | None) -> int:
        """Roll back to ``manifest`` (None: the empty state at offset 0) after another owner died: drop the
        engine, any open round and deferred records, load the snapshot's part and read the partition again
        from its offset, in replay mode.  Returns the offset the replay starts at."""
        if self._snap_thread is not None:
            self._snap_thread.join(timeout=30)  # its part belongs to a snapshot that will never commit
        offset = self._load(manifest, None)
        self.consumer.seek(self.partition, offset or 0)
        self.next_offset = offset or 0
        self._recall_dead_letters()
        self._reset_round_state()
        log.info(
            "partition %s rolled back to %s: replaying from offset %s",
            self.partition,
            f"snapshot {manifest.snapshot_id}" if manifest else "the empty state",
            self.next_offset,
        )
        return self.next_offset

    # ------------------------------------------------------------------ round steps
    @_timed("ingest")
    def ingest(
        self, round_id: int, max_records: int | None, decisions: Mapping[str, TxnDecision] | None = None
    ) -> IngestReport:
        """Step 1: poll, apply records atomically (deferring what waits for remote vertices), up to a
        transaction's part whose decision has not come (``decisions``: the coordinator's, by id).

        Polling here, once per round, rather than in a thread of its own: on a small machine a
        background poller's fetch loop costs the rounds more CPU than the wait it saves.  While a
        transaction's part waits for its decision nothing is polled: what follows it cannot apply anyway."""
        self.round_id = round_id
        self._final_votes = []
        if decisions:
            self._decisions.update(decisions)
        held = self._held is not None and self._held.txn.txn_id not in self._decisions
        with self.phases("poll"):  # the fetch (up to poll_timeout_ms when nothing is there) and the decoding
            polled = (
                []
                if held
                else self.consumer.poll(timeout_ms=self.config.kafka.poll_timeout_ms, max_records=max_records)
            )
        # Visible time: when the fetch was sent whose answer's high watermark this partition has read up to
        # (that answer covers every record produced before the fetch left).  A silent broker sends no
        # answers, so the moment stays put and staleness grows.
        as_of = self.consumer.caught_up_as_of(self.partition)
        caught_up_at = int(as_of * 1000) if as_of is not None else None
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
                        pb.record_txns[i] if pb.record_txns else None,
                    )
                )
            self.next_offset = pb.next_offset
        self._caught_up_at = caught_up_at
        todo = self.pending + records
        self.pending = []
        self._round_mutations, self._round_dead = 0, n_dead
        if todo:  # the round opens with the first record applied: one that only holds a transaction is not busy
            with self.phases("apply"):
                self._feed(todo)
        with self.phases("report"):
            return self._report()

    @_timed("retry")
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

        self._held = self._vote = None
        for i, rec in enumerate(todo):
            if rec.txn is not None:
                decision = self._decisions.pop(rec.txn.txn_id, None)
                if decision is None:
                    vote = self._judge(rec)
                    if not decides_alone(vote):  # wait for the decision with everything behind it
                        self._held, self._vote = rec, vote
                        self.pending.extend(todo[i:])
                        return
                    vote = replace(vote, final=True)
                    self._final_votes.append(vote)
                    decision = own_decision(vote)
                if decision.commit and rec.txn.txn_id in self.done:  # a retry of one applied before: once is enough
                    continue
                if not decision.commit:
                    self.consumer.reject(
                        self.partition,
                        rec.offset,
                        rec.timestamp_ms,
                        rec.batch,
                        DecodeErrorCode(decision.reason_for(self.partition)),
                        f"transaction {rec.txn.txn_id} aborted: {decision.message}",
                    )
                    self._round_dead += 1
                    continue
            try:
                self._begin(self.round_id)
                deferred = self.engine.ingest(rec.batch)
            except (MutationError, UnknownVertexError) as exc:
                self.consumer.reject(
                    self.partition, rec.offset, rec.timestamp_ms, rec.batch, DecodeErrorCode.INVALID_MUTATION, str(exc)
                )
                self._round_dead += 1
                continue
            self._round_mutations += len(rec.batch) - len(deferred)
            self.applied += len(rec.batch) - len(deferred)
            if rec.txn is not None:
                self.done.add(rec.txn.txn_id, rec.timestamp_ms)
            if len(deferred):  # waits for its sources (Cluster._expire_pending decides when it may not)
                self.pending.append(_Pending(deferred, rec.offset, rec.timestamp_ms, rec.since_s))  # a plain record now

    def _judge(self, rec: _Pending) -> TxnVote:
        """This partition's vote on a transaction's part, against its state right now (nothing changes)."""
        from streams.wire import DecodeErrorCode

        assert rec.txn is not None
        vote = {
            "tag": rec.txn,
            "partition": self.partition,
            "round_id": self.round_id,
            "timestamp_ms": rec.ref_ms,
        }
        if rec.txn.txn_id in self.done:  # a copy of a transaction this partition applied: committed, then skipped
            return TxnVote(**vote)
        if self.consumer.was_dead_lettered(self.partition, rec.offset):  # aborted in an earlier life
            return TxnVote(**vote, error_code=DecodeErrorCode.TXN_ABORTED.value, error="aborted before a restart")
        behind = self.engine.behind_deferred(rec.batch)
        if len(behind):  # judged once the mutations it would wait behind have applied (votes come every round)
            return TxnVote(**vote, behind=tuple(int(x) for x in behind))
        try:
            unknown = self.engine.check(rec.batch)
        except (MutationError, UnknownVertexError) as exc:
            return TxnVote(**vote, error_code=DecodeErrorCode.INVALID_MUTATION.value, error=str(exc))
        return TxnVote(**vote, unknown=tuple(int(x) for x in unknown), adds=adds_of(rec.batch.kind, rec.batch.src))

    def expire_pending(self, before_ms: int, why: str) -> int:
        """Dead-letter (``unknown_vertex``, the detail saying ``why``) the unknown-source edges of the
        deferred records produced at or before ``before_ms`` (:attr:`_Pending.ref_ms`): the coordinator has
        the evidence that their sources will not come (``Cluster._expire_pending``).  Returns how many
        records went to the dead-letter topic."""
        if self.replaying:
            return 0
        keep, n = [], 0
        for rec in self.pending:
            if rec.ref_ms > before_ms or rec.txn is not None:  # a transaction's part waits for its decision
                keep.append(rec)
                continue
            n += self._drop_unknown_sources(rec, why)
            rest = rec.batch.subset(~self.engine.unknown_sources(rec.batch))
            if len(rest):  # mutations that only waited behind those edges: applied next round
                keep.append(_Pending(rest, rec.offset, rec.timestamp_ms, rec.since_s))
        self.pending = keep
        return n

    def _drop_unknown_sources(self, rec: _Pending, why: str) -> int:
        """Dead-letter the edges of ``rec`` whose source is unknown (``unknown_vertex``); 1 if any."""
        from streams.wire import DecodeErrorCode

        mask = self.engine.unknown_sources(rec.batch)
        if not mask.any():
            return 0
        dead = rec.batch.subset(mask)
        self.consumer.reject(
            self.partition,
            rec.offset,
            rec.timestamp_ms,
            dead,
            DecodeErrorCode.UNKNOWN_VERTEX,
            f"{why} (first: {int(dead.src[0])})",
        )
        return 1

    def _report(self) -> IngestReport:
        return IngestReport(
            partition=self.partition,
            busy=self._open,
            mutations=self._round_mutations,
            visible_offset=min([p.offset for p in self.pending], default=self.next_offset),
            oldest_pending_ts_ms=min([p.ref_ms for p in self.pending], default=None),
            caught_up_at_ms=self._caught_up_at,
            dead_letters=self._round_dead,
            deferred=sum(len(p.batch) for p in self.pending if p.txn is None),
            waiting_on=self._waiting_on(),
            has_ghosts=self.engine.has_ghosts(),
            struct_out=self.engine.structure_outbox() if self._open else {},
            txn_votes=(*self._final_votes, *((self._vote,) if self._vote is not None else ())),
        )

    def _waiting_on(self) -> np.ndarray:
        """:attr:`IngestReport.waiting_on`: the remote edge sources of every waiting record."""
        if not self.pending or self.engine.num_partitions == 1:
            return np.zeros(0, dtype=np.int64)
        from clustergnn.rounds import remote_sources

        kind = np.concatenate([p.batch.kind for p in self.pending])
        src = np.concatenate([p.batch.src for p in self.pending])
        return remote_sources(kind, src, self.partition, self.engine.pmap.owner)

    def _begin(self, round_id: int) -> None:
        if not self._open:
            self.engine.begin_round(round_id)
            self._open = True

    @_timed("structure")
    def structure(self, round_id: int, inbox: list[StructMsg]) -> dict[int, LayerMsg]:
        """Step 2 (opens the round here if this partition had nothing to ingest)."""
        if not self._open:
            self._begin(round_id)
            self.engine.structure_outbox()
        return self.engine.structure(inbox)

    def _join(self, li: int) -> None:
        """Open this round here at layer ``li``'s step: the round driver leaves a partition with no round
        open and nothing in its inbox out of the structure and layer steps (``clustergnn/rounds.py``); the
        steps it missed run now with empty inboxes, and must send nothing."""
        if self._open:
            return
        from clustergnn.rounds import check_isolated

        with self.phases("join"):
            self._begin(self.round_id)
            self.engine.structure_outbox()
            check_isolated(self.engine.structure([]), self.partition, "structure (joining late)")
            for k in range(li):
                check_isolated(self.engine.layer(k, []), self.partition, f"layer {k} (joining late)")

    @_timed("layer")
    def layer(self, li: int, inbox: list[LayerMsg]) -> dict[int, LayerMsg]:
        """Steps 3..: one GNN layer (not the last: see ``finish_round``); joins the round first if it was
        left out of the earlier steps."""
        self._join(li)
        with self.phases(f"layer{li}"):
            return self.engine.layer(li, inbox)

    @_timed("finish_round")
    def finish_round(self, inbox: list[LayerMsg]) -> Published | None:
        """The last layer; closes the round; returns what changed in the final embeddings.  A partition the
        round left out (no round open here) with nothing in ``inbox`` has nothing to close: None."""
        from clustergnn.rounds import carries

        self.dead_letters += self._round_dead
        if not self._open and not any(carries(m) for m in inbox):
            return None
        self._join(self.engine.num_layers - 1)
        with self.phases(f"layer{self.engine.num_layers - 1}"):
            self.engine.layer(self.engine.num_layers - 1, inbox)
        self._open = False
        with self.phases("end_round"):  # versions, the final rows to publish
            self.last_round = self.engine.end_round()
        return self.last_round.published

    @_timed("complete_round")
    def complete_round(self, round_id: int, inbox: list[StructMsg]) -> Published | None:
        """An isolated round's structure step, every layer and ``finish_round`` in one call (no partition
        holds a ghost, so every layer inbox is empty: ``clustergnn/rounds.py``); ``RuntimeError`` if a
        layer outbox is not empty after all."""
        from clustergnn.rounds import carries, check_isolated

        if not self._open and not any(carries(m) for m in inbox):  # nothing to do here: no round
            self.dead_letters += self._round_dead
            return None
        check_isolated(self.structure(round_id, inbox), self.partition, "structure")
        for li in range(self.engine.num_layers - 1):
            check_isolated(self.layer(li, []), self.partition, f"layer {li}")
        return self.finish_round([])

    @_timed("complete_round_then_ingest")
    def complete_round_then_ingest(
        self,
        inbox: list[StructMsg],
        next_round: int,
        max_records: int | None,
        decisions: Mapping[str, TxnDecision] | None = None,
    ) -> tuple[Published | None, IngestReport]:
        """:meth:`complete_round`, then the next round's ingest (as :meth:`finish_round_then_ingest`)."""
        published = self.complete_round(next_round - 1, inbox)
        return published, self.ingest(next_round, max_records, decisions)

    def profile(self) -> dict[str, dict[str, float]]:
        """Recent per-phase and per-call times inside this owner (:class:`PhaseTimes`); ``clear`` after."""
        return self.phases.summary()

    def clear_profile(self) -> None:
        self.phases.ms.clear()

    @_timed("finish_round_then_ingest")
    def finish_round_then_ingest(
        self,
        inbox: list[LayerMsg],
        next_round: int,
        max_records: int | None,
        decisions: Mapping[str, TxnDecision] | None = None,
    ) -> tuple[Published | None, IngestReport]:
        """The last layer of this round, then the next round's ingest, in one call (one Ray step less
        per round; the round is closed before the next one starts, so nothing overlaps)."""
        published = self.finish_round(inbox)
        return published, self.ingest(next_round, max_records, decisions)

    # ------------------------------------------------------------------ reads
    def read(self, ids: np.ndarray, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and versions of owned ``ids`` (``UnknownVertexError`` names an unknown id)."""
        emb = self.engine.embeddings(ids, layer)
        return emb.cpu().numpy(), self.engine.versions(ids)

    def status(self) -> dict:
        from clustergnn.memory import MEMORY_KINDS, total_bytes

        report = self.engine.memory_report()  # the arrays' sizes: a walk over ~50 entries, no copies
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
            "broker_silent_s": now - self.consumer.last_response_s.get(self.partition, self._started_s),
            "mutations_per_s": rate,
            "device": self.device,
            "pid": os.getpid(),
            "node": self._node_ip,
            "memory": {kind: total_bytes(report, kind) for kind in MEMORY_KINDS},
            "rss": process_rss_bytes(),
        }

    def ping(self) -> int:
        return self.partition

    def memory_entries(self) -> dict[str, tuple[str, int]]:
        """``{array: (kind, allocated bytes)}`` of this owner's engine (``Engine.memory_report``), the detail
        behind :meth:`status`'s totals (``scripts/bench_cluster_scale.py``)."""
        return {k: (e.kind, e.nbytes) for k, e in self.engine.memory_report().items()}

    def startup_timings(self) -> dict[str, float]:
        """Seconds spent in each part of this owner's (last) start: see the end of ``__init__``."""
        return dict(self.startup)

    def end_replay(self) -> None:
        """Every partition has caught up once: deferred mutations may be judged unknown again."""
        if self.replaying:
            self.replaying = False
            log.info("partition %s: replay over (%s records still deferred)", self.partition, len(self.pending))

    def final_embeddings(self, start: int = 0, count: int | None = None) -> Published:
        """Every owned vertex's final embedding and version, or in replica-finish serving its finish inputs
        (fills the coordinator's replica after a restore: ``PartitionEngine.publish_all``); ``start``,
        ``count``: those of the owned vertices in id order (a replica filled in bounded pieces)."""
        return self.engine.publish_all(start, count)

    def defer_load(self) -> bool:
        """Defer the last layer for the start's replay (``PartitionEngine.defer_last_layer``): rounds then
        publish nothing until :meth:`finish_load`.  False where there is nothing to defer."""
        return self.engine.defer_last_layer()

    def finish_load(self) -> int | None:
        """Finish the deferred last layer (``PartitionEngine.finish_deferred_layer``): the rows finished (0
        where nothing was deferred), or None while a round is open here (the coordinator asks again
        after the next round, which it runs without the next ingest fused into it)."""
        if self._open:
            return None
        with self.phases("finish_load"):
            return self.engine.finish_deferred_layer()

    # ------------------------------------------------------------------ snapshots
    def store(self):
        if self._store is None:
            from clustergnn.snapshot import SnapshotStore

            sc = self.config.snapshot
            if sc.uri is None:
                raise RuntimeError("snapshot.uri is not set: snapshots are off")
            self._store = SnapshotStore(sc.uri, retention=sc.retention)
        return self._store

    def snapshot(self, snapshot_id: int, round_id: int) -> dict[str, float]:
        """Take this partition's part of snapshot ``snapshot_id`` at the cut after round ``round_id``.

        Called between rounds with no round open (the coordinator's cut).  The export is a copy of the
        engine's state and the deferred records, taken now; the write runs in a background thread, so
        the next rounds do not wait for it (:meth:`snapshot_result` says when it is done)."""
        if self._open:
            raise RuntimeError(f"partition {self.partition}: snapshot {snapshot_id} asked while a round is open")
        if self._snap_thread is not None and self._snap_thread.is_alive():
            raise RuntimeError(f"partition {self.partition}: snapshot {self._snap['id']} is still being written")
        t0 = time.perf_counter()
        # export_state returns copies (index_select / fancy indexing), never views of the engine's tables,
        # so the background write cannot see later rounds' edits
        arrays, meta = self.engine.export_state()
        arrays.update(pending_arrays(self.pending))
        arrays.update(self.done.arrays())
        export_s = time.perf_counter() - t0
        nbytes = int(sum(a.nbytes for a in arrays.values()))
        part_meta = {"engine": meta, "pending_records": len(self.pending)}
        snap: dict[str, Any] = {"id": snapshot_id, "info": None, "error": None, "write_s": None, "bytes": nbytes}
        self._snap = snap
        next_offset = self.next_offset

        def write() -> None:
            t = time.perf_counter()
            try:
                snap["info"] = self.store().write_part(
                    snapshot_id, self.partition, arrays, round_id=round_id, next_offset=next_offset, meta=part_meta
                )
            except BaseException as exc:  # noqa: BLE001 - reported through snapshot_result
                snap["error"] = exc
            snap["write_s"] = time.perf_counter() - t

        self._snap_thread = threading.Thread(target=write, name=f"snapshot-{snapshot_id}-part-{self.partition}")
        self._snap_thread.start()
        return {"export_s": export_s, "bytes": float(nbytes)}

    def snapshot_result(self, snapshot_id: int) -> tuple[PartInfo, float] | None:
        """``(part info, write seconds)`` once this part of ``snapshot_id`` is written, None while it is
        being written; the write's exception if it failed."""
        snap = self._snap
        if snap is None or snap["id"] != snapshot_id:
            raise RuntimeError(f"partition {self.partition}: no snapshot {snapshot_id} was started here")
        if self._snap_thread is not None and self._snap_thread.is_alive():
            return None
        if snap["error"] is not None:
            raise snap["error"]
        return snap["info"], snap["write_s"]

    def close(self) -> None:
        if self._snap_thread is not None:
            self._snap_thread.join(timeout=30)  # a part half written is never used, but finish it if we can
        self.consumer.close()
