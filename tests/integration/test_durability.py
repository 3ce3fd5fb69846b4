"""Driver restart: a cluster with snapshots dies, a new one resumes from the newest complete snapshot plus a
replay of each Kafka partition, and ends exactly where a single-process engine fed the whole log ends.

Every update of a vertex's features sets its column 0 to one more than the last (a per-vertex sequence),
so a lost update shows in the final features; a doubled edge addition (multi-edges are allowed) shows in
the embeddings, which are compared with a single-process :class:`Engine` (rel err <= 1e-5).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.cluster import Cluster
from clustergnn import Engine, MutationBatch
from clustergnn.config import Config
from clustergnn.mutations import MutationKind
from clustergnn.snapshot import SnapshotError, SnapshotStore
from tests.core.gen import random_stream

pytestmark = pytest.mark.integration

F = 8


def config(bootstrap: str, topic: str, snaps: Path, seed: int = 1, partitions: int = 2) -> Config:
    return Config.from_dict(
        {
            "kafka": {"bootstrap": bootstrap, "topic": topic, "poll_timeout_ms": 10},
            "cluster": {"partitions": partitions, "actor_num_cpus": 0.5},
            "model": {"builtin": "sage", "in_dim": F, "hidden": 16, "out_dim": 4, "seed": seed},
            "graph": {"dataset": None},
            # a snapshot after the initial graph, one during phase 1, none after (phase 2 is shorter)
            "snapshot": {"uri": str(snaps), "interval_s": 3600.0, "interval_mutations": 200, "retention": 3},
        }
    )


def with_sequences(batches: list[MutationBatch], seq: dict[int, int]) -> list[MutationBatch]:
    """``batches`` with each feature update setting column 0 to its vertex's next sequence number (an
    addition starts the vertex at 0); ``seq`` ends as every live vertex's expected column 0."""
    out = []
    for b in batches:
        f = b.features.clone()
        rows = b.feature_row_index()
        for i, (k, v) in enumerate(zip(b.kind.tolist(), b.src.tolist(), strict=True)):
            if k == MutationKind.ADD_VERTEX:
                seq[v] = 0
                f[rows[i], 0] = 0.0
            elif k == MutationKind.UPDATE_FEATURES:
                seq[v] += 1
                f[rows[i], 0] = float(seq[v])
            elif k == MutationKind.REMOVE_VERTEX:
                seq.pop(v, None)
        out.append(MutationBatch(b.kind, b.src, b.dst, f))
    return out


def send_all(cluster: Cluster, batches: list[MutationBatch]) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for b in batches:
        offsets.update(cluster.apply(b))
        time.sleep(0.02)  # spread over several rounds
    return offsets


def wait_snapshots(cluster: Cluster, count: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        extra = cluster.status().extra
        if extra.get("snapshots_committed", 0) >= count and cluster._snap_inflight is None:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} snapshots committed after {timeout_s}s: {cluster.status().extra}")


@pytest.mark.parametrize("torn", [False, True], ids=["newest", "newest-torn"])
def test_restarted_driver_resumes_from_snapshot_and_replays_exactly(
    ray_local, kafka_bootstrap, topic_name, tmp_path, torn
) -> None:
    snaps = tmp_path / "snaps"
    cfg = config(kafka_bootstrap, topic_name(), snaps)
    init, batches = random_stream(seed=7, n_vertices=60, n_batches=14, batch_size=30, feature_dim=F)
    seq: dict[int, int] = {}
    init, *batches = with_sequences([init, *batches], seq)
    phase1, phase2, phase3 = batches[:8], batches[8:11], batches[11:]
    # two transactions (as the gateway writes them), of vertices the stream never touches: one before the
    # last snapshot, one after; written again with the same ids after the restart (a client's retry),
    # they must not apply twice (adding their vertices again would be rejected)
    txns = {
        "t-before": MutationBatch.concat(
            [
                MutationBatch.add_vertices([10_000, 10_001], torch.zeros(2, F)),
                MutationBatch.add_edges([10_000], [10_001]),
            ]
        ),
        "t-after": MutationBatch.concat(
            [
                MutationBatch.add_vertices([10_002, 10_003], torch.zeros(2, F)),
                MutationBatch.add_edges([10_002, 10_003], [10_001, 10_000]),
            ]
        ),
    }
    seq.update({v: 0 for v in range(10_000, 10_004)})

    c1 = Cluster(cfg).start()
    try:
        c1.wait_for(c1.apply(init), timeout_s=60)
        c1.wait_for(send_all(c1, phase1), timeout_s=60)
        assert c1.await_txn("t-before", c1.apply_txn(txns["t-before"], "t-before"), timeout_s=30)
        wait_snapshots(c1, 2)
        before = c1.last_snapshot
        end2 = send_all(c1, phase2)  # after the last snapshot: lost with the driver, replayed from Kafka
        c1.wait_for(end2, timeout_s=60)
        assert c1.await_txn("t-after", c1.apply_txn(txns["t-after"], "t-after"), timeout_s=30)
        time.sleep(0.3)
        st = c1.status().extra
        assert st["snapshots_committed"] == 2 and c1.last_snapshot == before, "phase 2 must not be snapshotted"
        assert st["dead_letters"] == 0
        assert before["size_bytes"] > 0 and before["stall_ms"] >= 0 and before["write_s"] > 0
    finally:
        c1.stop()  # no final snapshot: everything since the last one is gone with the driver

    store = SnapshotStore(str(snaps))
    newest, older = store.list()[:2]
    if torn:  # the newest snapshot's part 1 loses its tail after the commit: skipped, the older one used
        part = snaps / f"snap-{newest.snapshot_id:012d}" / "part-1"
        victim = max(part.iterdir(), key=lambda f: f.stat().st_size)
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    expect = older if torn else newest
    assert all(expect.next_offsets[p] <= end2[p] for p in end2)  # there is something to replay

    c2 = Cluster(cfg).start()
    try:
        assert c2.restored is not None and c2.restored.snapshot_id == expect.snapshot_id
        assert c2.round_id >= expect.round_id
        c2.wait_for(send_all(c2, phase3), timeout_s=60)
        for tid, b in txns.items():  # the retries: answered applied, applied once
            assert c2.await_txn(tid, c2.apply_txn(b, tid), timeout_s=30)
        single = Engine.from_layers(c2.layers, F)
        single.bulk_load(init)
        for b in [*batches, *txns.values()]:
            single.apply(b)
        ids = single.vertex_ids()
        res = c2.read(ids, max_staleness_ms=60_000)
        ref = single.embeddings(ids).numpy()
        assert np.abs(res.embeddings - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
        feats = c2.read(ids, input_features=True).embeddings
        assert np.array_equal(feats, single.embeddings(ids, 0).numpy())
        assert feats[:, 0].tolist() == [float(seq[int(v)]) for v in ids]  # every update applied exactly once
        st = c2.status()
        assert sum(p.num_vertices for p in st.partitions) == single.num_vertices == len(seq)
        assert st.extra["dead_letters"] == 0 and st.extra["replaying"] == 0.0
    finally:
        c2.stop()


def fake_snapshot(snaps: Path, partitions: int, meta: dict) -> None:
    store = SnapshotStore(str(snaps))
    infos = [
        store.write_part(1, p, {"x": np.zeros(1, dtype=np.int64)}, round_id=3, next_offset=0) for p in range(partitions)
    ]
    store.commit(1, infos, partitions=partitions, meta=meta)


@pytest.mark.parametrize(
    "seed,partitions,topic,match",
    [
        (2, 2, "t", r"another model_digest \(model_digest: snapshot has '[0-9a-f]{64}', this config '[0-9a-f]{64}'\)"),
        (1, 3, "t", r"another partitions \(partitions: snapshot has 2, this config 3\)"),
        (1, 2, "other", r"another topic \(topic: snapshot has 't', this config 'other'\)"),
    ],
)
def test_a_snapshot_of_another_model_p_or_topic_is_refused(tmp_path, seed, partitions, topic, match) -> None:
    from clustergnn.models import load_layers, model_digest

    snaps = tmp_path / "snaps"
    taken = config("127.0.0.1:1", "t", snaps, seed=1)  # the snapshot's model: seed 1, P = 2, topic t
    digest = model_digest(load_layers(taken.model), taken.model)
    fake_snapshot(snaps, 2, {"round": 3, "partitions": 2, "topic": "t", "model_digest": digest})
    cluster = Cluster(config("127.0.0.1:1", topic, snaps, seed=seed, partitions=partitions))
    with pytest.raises(SnapshotError, match=match):
        cluster.start()  # refused before anything starts: no topic, no Ray, no owner
    assert cluster.owners == [] and not cluster.healthy


# ----------------------------------------------------------------------------- one owner crashes


def owner_pid(cluster: Cluster, p: int) -> int:
    import ray

    return int(ray.get(cluster.owners[p].status.remote(), timeout=30)["pid"])


def wait_recovered(cluster: Cluster, count: int, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cluster.error is not None:
            raise AssertionError(f"the cluster failed instead of recovering: {cluster.error!r}")
        if len(cluster.recoveries) >= count and cluster.recovery is None:
            return cluster.recoveries[-1]
        time.sleep(0.05)
    raise AssertionError(f"not recovered after {timeout_s}s: {cluster.status().extra}")


def single_engine(cluster: Cluster, init: MutationBatch, batches: list[MutationBatch]) -> Engine:
    single = Engine.from_layers(cluster.layers, F)
    single.bulk_load(init)
    for b in batches:
        single.apply(b)
    return single


def assert_exact(cluster: Cluster, single: Engine, seq: dict[int, int]) -> None:
    ids = single.vertex_ids()
    res = cluster.read(ids, max_staleness_ms=60_000)
    ref = single.embeddings(ids).numpy()
    assert np.abs(res.embeddings - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
    feats = cluster.read(ids, input_features=True).embeddings
    assert feats[:, 0].tolist() == [float(seq[int(v)]) for v in ids]  # every update applied exactly once
    st = cluster.status()
    assert sum(p.num_vertices for p in st.partitions) == single.num_vertices == len(seq)
    assert st.healthy and st.extra["dead_letters"] == 0


@pytest.mark.parametrize("snapshots", [True, False], ids=["from-snapshot", "no-snapshot"])
def test_a_killed_owner_is_recovered_and_reads_stay_consistent(
    ray_local, kafka_bootstrap, topic_name, tmp_path, snapshots
) -> None:
    """SIGKILL of one owner's process: health goes NOT_SERVING, final-layer reads keep being answered from
    the replica at the watermark of before the crash (bit for bit what was served then, staleness growing),
    reads that need an owner fail UNAVAILABLE saying it is recovering; every owner rolls back to the newest
    snapshot (or to the empty state) and replays; serving resumes by itself, exact, nothing lost or doubled.
    A second kill lands while mutations stream in (most likely mid-round)."""
    import os
    import signal
    import threading

    from clustergnn.serving import PartitionUnavailableError

    cfg = config(kafka_bootstrap, topic_name(), tmp_path / "snaps", partitions=3)
    if not snapshots:
        cfg = Config.from_dict({**cfg.to_dict(), "snapshot": {"uri": None}})
    init, batches = random_stream(seed=11, n_vertices=60, n_batches=16, batch_size=30, feature_dim=F)
    seq: dict[int, int] = {}
    init, *phase1 = with_sequences([init, *batches[:6]], seq)
    ids = np.sort(np.array(list(seq), dtype=np.int64))  # the vertices after phase 1
    rest = with_sequences(batches[6:], seq)
    phase2, phase3 = rest[:5], rest[5:]
    batches = phase1 + rest
    c = Cluster(cfg).start()
    try:
        c.wait_for(c.apply(init), timeout_s=60)
        c.wait_for(send_all(c, phase1), timeout_s=60)
        if snapshots:
            wait_snapshots(c, 1)
        before = c.read(ids)
        at_crash = single_engine(c, init, phase1)  # everything produced so far is visible: the same state
        ref = at_crash.embeddings(ids).numpy()
        assert np.abs(before.embeddings - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
        os.kill(owner_pid(c, 1), signal.SIGKILL)
        seen_down = seen_unavailable = False
        frozen, stale_max = 0, 0.0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (c.recoveries and c.recovery is None):
            if c.recovery is not None:
                seen_down |= not c.status().healthy
                try:
                    c.read(ids[:3], layer=0)
                except PartitionUnavailableError as e:
                    seen_unavailable |= "recovering" in str(e)
            r = c.read(ids)
            # the recovery may have ended during that read: then it may be served from the re-derived replica,
            # at the same watermark (nothing new was produced) but not bit for bit (checked after the loop)
            ended = bool(c.recoveries) and c.recovery is None
            if r.watermark == before.watermark and not ended:
                frozen += 1
                assert np.array_equal(r.embeddings, before.embeddings) and np.array_equal(r.versions, before.versions)
                stale_max = max(stale_max, r.staleness_ms)
            elif r.watermark == before.watermark:
                assert np.abs(r.embeddings - before.embeddings).max() <= 1e-5
            else:  # only once the replay has passed the old watermark
                assert c.recovery is None and all(r.watermark[p] >= w for p, w in before.watermark.items())
            time.sleep(0.01)
        first = wait_recovered(c, 1)
        assert first["partitions"] == [1] and seen_down and seen_unavailable and frozen > 0
        assert (first["snapshot_id"] is not None) == snapshots
        assert stale_max >= 500 * first["duration_s"]  # honest: the frozen answers grew older meanwhile
        assert c.read(ids).watermark == before.watermark  # nothing new was produced: same point, re-derived
        assert np.abs(c.read(ids).embeddings - before.embeddings).max() <= 1e-5

        # the second kill: while phase 2 streams in
        sender = threading.Thread(target=lambda: send_all(c, phase2))
        sender.start()
        time.sleep(0.1)
        os.kill(owner_pid(c, 2), signal.SIGKILL)
        sender.join()
        wait_recovered(c, 2)
        c.wait_for(send_all(c, phase3), timeout_s=60)
        assert_exact(c, single_engine(c, init, batches), seq)
        st = c.status()
        assert st.extra["recoveries"] == 2.0 and st.extra["owner_restarts"] == 2.0
        # what an operator sees: `clustergnn status` and the Prometheus endpoint
        from actors.gateway.cli import format_status
        from actors.gateway.metrics import GatewayMetrics

        text = format_status(st)
        assert "recoveries 2 (owners re-created 2)" in text and ("last snapshot" in text) == snapshots
        scraped = GatewayMetrics(lambda: st).render().decode()
        assert "clustergnn_recovery_duration_seconds_count 2.0" in scraped
        assert "clustergnn_recovering 0.0" in scraped and "clustergnn_owner_restarts 2.0" in scraped
    finally:
        c.stop()


# ----------------------------------------------------------------------------- the broker misbehaves


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own (it is paused or restarted): never the session's."""
    from streams.broker import EmbeddedBroker

    broker = EmbeddedBroker(port=0, log_path=tmp_path / "broker.log")
    broker.start()
    yield broker
    broker.stop()


def test_unreachable_broker_keeps_reads_served_with_growing_staleness_and_ingest_resumes(
    ray_local, own_broker, topic_name, tmp_path
) -> None:
    import os
    import signal

    cfg = config(own_broker.bootstrap, topic_name(), tmp_path / "snaps")
    init, batches = random_stream(seed=5, n_vertices=40, n_batches=6, batch_size=20, feature_dim=F)
    seq: dict[int, int] = {}
    init, *batches = with_sequences([init, *batches], seq)
    c = Cluster(cfg).start()
    try:
        c.wait_for(c.apply(init), timeout_s=60)
        c.wait_for(send_all(c, batches[:3]), timeout_s=60)
        ids = np.sort(np.array([v for v in seq if v < 40 and v in seq], dtype=np.int64))[:5]
        assert c.read(ids).staleness_ms < 2000
        os.kill(own_broker.pid, signal.SIGSTOP)  # unreachable: connections stay open, nothing answers
        try:
            time.sleep(4.0)
            r = c.read(ids)  # still answered, from the state it has, saying how old it may be
            assert r.staleness_ms >= 3000, r.staleness_ms
            st = c.status()
            assert st.extra["broker_silent_s"] >= 3.0 and c.error is None
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
        c.wait_for(send_all(c, batches[3:]), timeout_s=90)  # ingest resumed by itself
        assert c.read(ids).staleness_ms < 3000 and c.status().extra["broker_silent_s"] < 3.0
        single = single_engine(c, init, batches)
        ids = single.vertex_ids()
        ref = single.embeddings(ids).numpy()
        got = c.read(ids, max_staleness_ms=60_000).embeddings
        assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
    finally:
        c.stop()


def test_a_log_that_lost_its_records_stops_ingestion_and_says_which_offsets(
    ray_local, own_broker, topic_name, tmp_path
) -> None:
    """The in-memory broker restarts empty on the same port: the owners' next offsets are gone.  They must
    neither skip nor re-apply: the cluster turns NOT_SERVING and says which offsets of which partition."""
    from clustergnn.serving import PartitionUnavailableError
    from streams.broker import EmbeddedBroker
    from streams.topics import ensure_topics

    topic = topic_name()
    cfg = config(own_broker.bootstrap, topic, tmp_path / "snaps")
    init, batches = random_stream(seed=6, n_vertices=40, n_batches=2, batch_size=20, feature_dim=F)
    c = Cluster(cfg).start()
    try:
        c.wait_for(c.apply(init), timeout_s=60)
        c.wait_for(send_all(c, batches), timeout_s=60)
        port = own_broker.port
        own_broker.stop()
        fresh = EmbeddedBroker(port=port, log_path=tmp_path / "b2.log")
        fresh.start()
        own_broker._proc = fresh._proc  # the fixture stops this one
        ensure_topics(fresh.bootstrap, topic, 2, dead_letter_topic=None)
        deadline = time.monotonic() + 60
        while c.error is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.error is not None and not c.status().healthy
        gone = rf"offset \d+ of {re.escape(topic)}\[\d\] is gone: the log now holds offsets \[0, 0\)"
        assert re.search(gone, str(c.error)), str(c.error)
        with pytest.raises(PartitionUnavailableError, match="is gone"):
            c.read(np.array([1]))
    finally:
        c.stop()
