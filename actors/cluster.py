"""The coordinator: creates the partition owners on Ray, drives rounds, and serves reads.

Every Ray call of clustergnn lives in this module (and ``actors/ray_env.py``).  A :class:`Cluster`
implements :class:`clustergnn.serving.EmbeddingBackend`, so the gRPC gateway serves it directly.

Rounds are driven by the core's round driver (``clustergnn/rounds.py``: ``ingest`` on every owner, each
polling its Kafka partition; if any owner applied something, the retry when it is due, ``structure`` and
one step per GNN layer, with the owners' outboxes routed between steps); this module supplies only the
fan-out, one ``.remote()`` per owner and a ``ray.get``.  When a round ends, every record below each
owner's reported offset is applied through every layer on every partition: that is the *watermark*.
The *visible time* is the moment up to which every produced record is visible: per partition, when the
fetch was sent whose answer's high watermark the owner has read up to (or the timestamp of its oldest
record still waiting), minimum over partitions.  A read with ``max_staleness_ms = S`` waits until
``now - visible_time <= S``, probing the log's end itself when the reports do not show it (``_prove_fresh``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from clustergnn.config import LEAN_MALLOC_ENV, Config, ConfigError
from clustergnn.errors import UnknownVertexError, WriteRejectedError
from clustergnn.freshness import Freshness, settle
from clustergnn.models import activation as activation_fn
from clustergnn.models import feature_dim as model_feature_dim
from clustergnn.models import load_layers, model_digest
from clustergnn.mutations import MutationBatch
from clustergnn.partition import HashPartitionMap
from clustergnn.rounds import RoundOptions, RoundStats, Step, run_round
from clustergnn.serving import (
    ClusterStatus,
    InvalidReadError,
    ModelInfo,
    Offsets,
    PartitionStatus,
    PartitionUnavailableError,
    ReadResult,
    StalenessDeadlineError,
    resolve_read,
)
from clustergnn.txn import TxnBook, TxnDecision

log = logging.getLogger(__name__)
PENDING_GRACE_MS = 250
"""An edge whose source no partition had added this long after the edge's timestamp is dead-lettered
(``Cluster._expire_pending``): room for producers' clocks and for a source added in the same produce call."""
IDLE_AFTER_ROUNDS = 2
"""Rounds in a row with nothing to do before the cluster goes idle (``Cluster._idle``)."""
IDLE_PING_S = 1.0
"""How often an idle cluster pings its owners: rounds are how a crashed owner is noticed (a RayActorError),
and an idle cluster runs none, so a ping every this long stands in for them."""
IDLE_WAIT_MS = 20
"""The idle long poll's broker wait.  Each answer proves every record produced before its fetch was sent
is applied (``streams.probe``), so an idle cluster's own proof is 20-45 ms old; reads and status calls
that want it younger refresh it (``IDLE_STALE_MS``).  It bounds how long new data waits to be noticed (at
once on Apache Kafka, within about half the wait on tansu, which checks its log at half-wait intervals)
and sets what an idle cluster costs: one wake-up of the driver per turn, about 0.2-0.3 ms of CPU on a
small VM.  Measured (bench_idle --wait-ms, P = 4, no reads; docs/gateway.md): 5 ms costs the cluster
0.10-0.11 cores, 10 ms 0.08-0.10, 20 ms 0.08 and 50 ms 0.07-0.08, while new data waits about 3, 5, 10 and
25 ms on tansu to be noticed."""
IDLE_STALE_MS = 10.0
"""A read of an idle cluster whose freshness was last proven longer ago than this proves it first: one
fetch of every partition's end (``Cluster._prove_fresh``, about 1.3 ms on tansu), shared by every read that
comes meanwhile and good for the reads of the next ``IDLE_STALE_MS``.  So no read of an idle cluster is
served staler than this, at most one probe runs per this long however many reads come, and a busy
cluster's unbounded reads never wait for one."""
PROBE_AFTER_S = 0.02
"""A read whose staleness bound the owners' reports do not meet probes the log's end at once, then again
after each such wait (about a round) until its deadline."""


def owner_lost() -> tuple[type[BaseException], ...]:
    """What Ray raises when an owner is gone: the actor's death, or a reply of it lost with its node (a
    round's large reply is stored on the owner's node; if the node dies before the coordinator fetched it,
    ``ray.get`` raises ``ObjectLostError``, not ``RayActorError``: seen when a node's link was cut)."""
    import ray

    return (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)


DEFER_LOAD = True
"""Eager serving defers the last layer through a start's replay (the bulk load of a new cluster, or the
log after a snapshot; no read is served until it is over): owners run it as collaborative serving does
(``PartitionEngine.defer_last_layer``) and publish nothing, and once every partition has caught up they
finish it for every owned row a chunk at a time (``finish_deferred_layer``) and the coordinator fills
its replica from them in pieces of ``REPLICA_FILL_ROWS``.  Each load round then neither runs the last
hop (about every owned row of every owner) nor ships every changed final row to the coordinator
(docs/distributed.md, "The same graph through the cluster").  A snapshot that falls due during the replay
ends the deferral first (a deferred engine's aggregates are stale): the rest of the replay runs eager."""
REPLICA_FILL_ROWS = 1 << 17
"""Rows per call when the coordinator fills its replica from the owners (``Cluster._fill_replica``): a
piece of 131,072 final rows of width 47 is 25 MB, well inside ``INLINE_REPLY_BYTES``."""


INLINE_REPLY_BYTES = 64 * 1024 * 1024
"""Owners return replies up to this size inside the call's reply (Ray's ``max_direct_call_object_size``,
default 100 KiB), not through Ray's object store.  A round's layer outboxes and published embeddings are
often larger than 100 KiB; through the object store, a reply from an owner on another node is fetched by
the coordinator with Ray's object transfer, which doubled the layer steps (P = 4, 20k mutations/s, owners
on namespaced nodes: layer steps 17 + 54 ms p50 vs 9 + 30 ms inline, visible latency p50 257 vs 151 ms;
scripts/bench_cluster.py --nodes).  Larger replies (a whole partition's embeddings at a start) still go
through the object store."""


def _owner_env(num_cpus: float, malloc: str = "default") -> dict:
    """Environment of an owner's process: its numba kernels get as many threads as the actor has CPUs
    (at least one).  Set before the process imports numba, which sizes its thread pool then; a pool
    larger than the threads used leaves idle workers that measurably slow rounds (served staleness p50
    139 ms vs 55 ms in the demo with four owners on two cores).  And ``INLINE_REPLY_BYTES``, and with
    ``cluster.owner_malloc = lean`` glibc's ``LEAN_MALLOC_ENV`` (Ray starts an actor with a runtime
    environment in a process of its own, so glibc reads these when it starts)."""
    env = {
        "NUMBA_NUM_THREADS": str(max(1, int(num_cpus))),
        "RAY_max_direct_call_object_size": str(INLINE_REPLY_BYTES),
    }
    if malloc == "lean":
        env |= LEAN_MALLOC_ENV
    return {"env_vars": env}


class Cluster:
    """P partition owners on Ray plus the round loop; an ``EmbeddingBackend`` for the gateway."""

    def __init__(self, config: Config, layers: list[torch.nn.Module] | None = None) -> None:
        self.config = config
        self.layers = layers if layers is not None else load_layers(config.model)
        self.feature_dim = model_feature_dim(self.layers)
        self.P = config.cluster.partitions
        self.pmap = self._partition_map(config)
        self.owners: list = []
        self.freshness = Freshness(self.P)  # watermarks and visible times; guarded by self._cond
        self.round_id = 0
        self.stats = RoundStats()
        self.healthy = False
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_reports: list | None = None  # the next round's ingest, done in this round's last step
        self._producer = None
        self._probe = None  # streams.probe.LogEndProbe, made by the first read that needs it
        self._watcher = None  # another, for the idle long poll (Cluster._idle)
        self._last_reports: list | None = None
        self.idle_periods = 0  # times the rounds stopped for the idle long poll
        self.idle_long_poll = config.cluster.idle_long_poll  # may be switched on a running cluster (bench_idle)
        self._idling = False  # rounds are stopped for the idle long poll (Cluster._idle)
        self._owns_ray = False
        from clustergnn.rules import rules_from_dgl

        # the owners get the rules, not the DGL layers: an owner process then never imports DGL
        self.rules = rules = rules_from_dgl(self.layers, self.feature_dim)
        self.num_layers = len(rules)
        self.dims = [self.feature_dim] + [r.out_dim for r in rules]
        self.model_digest = model_digest(self.layers, config.model)
        self.model_info = ModelInfo([type(layer).__name__ for layer in self.layers], list(self.dims), self.model_digest)
        self._activation = activation_fn(config.model.activation)
        # final embeddings served from this process, updated once per round (no Ray call per read; in
        # replica-finish serving the replica finishes the asked rows from published aggregates);
        # collaborative mode does not materialise the last layer, so its reads go to the owners
        self.replica = None if config.cluster.collaborative else self._new_replica()
        self.published_bytes = 0  # what owners published to the replica, all rounds
        # snapshots (docs/distributed.md, "Durability"): the store, the snapshot restored at start, the
        # one being written, the last committed one
        self.snapshots = None
        self.restored = None  # the Manifest this cluster started from, or None
        self.replaying = True  # until every partition has caught up with its log once
        self._caught_up: set[int] = set()
        self._load_deferred = False  # owners defer the last layer through the start's replay (DEFER_LOAD)
        self._load_finish_due = False  # ... and have caught up: finish it after the next round
        self._snap_inflight: dict | None = None
        self._snap_checked_s = 0.0
        self._snap_last_s = time.monotonic()
        self._snap_last_mutations = 0
        self._snap_last_watermark: dict[int, int] | None = None
        self.last_snapshot: dict | None = None
        self.snapshot_failures = 0
        # owner crash recovery (docs/distributed.md, "Recovery"): the one in progress, the finished ones
        self.recovery: dict | None = None
        self.recoveries: list[dict] = []
        self._owner_gen = [0] * self.P
        self._owner_status: list[dict | None] = [None] * self.P
        self._started = False
        self._spares: list = []  # idle owner processes (cluster.spare_owners), oldest first, adopted by recoveries
        self._spares_made = 0
        self._pack_node: str | None = None  # cluster.placement = pack: the node owners go to (Cluster._placement)
        # transactional writes (clustergnn/txn.py): votes in, decisions out to each holder's next ingest
        self.txns = TxnBook(self.P, grace_ms=PENDING_GRACE_MS, backstop_s=config.cluster.pending_timeout_s)
        # the calm clock (``_tick_calm``): seconds during which every partition had read its log to the end.
        # The backstops (``cluster.pending_timeout_s``) run on it, not on the wall clock, so a partition that
        # is merely behind under overload never gets valid input dead-lettered or a transaction aborted
        self.calm_s = 0.0
        self._calm_mark: float | None = None
        self._pending_seen: dict[int, tuple[int, float]] = {}  # partition -> (oldest pending ref ms, calm_s then)
        self._txn_out: list[dict[str, TxnDecision]] = [{} for _ in range(self.P)]
        self._txn_lock = threading.Lock()  # one transaction written at a time: the same order in every partition

    def _new_replica(self):
        from clustergnn.replica import make_replica

        return make_replica(self.rules[-1], self.config.cluster.replica_finish)

    @staticmethod
    def _partition_map(config: Config):
        """``v mod P``, or METIS on the configured dataset's initial graph (vertices added later: hash)."""
        P = config.cluster.partitions
        if config.cluster.partitioner == "hash" or P == 1:
            return HashPartitionMap(P)
        if not config.graph.dataset:
            raise ValueError("cluster.partitioner = 'metis' partitions the initial graph: set graph.dataset")
        from clustergnn.datasets import load
        from clustergnn.partition import metis_partition_map

        ds = load(config.graph.dataset)
        pmap = metis_partition_map(ds.initial_vertices, ds.initial_src, ds.initial_dst, P)
        log.info("METIS partition map for %s: %s vertices", config.graph.dataset, len(ds.initial_vertices))
        return pmap

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Cluster:
        import ray

        from actors.ray_env import init_ray
        from streams.topics import ensure_topics

        kc, cc = self.config.kafka, self.config.cluster
        t0 = time.monotonic()
        manifest = self._find_snapshot()  # first: a snapshot that does not fit changes nothing
        if manifest is not None:
            log.info("snapshot %s found and verified in %.2fs", manifest.snapshot_id, time.monotonic() - t0)
        self.topic_created = False
        if kc.create_topics:
            self.topic_created = ensure_topics(kc.bootstrap, kc.topic, self.P, dead_letter_topic=kc.dlq).created
        self._owns_ray = init_ray(cc)
        t_ray = time.monotonic()
        self.owners = [self._spawn_owner(p, manifest) for p in range(self.P)]
        ray.get([o.ping.remote() for o in self.owners], timeout=120)
        t = ray.get([o.startup_timings.remote() for o in self.owners], timeout=30)
        log.info(
            "owners up %.1fs after Ray; slowest owner's start: %s",
            time.monotonic() - t_ray,
            ", ".join(f"{k.removesuffix('_s')} {max(x[k] for x in t):.2f}s" for k in t[0]),
        )
        if cc.spare_owners:  # one now (in the background); the rest once the start's replay is over
            self._spares.append(self._spawn_owner(None, None))
        if DEFER_LOAD and self.replica is not None:  # eager serving: the replay defers the last layer
            self._load_deferred = any(ray.get([o.defer_load.remote() for o in self.owners], timeout=60))
        if manifest is not None:
            self.restored = manifest
            self.round_id = manifest.round_id
            if self.replica is not None and not self._load_deferred:  # else filled once the replay is over
                self.replica = self._fill_replica()
            log.info(
                "resumed from snapshot %s (round %s); replaying from offsets %s",
                manifest.snapshot_id,
                manifest.round_id,
                manifest.next_offsets,
            )
        self._snap_last_s = time.monotonic()  # the next snapshot one interval from now, not during the start
        # NOT_SERVING until every partition has caught up with its log once (the replay after a restart;
        # on an empty log, the first two rounds): until then the state is older than what was served before
        self.healthy = False
        self._started = True
        self._thread = threading.Thread(target=self._run, name="clustergnn-rounds", daemon=True)
        self._thread.start()
        log.info("cluster up: %s partitions, model %s", self.P, [type(layer).__name__ for layer in self.layers])
        return self

    def _owner_args(self, p: int | None, manifest) -> tuple[tuple, dict]:
        return (p, self.config, self.rules, self.pmap, self.feature_dim, None, self._activation), {
            "restore_from": manifest
        }

    def _spawn_owner(self, p: int | None, manifest):
        """A new Ray actor owning partition ``p``, empty or restored from ``manifest`` (``p`` None: a spare,
        which :meth:`_recover` makes an owner with ``adopt``).  ``max_restarts=0``: Ray does not restart it
        behind the coordinator's back; the coordinator recovers (:meth:`_recover`)."""
        import ray

        from actors.owner import PartitionOwner

        cc = self.config.cluster
        if p is None:
            self._spares_made += 1
            name = f"clustergnn-owner-spare-{self._spares_made}"
        else:
            gen = self._owner_gen[p]
            self._owner_gen[p] += 1
            name = f"clustergnn-owner-{p}" + (f"-g{gen}" if gen else "")
        args, kwargs = self._owner_args(p, manifest)
        return (
            ray.remote(PartitionOwner)
            .options(
                num_cpus=cc.actor_num_cpus,
                num_gpus=cc.actor_num_gpus,
                name=name,
                max_restarts=0,
                runtime_env=_owner_env(cc.actor_num_cpus, cc.owner_malloc),
                scheduling_strategy=self._placement(p),
            )
            .remote(*args, **kwargs)
        )

    def _placement(self, p: int | None):
        """Ray's scheduling strategy for partition ``p``'s owner (None: a spare), from ``cluster.placement``
        (docs/distributed.md, "Several nodes").  ``pack`` and ``pinned`` are soft node affinities, asked
        anew at every spawn among the nodes alive then: an owner re-created after its node was lost lands
        on another one."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        cc = self.config.cluster
        if cc.placement == "spread" or (cc.placement == "pinned" and p is None):
            return "SPREAD"
        nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
        if cc.placement == "pinned":
            want = cc.placement_nodes[p]
            node = next((n for n in nodes if n["NodeManagerAddress"] == want), None)
            if node is None:
                log.warning(
                    "partition %s is pinned to node %s, which is not alive (alive: %s): placing it elsewhere",
                    p,
                    want,
                    sorted(n["NodeManagerAddress"] for n in nodes),
                )
                return "SPREAD"
        else:  # pack: the node with the most CPUs (ties: the lowest address), the same while it lives
            if not nodes:
                return "DEFAULT"
            node = next((n for n in nodes if n["NodeID"] == self._pack_node), None) or min(
                nodes, key=lambda n: (-n["Resources"]["CPU"], n["NodeManagerAddress"])
            )
            self._pack_node = node["NodeID"]
        return NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)

    def _find_snapshot(self):
        """The newest complete, verified snapshot to resume from (None: snapshots off, or none yet);
        ``SnapshotError`` saying what differs when it was taken by another model, P or topic."""
        sc = self.config.snapshot
        if sc.uri is None:
            return None
        from clustergnn.snapshot import SnapshotError, SnapshotStore

        self.snapshots = SnapshotStore(sc.uri, retention=sc.retention)
        manifest = self.snapshots.latest(verify=True)
        if manifest is None:
            log.info("no complete snapshot in %r: starting empty", self.snapshots)
            return None
        meta = manifest.meta
        want = {"model_digest": self.model_digest, "partitions": self.P, "topic": self.config.kafka.topic}
        got = {"model_digest": meta.get("model_digest"), "partitions": manifest.partitions, "topic": meta.get("topic")}
        differ = [f"{k}: snapshot has {got[k]!r}, this config {want[k]!r}" for k in want if got[k] != want[k]]
        if differ:
            raise SnapshotError(
                f"cannot resume from snapshot {manifest.snapshot_id} in {self.snapshots!r}: it was taken with "
                f"another {'/'.join(k.split(':')[0] for k in differ)} ({'; '.join(differ)}). Use the model and "
                "config it was taken with, or point snapshot.uri at an empty location to start afresh"
            )
        return manifest

    def stop(self) -> None:
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._producer is not None:
            self._producer.close()
            self._producer = None
        for probe in (self._probe, self._watcher):
            if probe is not None:
                probe.close()
        self._probe = self._watcher = None
        for o in self.owners:
            try:
                ray.get(o.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - a dead owner has nothing to close
                pass
            ray.kill(o)
        for spare in self._spares:
            ray.kill(spare)
        self._spares = []
        self.owners = []
        self.healthy = False
        self._started = False
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ rounds
    def _run(self) -> None:

        window_s = self.config.cluster.hub_window_ms / 1000.0
        quiet = 0  # rounds in a row that found nothing to do
        while not self._stop.is_set():
            try:
                t = time.perf_counter()
                try:
                    busy = self.run_round()
                    self._poll_snapshot()
                    quiet = quiet + 1 if self._quiet(busy) else 0
                    if quiet >= IDLE_AFTER_ROUNDS and self.idle_long_poll:
                        self._idle()
                        quiet = 0
                except owner_lost() as exc:  # an owner died (or its node): roll back and replay
                    if self._stop.is_set():
                        return
                    self._recover(exc)
                    continue
                if window_s and busy:  # hold the next round open: more changes coalesce per vertex
                    self._stop.wait(max(0.0, window_s - (time.perf_counter() - t)))
            except Exception as exc:  # a step failed, or a recovery did: stop serving, say why
                log.exception("round %s failed; the cluster is unavailable until restarted", self.round_id)
                with self._cond:
                    self.error = exc
                    self.healthy = False
                    self._cond.notify_all()
                return

    # ------------------------------------------------------------------ idle
    def _quiet(self, busy: bool) -> bool:
        """The round applied nothing, nothing waits, every owner is caught up: rounds would only poll."""
        reps = self._last_reports
        return (
            not busy
            and reps is not None
            and not self.replaying
            and self.recovery is None
            and self._snap_inflight is None  # its commit is polled between rounds
            and not self._load_finish_due
            and all(r.oldest_pending_ts_ms is None and r.caught_up_at_ms is not None and not r.busy for r in reps)
            and (self._next_reports is None or not any(r.busy for r in self._next_reports))
        )

    def _idle(self) -> None:
        """Rounds stop while the log has nothing new: one long poll of every partition's end from the driver
        (``LogEndProbe.watch``) instead of every owner polling in back-to-back rounds.  Each answer whose high
        watermarks are applied proves the cluster fresh up to the moment its fetch was sent
        (``Freshness.confirm``); reads that want a younger proof make one themselves (``IDLE_STALE_MS``).  New
        data, a silent broker, a stop, or a snapshot falling due returns to rounds at once.  Every
        ``IDLE_PING_S`` the owners are pinged: a dead one raises ``RayActorError`` here, as a round would
        (``_run`` recovers)."""
        import ray

        if self._watcher is None:
            from streams.probe import LogEndProbe

            self._watcher = LogEndProbe(self.config.kafka.bootstrap, self.config.kafka.topic, self.P)
        self.idle_periods += 1
        self._idling = True  # unbounded reads prove freshness themselves when it got old (Cluster.read)
        try:
            ping_at = time.monotonic() + IDLE_PING_S
            while self.idle_long_poll and not self._stop.is_set() and not self._snapshot_due():
                if time.monotonic() >= ping_at:
                    try:
                        ray.get([o.ping.remote() for o in self.owners], timeout=10)
                    except ray.exceptions.GetTimeoutError:  # a busy owner: rounds will tell
                        return
                    ping_at = time.monotonic() + IDLE_PING_S
                with self._cond:
                    applied = self.freshness.watermark
                wait_ms = IDLE_WAIT_MS
                try:
                    res = self._watcher.watch(applied, wait_ms, timeout_s=max(2.0, 4 * wait_ms / 1000))
                except Exception as exc:  # noqa: BLE001 - back to rounds, which see (and report) what is wrong
                    log.warning("idle watch failed: %r", exc)
                    return
                if res is None:
                    return
                with self._cond:
                    fresh = self.freshness.confirm(res.high_watermarks, res.sent_s * 1000.0)
                    self._cond.notify_all()
                if not fresh:
                    return
        finally:
            self._idling = False

    # ------------------------------------------------------------------ recovery
    def _recover(self, exc: BaseException, attempts: int = 5) -> None:
        """An owner died (docs/distributed.md, "Recovery").  Every owner rolls back to the newest complete
        snapshot (the empty state at offset 0 without one): the dead ones are re-created from it, the
        survivors reload it in place, and all replay their partitions from its offsets.  A rollback of
        all, not of the dead one alone: the crash may come mid-round, when the survivors hold a round's
        half-propagated edits, and a cut is the one state all partitions agree on.

        Until every partition has replayed past the watermark it had, the cluster is NOT_SERVING, the
        watermark and the replica stay as they were (final-layer reads are served from the replica, at
        that watermark, with their staleness growing honestly) and reads that need an owner fail with
        UNAVAILABLE; :meth:`run_round` ends the recovery."""
        import ray

        with self._cond:
            if self.recovery is None:
                self.recovery = {
                    "since_s": time.time(),
                    "t0": time.monotonic(),
                    "target": self.freshness.watermark,
                    "dead": set(),
                    "attempts": 0,
                    "snapshot_id": None,
                }
                log.warning("an owner died after round %s (%s): recovering", self.round_id, exc)
            rec = self.recovery
            self.healthy = False
            self._cond.notify_all()
        self._next_reports = None
        self._snap_inflight = None  # a snapshot being written when an owner died never commits
        with self._cond:  # every owner votes again from its snapshot; decisions already taken are resent
            self.txns.reset()
            self._txn_out = [{} for _ in range(self.P)]
        last: BaseException = exc
        for _ in range(attempts):
            rec["attempts"] += 1
            try:
                dead = self._dead_owners()
                rec["dead"] |= set(dead)
                self._drop_dead_spares()
                manifest = self.snapshots.latest(verify=True) if self.snapshots is not None else None
                rec["snapshot_id"] = manifest.snapshot_id if manifest is not None else None
                calls = []
                for p in dead:
                    ray.kill(self.owners[p], no_restart=True)
                    spare = self._spares.pop(0) if self._spares else None
                    if spare is not None:  # an owner process already up: no process start, no imports
                        self.owners[p] = spare
                        args, kwargs = self._owner_args(p, manifest)
                        calls.append(spare.adopt.remote(*args, **kwargs))
                    else:
                        self.owners[p] = self._spawn_owner(p, manifest)
                        calls.append(self.owners[p].ping.remote())
                calls += [o.restore.remote(manifest) for p, o in enumerate(self.owners) if p not in dead]
                ray.get(calls, timeout=120)
                rec["restored_s"] = time.monotonic() - rec["t0"]
            except owner_lost() as again:  # another owner died meanwhile: start over
                last = again
                log.warning("recovery attempt %s: an owner died again (%s)", rec["attempts"], again)
                continue
            self.replaying = True
            self._caught_up = set()
            if manifest is not None and self.restored is None:
                self.restored = manifest
            log.warning(
                "partitions %s re-created, all %s owners rolled back to %s; replaying to offsets %s",
                sorted(dead),
                self.P,
                f"snapshot {manifest.snapshot_id} (round {manifest.round_id})" if manifest else "the empty state",
                rec["target"],
            )
            return
        raise RuntimeError(f"recovery failed after {attempts} attempts: {last!r}")

    def _drop_dead_spares(self) -> None:
        """Forget the spares that died (a lost node takes its spares with it), so a recovery does not adopt
        one; a spare still starting (no answer within the wait) is kept."""
        import ray

        if not self._spares:
            return
        refs = [s.ping.remote() for s in self._spares]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0.5)
        live = []
        for spare, ref in zip(self._spares, refs, strict=True):
            if ref in ready:
                try:
                    ray.get(ref)
                except owner_lost():
                    log.warning("a spare owner died (its node was lost?): not adopting it")
                    continue
            live.append(spare)
        self._spares = live

    def _dead_owners(self) -> list[int]:
        """Partitions whose owner does not answer a ping (dead, or hung for 30 s)."""
        import ray

        refs = [o.ping.remote() for o in self.owners]
        dead = []
        for p, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=30)
            except (*owner_lost(), ray.exceptions.GetTimeoutError):
                dead.append(p)
        return dead

    def _recovered(self, reports: list) -> bool:
        """During a recovery, after a round: has every partition replayed past its old watermark?  Then
        the replica is rebuilt from the owners and serving resumes (health SERVING)."""
        rec = self.recovery
        if any(r.visible_offset < rec["target"].get(r.partition, 0) for r in reports):
            return False
        self._load_deferred = self._load_finish_due = False  # the owners were rolled back to eager engines
        replica = self._fill_replica() if self.replica is not None else None
        with self._cond:
            if replica is not None:
                self.replica = replica
            took = time.monotonic() - rec["t0"]
            self.recoveries.append(
                {
                    "partitions": sorted(rec["dead"]),
                    "since_s": rec["since_s"],
                    "duration_s": took,
                    "snapshot_id": rec["snapshot_id"],
                    "attempts": rec["attempts"],
                    "round": self.round_id,
                    "restore_s": rec.get("restored_s"),
                }
            )
            self.recovery = None
            self.healthy = True
        log.warning(
            "recovered partitions %s in %.2fs (owners restored after %.2fs; round %s): SERVING",
            sorted(rec["dead"]),
            took,
            rec.get("restored_s", float("nan")),
            self.round_id,
        )
        self._top_up_spares()  # started once this recovery is over, not competing with it
        return True

    def _top_up_spares(self) -> None:
        """Start spare owners until ``cluster.spare_owners`` are up or starting (in the background)."""
        while len(self._spares) < self.config.cluster.spare_owners:
            self._spares.append(self._spawn_owner(None, None))

    def _fan_out(self, step: Step, args: Sequence[tuple[Any, ...] | None]) -> list[Any]:
        """The round driver's fan-out: ``step`` at once on every owner whose argument is not None (the others
        are not called: None), results in partition order."""
        import ray

        refs = [None if a is None else getattr(o, step).remote(*a) for o, a in zip(self.owners, args, strict=True)]
        got = iter(ray.get([r for r in refs if r is not None]))
        return [None if r is None else next(got) for r in refs]

    def run_round(self) -> bool:
        """One round (``clustergnn.rounds.run_round``); True if anything was applied."""
        t0 = time.perf_counter()
        self.round_id += 1
        # with a hub window the next round waits for the window, so its ingest cannot ride on this round;
        # before a snapshot's cut neither: no round may be open on any owner when it exports
        cut = self._snapshot_due()
        # the deferred last layer is finished between rounds, with no round open on any owner: once the
        # start's replay is over, or before a snapshot's cut (a deferred engine's aggregates are stale)
        finish_load = self._load_finish_due or (cut and self._load_deferred)
        options = RoundOptions(
            self.P,
            self.num_layers,
            self.config.kafka.max_poll_records,
            fuse_next_ingest=not self.config.cluster.hub_window_ms
            and not cut
            and not finish_load
            and self.recovery is None,
        )
        prefetched, self._next_reports = self._next_reports, None
        extra = [(dict(self._txn_out[p]),) for p in range(self.P)]
        out = run_round(self._fan_out, self.round_id, options, self.stats, prefetched=prefetched, ingest_extra=extra)
        self._next_reports = out.next_reports
        busy, reports, published = out.busy, out.reports, out.finished
        self._last_reports = reports
        if out.ingested:
            for p, (sent,) in enumerate(extra):
                for txn_id in sent:
                    self._txn_out[p].pop(txn_id, None)
        self._tick_calm(reports)
        self._judge_txns(reports + (out.next_reports or []))
        if self.recovery is not None and not self._recovered(reports):
            with self._cond:  # watermark and replica stay where they were until the replay has passed them
                self.stats.rounds += 1
                self.stats.round_ms.append((time.perf_counter() - t0) * 1000)
            self._note_caught_up(reports)
            return busy
        with self._cond:
            if busy and self.replica is not None:
                pubs = [x for x in published if x is not None]
                self.replica.apply(pubs)
                self.published_bytes += sum(x.nbytes for x in pubs)
            for rep in reports:
                self.freshness.report(
                    rep.partition,
                    rep.visible_offset,
                    oldest_pending_ts_ms=rep.oldest_pending_ts_ms,
                    caught_up_at_ms=rep.caught_up_at_ms,
                )
            self.stats.rounds += 1
            self.stats.mutations += sum(rep.mutations for rep in reports)
            self.stats.dead_letters += sum(rep.dead_letters for rep in reports)
            self.stats.round_ms.append((time.perf_counter() - t0) * 1000)
            self._cond.notify_all()
        self._note_caught_up(reports)
        if not self.replaying and any(rep.oldest_pending_ts_ms is not None for rep in reports):
            self._expire_pending(reports)
        else:
            self._pending_seen.clear()
        if finish_load:
            self._finish_load()
        if cut and not self._load_deferred:
            self._take_snapshot()
        return busy

    def _judge_txns(self, reports: list) -> None:
        """Collect the owners' votes on transactions, decide what can be decided (``TxnBook``), queue each
        decision for its holders' next ingest and wake the writers waiting for it."""
        votes = [v for r in reports for v in getattr(r, "txn_votes", ())]
        if not votes and not self.txns.open:
            return
        now = self.calm_s  # the backstop counts calm time only (``_tick_calm``)
        with self._cond:
            alone, resend = self.txns.observe(votes, now)  # alone: decided by their owners, nothing to send
            for p, d in resend:
                self._txn_out[p][d.txn_id] = d
            visible = [self.freshness.partition_visible_ms(p) for p in range(self.P)]
            replaying = self.replaying or self.recovery is not None
            decided = self.txns.decide(self.round_id, visible, now, replaying=replaying)
            for d in decided:
                for p in d.parts:
                    self._txn_out[p][d.txn_id] = d
                log.log(
                    logging.DEBUG if d.commit else logging.INFO,
                    "transaction %s %s%s",
                    d.txn_id,
                    "committed" if d.commit else "aborted: ",
                    d.message,
                )
            if alone or decided:
                self._cond.notify_all()

    def _tick_calm(self, reports: list) -> None:
        """Advance the calm clock by the time since the last round if every partition, at the end of both
        rounds, had read its log up to the high watermark of its last fetch (``caught_up_at_ms``), with no
        replay or recovery going on.  Under overload some partition is behind, and the clock stops."""
        now = time.monotonic()
        calm = (
            not self.replaying
            and self.recovery is None
            and len(reports) == self.P
            and all(r.caught_up_at_ms is not None for r in reports)
        )
        if calm and self._calm_mark is not None:
            self.calm_s += now - self._calm_mark
        self._calm_mark = now if calm else None

    def _expire_pending(self, reports: list) -> None:
        """Dead-letter (``unknown_vertex``) edges whose source vertex will not come, on evidence only
        (docs/distributed.md, "When an edge's source never comes"):

        * no partition had added the source by ``PENDING_GRACE_MS`` after the edge was produced: once every
          *other* partition's visible time has passed that moment, every vertex addition produced before
          it is applied, so the source was not.  Such an edge holds its partition's watermark for about
          the grace plus a round.
        * the backstop, ``cluster.pending_timeout_s`` of the calm clock (``_tick_calm``): for edges the first
          rule cannot judge because other partitions' visible times are themselves held (two partitions
          each holding an edge from a vertex the other never adds).  A partition that is merely behind
          stops the calm clock, so overload alone never dead-letters valid input."""
        import ray

        with self._cond:
            visible = [self.freshness.partition_visible_ms(p) for p in range(self.P)]
        calls = []
        for rep in reports:
            if rep.oldest_pending_ts_ms is None:
                self._pending_seen.pop(rep.partition, None)
                continue
            ts = int(rep.oldest_pending_ts_ms)
            seen = self._pending_seen.get(rep.partition)
            if seen is None or seen[0] != ts:
                seen = self._pending_seen[rep.partition] = (ts, self.calm_s)
            others = [v for q, v in enumerate(visible) if q != rep.partition]
            before = int(min(others)) - PENDING_GRACE_MS if others and all(v is not None for v in others) else None
            if before is not None and ts <= before:
                why = (
                    f"edges from vertices that no partition had added {PENDING_GRACE_MS} ms after the edge was produced"
                )
                calls.append(self.owners[rep.partition].expire_pending.remote(before, why))
            elif self.calm_s - seen[1] >= self.config.cluster.pending_timeout_s:
                why = (
                    f"edges from vertices still unknown after {self.config.cluster.pending_timeout_s:g} s with "
                    "every partition caught up with its log"
                )
                calls.append(self.owners[rep.partition].expire_pending.remote(ts, why))
        if calls:
            n = sum(ray.get(calls, timeout=30))
            with self._cond:
                self.stats.dead_letters += n

    def _note_caught_up(self, reports: list) -> None:
        if self.replaying:
            self._caught_up.update(rep.partition for rep in reports if rep.caught_up_at_ms is not None)
            if len(self._caught_up) == self.P:
                self._end_replay()

    def _end_replay(self) -> None:
        import ray

        ray.get([o.end_replay.remote() for o in self.owners])
        self.replaying = False
        if self._load_deferred and self.recovery is None:  # serving starts once the last layer is finished
            self._load_finish_due = True
            if self._next_reports is None:  # no round open on any owner: now
                self._finish_load()
        else:
            with self._cond:
                if self.recovery is None and self.error is None:
                    self.healthy = True
                self._cond.notify_all()
        if self.recovery is None:  # a start's replay; a recovery tops up once it is over (``_recovered``)
            self._top_up_spares()
        log.info(
            "every partition has caught up with its log (round %s): deferral timeouts count from now", self.round_id
        )

    def _finish_load(self) -> None:
        """The start's replay is over (:data:`DEFER_LOAD`), or a snapshot falls due during it: every owner
        finishes its deferred last layer, the replica is filled from them in pieces, and (once the replay
        is over) serving starts; rounds are eager from then on.  An owner with a round open (the next
        round's ingest, fused into the last) answers None: then after the next round, which runs without
        that fusion."""
        import ray

        t0 = time.perf_counter()
        rows = ray.get([o.finish_load.remote() for o in self.owners])
        if any(r is None for r in rows):
            return
        t1 = time.perf_counter()
        replica = self._fill_replica()
        with self._cond:
            self.replica = replica
            self._load_deferred = self._load_finish_due = False
            if self.recovery is None and self.error is None and not self.replaying:
                self.healthy = True
            self._cond.notify_all()
        log.info(
            "the load's deferred last layer finished on %s rows in %.2fs, the replica filled in %.2fs (round %s)",
            sum(rows),
            t1 - t0,
            time.perf_counter() - t1,
            self.round_id,
        )

    def _fill_replica(self):
        """A new replica with every owner's final rows (``final_embeddings``), fetched
        :data:`REPLICA_FILL_ROWS` at a time: no owner and no reply holds a whole partition's rows at once."""
        import ray

        replica = self._new_replica()
        for owner in self.owners:
            start = 0
            while True:
                pub = ray.get(owner.final_embeddings.remote(start, REPLICA_FILL_ROWS), timeout=120)
                replica.apply([pub])
                start += len(pub.ids)
                if len(pub.ids) < REPLICA_FILL_ROWS:
                    break
        return replica

    # ------------------------------------------------------------------ snapshots
    def _snapshot_due(self) -> bool:
        """Snapshots on, none being written, something changed since the last, and an interval passed."""
        sc = self.config.snapshot
        if self.snapshots is None or self._snap_inflight is not None or self.recovery is not None:
            return False
        with self._cond:
            watermark = self.freshness.watermark
        if watermark == self._snap_last_watermark:
            return False
        done = self.stats.mutations - self._snap_last_mutations
        return time.monotonic() - self._snap_last_s >= sc.interval_s or (
            sc.interval_mutations > 0 and done >= sc.interval_mutations
        )

    def _take_snapshot(self) -> None:
        """The cut: every owner exports its state now (rounds wait for this, the *stall*) and writes it in
        the background; :meth:`_poll_snapshot` commits once every part is written."""
        import ray

        t0 = time.perf_counter()
        self._snap_last_s = time.monotonic()  # a failed attempt waits for the next interval too
        try:
            sid = self.snapshots.next_id()
            got = ray.get([o.snapshot.remote(sid, self.round_id) for o in self.owners])
        except owner_lost():
            raise  # an owner died: the round loop reports it
        except Exception:  # noqa: BLE001 - storage trouble or an owner still writing: serving goes on
            log.exception("snapshot after round %s could not be started; retrying at the next interval", self.round_id)
            self.snapshot_failures += 1
            return
        stall_ms = (time.perf_counter() - t0) * 1000
        with self._cond:
            self._snap_last_watermark = self.freshness.watermark
        self._snap_last_mutations = self.stats.mutations
        self._snap_inflight = {
            "id": sid,
            "round": self.round_id,
            "t0": t0,
            "stall_ms": stall_ms,
            "bytes": sum(g["bytes"] for g in got),
            "export_s": max(g["export_s"] for g in got),
        }
        log.info("snapshot %s: cut after round %s, export stalled rounds %.1f ms", sid, self.round_id, stall_ms)

    def _poll_snapshot(self, force: bool = False) -> None:
        """Between rounds: commit the snapshot being written once every owner's part is done (asked at most
        every 50 ms; a round never waits for a write)."""
        import ray

        snap = self._snap_inflight
        if snap is None or (not force and time.monotonic() - self._snap_checked_s < 0.05):
            return
        self._snap_checked_s = time.monotonic()
        try:
            results = ray.get([o.snapshot_result.remote(snap["id"]) for o in self.owners])
            if any(r is None for r in results):
                return
            t = time.perf_counter()
            meta = {
                "round": snap["round"],
                "partitions": self.P,
                "topic": self.config.kafka.topic,
                "model_digest": self.model_digest,
            }
            manifest = self.snapshots.commit(snap["id"], [r[0] for r in results], partitions=self.P, meta=meta)
        except Exception:  # noqa: BLE001 - a failed snapshot is logged and retried at the next interval
            log.exception("snapshot %s failed; the previous one stays the newest", snap["id"])
            self.snapshot_failures += 1
            self._snap_inflight = None
            return
        self._snap_inflight = None
        self.last_snapshot = {
            "id": manifest.snapshot_id,
            "round": manifest.round_id,
            "committed_s": time.time(),
            "size_bytes": manifest.size_bytes,
            "duration_s": time.perf_counter() - snap["t0"],
            "stall_ms": snap["stall_ms"],
            "export_s": snap["export_s"],
            "write_s": max(r[1] for r in results),
            "commit_s": time.perf_counter() - t,
            "count": (self.last_snapshot or {}).get("count", 0) + 1,
        }
        log.info(
            "snapshot %s committed: round %s, %.1f MB, stall %.1f ms, write %.2fs, cut to commit %.2fs",
            manifest.snapshot_id,
            manifest.round_id,
            manifest.size_bytes / 1e6,
            snap["stall_ms"],
            self.last_snapshot["write_s"],
            self.last_snapshot["duration_s"],
        )

    # ------------------------------------------------------------------ writes
    def producer(self):
        if self._producer is None:
            from streams.producer import MutationProducer

            self._producer = MutationProducer(self.config.kafka.bootstrap, self.config.kafka.topic, self.pmap)
        return self._producer

    def apply(self, batch: MutationBatch) -> dict[int, int]:
        """Write ``batch`` to Kafka; the last offset written per partition (for ``min_offsets``)."""
        return self.producer().send(batch)

    def apply_txn(self, batch: MutationBatch, txn_id: str) -> dict[int, int]:
        """Write ``batch`` as one transaction (``clustergnn/txn.py``): applied whole or not at all; the
        offset of its record per partition.  :meth:`await_txn` learns the verdict."""
        with self._txn_lock:
            return self.producer().send_txn(batch, txn_id)

    def await_txn(self, txn_id: str, offsets: Offsets, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the verdict on transaction ``txn_id`` and, on a commit, until its
        ``offsets`` are visible.  True: applied and visible; False: not known yet (ask again);
        ``WriteRejectedError`` (naming the partition and the mutation): aborted, nothing of it applied.

        The write is in the log whatever happens here, so a cluster that is down, starting or recovering
        gives False (the caller says PENDING), never an error that would read as "not written"."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (d := self.txns.verdicts.get(txn_id)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or self.error is not None:
                    return False
                self._cond.wait(min(left, 0.1))
        if not d.commit:
            raise WriteRejectedError(f"nothing of this write was applied: {d.message}")
        try:
            self.wait_for(offsets, max(0.0, deadline - time.monotonic()))
        except (StalenessDeadlineError, PartitionUnavailableError):
            return False
        return True

    def load_dataset(self, name: str, timeout_s: float = 600.0) -> dict[int, int]:
        """Write a dataset's initial graph to the mutation log and wait until it is visible.

        The initial graph goes through Kafka like any mutation, so the log alone rebuilds the state.
        """
        from clustergnn.datasets import load

        ds = load(name)
        native = ds.native_features
        if native is not None and native.shape[1] != self.feature_dim:
            raise ConfigError(
                f"dataset {name!r} has {native.shape[1]} features per vertex but the model's first layer reads "
                f"{self.feature_dim} ({self.model_info.layer_types[0]}): train on these features, or pick a dataset "
                "without native features (they then get seeded features of the model's width)"
            )
        offsets = self.apply(ds.initial_batch(dim=self.feature_dim, seed=self.config.graph.seed))
        self.wait_for(offsets, timeout_s)
        return offsets

    def wait_for(self, offsets: Offsets, timeout_s: float = 60.0) -> None:
        """Block until every ``(partition, offset)`` is visible."""
        with self._cond:
            verdict = self.freshness.wait(
                None,
                offsets,
                timeout_s=timeout_s,
                sleep=self._cond.wait,
                poll_s=0.1,
                before_check=lambda _now_ms: None if self._starting() else self._raise_if_down(),
            )
        if not verdict.met:
            raise StalenessDeadlineError(
                f"offsets {dict(offsets)} not visible after {timeout_s}s; watermark {verdict.watermark}"
            )

    # ------------------------------------------------------------------ reads
    @property
    def watermark(self) -> dict[int, int]:
        """Kafka partition -> next offset not yet visible (a copy)."""
        with self._cond:
            return self.freshness.watermark

    @property
    def visible_ms(self) -> float | None:
        """The moment before which every produced record is visible (None until every partition reported)."""
        with self._cond:
            return self.freshness.visible_ms

    def staleness_ms(self) -> float | None:
        with self._cond:
            return self.freshness.staleness_ms()

    def _starting(self) -> bool:
        replay = self.replaying or self._load_finish_due  # (a load's last layer is finished before serving)
        return self._started and replay and self.error is None and self.recovery is None

    def _raise_if_down(self) -> None:
        """Reads fail when the cluster is down for good or not started; during a recovery the replica still
        answers (at the watermark it had), so only reads that need an owner fail (:meth:`_raise_if_recovering`)."""
        if not self.healthy and self.recovery is None:
            if self._starting():
                raise PartitionUnavailableError(
                    f"the cluster is replaying its log after a start ({len(self._caught_up)} of {self.P} partitions "
                    "caught up): it serves once every partition has"
                )
            why = f": {self.error!r}" if self.error else ""
            raise PartitionUnavailableError(f"the cluster is not serving{why}")

    def _raise_if_recovering(self) -> None:
        rec = self.recovery
        if rec is not None:
            raise PartitionUnavailableError(
                f"partitions {sorted(rec['dead']) or '?'} are recovering (for {time.monotonic() - rec['t0']:.1f}s; "
                f"every owner replays from snapshot {rec['snapshot_id']}): only final-layer reads are served "
                f"meanwhile, "
                f"at watermark {rec['target']}"
            )

    def _prove_fresh(self, asked_s: float, deadline: float) -> float | None:
        """Probe the log's end (``streams.probe``): if every partition has applied what the broker had when
        it answered, every record produced before the probe's fetches were sent is visible; that moment
        (wall ms), or None when it is not proven (records pending, the broker silent, a recovery)."""
        if self.recovery is not None or not self.healthy:
            return None
        if self._probe is None:
            from streams.probe import LogEndProbe

            self._probe = LogEndProbe(self.config.kafka.bootstrap, self.config.kafka.topic, self.P)
        with self._cond:
            applied = self.freshness.watermark
        try:
            left = min(1.0, max(deadline - time.monotonic(), 0.01))
            res = self._probe.probe(applied, asked_s=asked_s, timeout_s=left)
        except Exception as exc:  # noqa: BLE001 - a failed probe proves nothing; the read waits on the rounds
            log.warning("freshness probe failed: %r", exc)
            return None
        if res is None:
            return None
        with self._cond:
            return res.sent_s * 1000.0 if self.freshness.confirm(res.high_watermarks, res.sent_s * 1000.0) else None

    def _check_read(
        self,
        ids: np.ndarray,
        layer: int | None,
        max_staleness_ms: float | None,
        min_offsets: Offsets | None,
        input_features: bool = False,
    ) -> int:
        if ids.ndim != 1:
            raise InvalidReadError(f"vertex_ids must be one-dimensional, got shape {ids.shape}")
        limit = self.config.gateway.max_ids_per_request
        if len(ids) > limit:
            raise InvalidReadError(f"too many ids in one read: {len(ids)} > {limit} (gateway.max_ids_per_request)")
        self.freshness.validate(max_staleness_ms, min_offsets)
        # the proto's numbering (0 = first GNN layer's output, -1 = final); the engine's index of a
        # layer's output is one more (its layer 0 holds the input features, which are not served)
        return resolve_read(layer, self.num_layers, input_features) + 1  # FEATURES (-1) becomes 0

    def read(
        self,
        ids,
        *,
        layer: int | None = None,
        max_staleness_ms: float | None = None,
        min_offsets: Offsets | None = None,
        timeout_s: float = 5.0,
        input_features: bool = False,
        answer_now: bool = False,
    ) -> ReadResult:
        """Embeddings of ``ids`` at ``layer``, numbered as the proto says (``clustergnn.serving.resolve_layer``:
        ``0 .. L-1`` = each GNN layer's output, ``-1``/``None`` = the final embeddings), or the stored
        input features with ``input_features=True``; see ``EmbeddingBackend.read``.

        ``answer_now`` with a bound waits for nothing the bound would wait for: not for rounds, not for a
        probe that could prove the bound (``_prove_fresh`` with the read's deadline), and not for the replay
        after a start: such a read fails at once with the UNAVAILABLE a read gets while the cluster replays
        (``_raise_if_down``), rather than serve the state from before the replay, which is older than what
        the cluster served before it stopped.  It judges the bound once on the state an unbounded read would
        be served (which includes the short refresh of an idle cluster's old proof, ``IDLE_STALE_MS``) and
        answers with ``bound_met`` saying whether it held (``clustergnn.freshness.settle``).  A recovery, a
        down cluster and unknown vertices are handled as for any read."""
        import ray

        ids = np.asarray(ids, dtype=np.int64)
        resolved = self._check_read(ids, layer, max_staleness_ms, min_offsets, input_features)
        served = resolved - 1  # as the proto numbers it (FEATURES = -1 for the input features)
        deadline = time.monotonic() + timeout_s
        fresh = self.freshness
        now_only = answer_now and (max_staleness_ms is not None or bool(min_offsets))  # no bound: changes nothing
        with self._cond:  # a read during the replay after a start waits for it (up to its deadline)
            while not now_only and self._starting() and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(deadline - time.monotonic(), 0.0)))
        first = True
        while True:
            asked_s = time.time()
            judged_ms: float | None = None  # when the state was proven fresh by a probe (None: now)
            left = max(deadline - time.monotonic(), 0.0)
            slice_s, first = (0.0 if first else min(left, PROBE_AFTER_S)), False
            with self._cond:
                verdict = fresh.wait(
                    max_staleness_ms,
                    min_offsets,
                    # a bounded read checks the log itself after one round's worth of waiting; answer_now: once
                    timeout_s=0.0 if now_only else left if max_staleness_ms is None else slice_s,
                    sleep=self._cond.wait,
                    before_check=lambda _now_ms: self._raise_if_down(),
                )
            # an idle cluster's own proof is 20-45 ms old (IDLE_WAIT_MS): a read whose bound it meets still
            # refreshes it rather than report a staleness an idle cluster need not have (IDLE_STALE_MS), and an
            # answer_now read too, as an unbounded read would, whether or not the old proof meets its bound
            old_idle_proof = (
                (verdict.met or now_only)
                and self._idling
                and (verdict.staleness_ms is None or verdict.staleness_ms > IDLE_STALE_MS)
            )
            bound_unmet = not verdict.met and max_staleness_ms is not None and not now_only
            if (bound_unmet or old_idle_proof) and fresh.reflects(min_offsets):
                # a read whose bound is met waits for a probe briefly (a broker slow to answer is noticed
                # by the idle loop, which goes back to rounds)
                judged_ms = self._prove_fresh(
                    asked_s, deadline if bound_unmet else min(deadline, time.monotonic() + 0.05)
                )
                if judged_ms is not None:
                    with self._cond:
                        verdict = fresh.check(max_staleness_ms, min_offsets, now_ms=judged_ms)
            if not verdict.met and not now_only:
                if time.monotonic() < deadline:
                    continue
                raise StalenessDeadlineError(verdict.timeout_message(timeout_s))
            visible, watermark = verdict.visible_ms, verdict.watermark
            if resolved == self.num_layers and self.replica is not None:
                emb, ver = self.replica.get(ids)
                stale = fresh.staleness_at(visible, judged_ms) or 0.0
                if now_only or max_staleness_ms is None or stale <= max_staleness_ms:
                    met = settle(verdict, answer_now=now_only, timeout_s=timeout_s, staleness_ms=stale)
                    return ReadResult(emb, ver, stale, watermark, served, self.model_digest, met)
                continue  # the bound slipped while reading: wait again
            self._raise_if_recovering()
            owner = self.pmap.owner(ids)
            parts = [(p, np.flatnonzero(owner == p)) for p in range(self.P)]
            parts = [(p, idx) for p, idx in parts if idx.size]
            try:
                got = ray.get(
                    [self.owners[p].read.remote(ids[idx], resolved) for p, idx in parts],
                    timeout=max(deadline - time.monotonic(), 0.001),
                )
            except ray.exceptions.GetTimeoutError:
                raise StalenessDeadlineError(
                    f"read of {len(ids)} ids did not finish within {timeout_s * 1000:.0f} ms"
                ) from None
            except owner_lost() as exc:
                raise PartitionUnavailableError(f"a partition owner is down (it will be recovered): {exc}") from None
            except UnknownVertexError as exc:
                raise UnknownVertexError(str(exc.args[0]) if exc.args else str(exc)) from None
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if hasattr(exc, "cause") else exc
                if isinstance(cause, UnknownVertexError):
                    raise UnknownVertexError(str(cause)) from None
                raise
            emb = np.zeros((len(ids), self.dims[resolved]), dtype=np.float32)
            ver = np.zeros(len(ids), dtype=np.int64)
            for (_, idx), (e, v) in zip(parts, got):
                emb[idx] = e
                ver[idx] = v
            stale = fresh.staleness_at(visible, judged_ms) or 0.0
            if now_only or max_staleness_ms is None or stale <= max_staleness_ms or time.monotonic() >= deadline:
                # past the deadline with the bound slipped while reading: StalenessDeadlineError ("would be")
                met = settle(verdict, answer_now=now_only, timeout_s=timeout_s, staleness_ms=stale)
                return ReadResult(emb, ver, stale, watermark, served, self.model_digest, met)

    # ------------------------------------------------------------------ status
    def status(self) -> ClusterStatus:
        import ray

        parts = []
        raw: list[dict | None] = [None] * self.P
        if self.recovery is None:  # a recovering owner is busy restoring: report what it said last
            try:
                raw = ray.get([o.status.remote() for o in self.owners], timeout=10)
                self._owner_status = list(raw)
            except Exception:  # noqa: BLE001 - report the cluster as down rather than fail the status call
                pass
        else:
            raw = list(self._owner_status)
        staleness = self.staleness_ms()
        if self._idling and (staleness is None or staleness > IDLE_STALE_MS):
            # an idle cluster's own proof is up to two long-poll waits old: status (and the metrics and health
            # built on it) proves it now instead, as reads do, so no figure it shows says more than IDLE_STALE_MS
            if self._prove_fresh(time.time(), time.monotonic() + 0.05) is not None:
                staleness = self.staleness_ms()
        watermark = self.watermark
        for p in range(self.P):
            s = raw[p]
            parts.append(
                PartitionStatus(
                    partition=p,
                    alive=s is not None and self.healthy,
                    num_vertices=(s or {}).get("vertices", 0),
                    watermark={p: watermark[p]},
                    lag=(s or {}).get("pending", 0),
                    applied_mutations=(s or {}).get("applied", 0),
                    mutations_per_s=(s or {}).get("mutations_per_s", 0.0),
                    node=(s or {}).get("node", ""),
                    memory_bytes=dict((s or {}).get("memory", {})),
                    rss_bytes=(s or {}).get("rss", 0),
                )
            )
        rms = list(self.stats.round_ms)
        # a copy first: the round thread adds a step's first timing to this dict while status runs (it raised
        # "dictionary changed size during iteration", and health went NOT_SERVING for that call)
        steps = dict(self.stats.step_ms)
        extra = {f"step_{k}_ms_p50": float(np.percentile(list(v), 50)) for k, v in steps.items() if v}
        extra |= {
            "staleness_ms": staleness if staleness is not None else -1.0,
            "rounds": float(self.stats.rounds),
            "busy_rounds": float(self.stats.busy_rounds),
            "idle_periods": float(self.idle_periods),
            "round_ms_p50": float(np.percentile(rms, 50)) if rms else 0.0,
            "messages": float(self.stats.messages),
            "message_bytes": float(self.stats.message_bytes),
            "published_bytes": float(self.published_bytes),
            "dead_letters": float(self.stats.dead_letters),
            "replaying": float(self.replaying),
            "edges": float(sum((s or {}).get("edges", 0) for s in raw)),
            # seconds since the broker last answered a fetch, worst owner (unreachable broker: grows)
            "broker_silent_s": float(max([(s or {}).get("broker_silent_s", 0.0) for s in raw] or [0.0])),
        }
        # which process owns each partition (for an operator's `kill`, and the chaos suite)
        extra |= {f"owner_{p}_pid": float(s["pid"]) for p, s in enumerate(raw) if s and "pid" in s}
        rec, done = self.recovery, self.recoveries
        extra |= {
            "recovering": 1.0 if rec else 0.0,
            "recovery_elapsed_s": time.monotonic() - rec["t0"] if rec else 0.0,
            "recovering_partitions": float(len(rec["dead"])) if rec else 0.0,
            "recoveries": float(len(done)),
            "recovery_last_s": done[-1]["duration_s"] if done else 0.0,
            "recovery_max_s": max(r["duration_s"] for r in done) if done else 0.0,
            "owner_restarts": float(sum(len(r["partitions"]) for r in done)),
            "recovery_duration_s_sum": float(sum(r["duration_s"] for r in done)),
        }
        last = self.last_snapshot
        if self.snapshots is not None:
            extra |= {
                "snapshot_last_id": float(last["id"]) if last else -1.0,
                "snapshot_last_round": float(last["round"]) if last else -1.0,
                "snapshot_age_s": time.time() - last["committed_s"] if last else -1.0,
                "snapshot_size_bytes": float(last["size_bytes"]) if last else 0.0,
                "snapshot_duration_s": last["duration_s"] if last else 0.0,
                "snapshot_stall_ms": last["stall_ms"] if last else 0.0,
                "snapshot_write_s": last["write_s"] if last else 0.0,
                "snapshots_committed": float(last["count"]) if last else 0.0,
                "snapshot_failures": float(self.snapshot_failures),
                "restored_snapshot_id": float(self.restored.snapshot_id) if self.restored else -1.0,
            }
        return ClusterStatus(parts, watermark, self.num_layers, self.dims[1:], extra, self.model_info)
