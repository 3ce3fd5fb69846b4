"""The distributed engine on a real local Ray cluster, fed through a real Kafka broker.

Every test compares against the single-process engine and DGL's own forward pass, or checks a
freshness promise against the offsets and times the test itself produced.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from actors.cluster import Cluster
from clustergnn import Engine, MutationBatch, UnknownVertexError
from clustergnn.config import Config
from clustergnn.reference import dgl_forward
from clustergnn.serving import InvalidReadError, PartitionUnavailableError, StalenessDeadlineError
from tests.core.gen import random_stream
from tests.kafka_util import raw_send, read_all

pytestmark = pytest.mark.integration

F = 8


def make_cluster(
    bootstrap: str,
    topic: str,
    partitions: int,
    builtin: str = "sage",
    collaborative: bool = False,
    hub_window_ms: float = 0.0,
    replica_finish: bool = False,
    owner_malloc: str = "default",
) -> Cluster:
    cfg = Config.from_dict(
        {
            "kafka": {"bootstrap": bootstrap, "topic": topic, "poll_timeout_ms": 10},
            "cluster": {
                "partitions": partitions,
                "collaborative": collaborative,
                "replica_finish": replica_finish,
                "actor_num_cpus": 0.5,
                "hub_window_ms": hub_window_ms,
                "owner_malloc": owner_malloc,
            },
            "model": {"builtin": builtin, "in_dim": F, "hidden": 16, "out_dim": 4, "seed": 1},
            "graph": {"dataset": None},
        }
    )
    return Cluster(cfg).start()


def assert_equal_to_engine_and_dgl(cluster: Cluster, single: Engine) -> None:
    ids = single.vertex_ids()
    res = cluster.read(ids, max_staleness_ms=60_000)
    ref = single.embeddings(ids).numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(res.embeddings - ref).max() / scale <= 1e-5
    g, x, gids = single.to_dgl()
    dgl_ref = dgl_forward(cluster.layers, g, x, activation=torch.relu)[-1].numpy()
    res2 = cluster.read(gids)
    assert np.abs(res2.embeddings - dgl_ref).max() / max(1.0, float(np.abs(dgl_ref).max())) <= 1e-5


@pytest.mark.parametrize(
    "partitions,builtin,serving,window",
    [
        (1, "sage", "eager", 0.0),
        (2, "gat", "collaborative", 0.0),
        (4, "sage-pool", "eager", 0.0),
        (3, "gcn", "eager", 40.0),
        # the gateway's replica finishes the last layer (a max and a sum last layer; GAT's stays eager)
        (2, "sage-pool", "replica_finish", 0.0),
        (3, "gin", "replica_finish", 0.0),
        (2, "gat", "replica_finish", 0.0),
    ],
)
def test_random_stream_through_kafka_equals_single_engine_and_dgl(
    ray_local, kafka_bootstrap, topic_name, partitions, builtin, serving, window
) -> None:
    cluster = make_cluster(
        kafka_bootstrap,
        topic_name(),
        partitions,
        builtin,
        serving == "collaborative",
        window,
        replica_finish=serving == "replica_finish",
    )
    try:
        init, batches = random_stream(seed=partitions, n_vertices=60, n_batches=8, batch_size=25, feature_dim=F)
        single = Engine.from_layers(cluster.layers, F)
        single.bulk_load(init)
        cluster.wait_for(cluster.apply(init), timeout_s=60)
        assert_equal_to_engine_and_dgl(cluster, single)
        for b in batches:
            single.apply(b)
            offsets = cluster.apply(b)
        cluster.wait_for(offsets, timeout_s=60)
        assert_equal_to_engine_and_dgl(cluster, single)
        st = cluster.status()
        assert st.healthy and sum(p.num_vertices for p in st.partitions) == single.num_vertices
        if partitions > 1:
            assert st.extra["messages"] > 0  # cross-partition propagation really happened
    finally:
        cluster.stop()


def test_a_late_source_under_overload_is_applied_not_dead_lettered(ray_local, kafka_bootstrap, topic_name) -> None:
    """Issue 12, item 4: an edge whose source's partition is far behind waits for it, however long that
    takes, and is applied -- overload is not evidence that the source will not come.  Partition 1 gets a
    backlog it reads one record a round (``max_poll_records = 1``), then the source's addition; the edge,
    in partition 0, is read at once and waits much longer than ``cluster.pending_timeout_s``, the old
    wall-clock limit after which it was dead-lettered (the calm clock does not run while partition 1 is
    behind, and partition 1's visible time stays before the edge until it reaches the addition)."""
    timeout_s, backlog = 0.5, 400
    cfg = Config.from_dict(
        {
            "kafka": {
                "bootstrap": kafka_bootstrap,
                "topic": topic_name(),
                "poll_timeout_ms": 10,
                "max_poll_records": 1,
            },
            "cluster": {"partitions": 2, "actor_num_cpus": 0.5, "pending_timeout_s": timeout_s},
            "model": {"builtin": "sage", "in_dim": F, "hidden": 16, "out_dim": 4, "seed": 1},
            "graph": {"dataset": None},
        }
    )
    cluster = Cluster(cfg).start()
    try:
        single = Engine.from_layers(cluster.layers, F)
        init = MutationBatch.concat(
            [
                MutationBatch.add_vertices(np.arange(20), torch.randn(20, F)),
                MutationBatch.add_edges(
                    np.r_[np.arange(20), np.arange(20)], np.r_[np.arange(1, 21) % 20, np.arange(3, 23) % 20]
                ),
            ]
        )
        single.apply(init)
        cluster.wait_for(cluster.apply(init), timeout_s=60)
        # the backlog: one record each, all in partition 1 (odd ids), then the source 101 (partition 1)
        late = [MutationBatch.update_features([1 + 2 * (i % 5)], torch.randn(1, F)) for i in range(backlog)]
        late.append(MutationBatch.add_vertices([101], torch.randn(1, F)))
        sends = [cluster.producer().send_async(b) for b in late]
        for r in sends:
            r.get()
        edge = MutationBatch.add_edges([101, 101], [2, 4])  # both into partition 0, from the late source
        t0 = time.monotonic()
        cluster.wait_for(cluster.apply(edge), timeout_s=180)
        waited = time.monotonic() - t0
        # the same for a transaction: its part in partition 1 waits behind a backlog; the old wall-clock
        # backstop aborted it ("the parts for partitions [1] have not arrived")
        more = [MutationBatch.update_features([3], torch.randn(1, F)) for _ in range(backlog)]
        sends = [cluster.producer().send_async(b) for b in more]
        for r in sends:
            r.get()
        txn = MutationBatch.concat(
            [MutationBatch.add_vertices([103], torch.randn(1, F)), MutationBatch.add_edges([103], [6])]
        )
        t0 = time.monotonic()
        assert cluster.await_txn("late-1", cluster.apply_txn(txn, "late-1"), timeout_s=180)
        waited_txn = time.monotonic() - t0
        for b in [*late, edge, *more, txn]:
            single.apply(b)
        dlq = cluster.config.kafka.dlq
        assert read_all(kafka_bootstrap, dlq, [0, 1], expect=0, timeout_s=1) == []
        assert_equal_to_engine_and_dgl(cluster, single)
        assert cluster.stats.dead_letters == 0
        for w in (waited, waited_txn):
            assert w > 2 * timeout_s, f"partition 1 was not behind for long ({w:.2f} s): the test proves nothing"
        print(f"waited {waited:.1f} s and {waited_txn:.1f} s (backstop {timeout_s} s)")
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster2(ray_local, kafka_bootstrap) -> Iterator[Cluster]:
    import uuid

    # lean malloc owners: every test of this module's shared cluster runs on them (test_lean_malloc_...)
    cluster = make_cluster(kafka_bootstrap, f"shared-{uuid.uuid4().hex[:8]}", 2, owner_malloc="lean")
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(40), torch.randn(40, F)),
            MutationBatch.add_edges(np.arange(40), (np.arange(40) * 7) % 40),
        ]
    )
    cluster.wait_for(cluster.apply(init), timeout_s=60)
    yield cluster
    cluster.stop()


def test_read_your_writes_with_min_offsets(cluster2: Cluster) -> None:
    before = cluster2.read([5]).embeddings
    offsets = cluster2.apply(MutationBatch.update_features([5], torch.full((1, F), 3.0)))
    res = cluster2.read([5], min_offsets=offsets, timeout_s=10)
    assert all(res.watermark[p] > o for p, o in offsets.items())
    assert not np.array_equal(res.embeddings, before)
    assert cluster2.read([5], input_features=True).embeddings.tolist() == [[3.0] * F]


def test_max_staleness_zero_succeeds_on_an_idle_cluster_and_reads_your_writes(cluster2: Cluster) -> None:
    cluster2.wait_for(cluster2.apply(MutationBatch.update_features([6], torch.full((1, F), 1.0))), timeout_s=20)
    time.sleep(0.3)  # idle: nothing produced since
    res = cluster2.read([6], max_staleness_ms=0, timeout_s=5)
    assert res.staleness_ms == 0.0  # every mutation produced so far is reflected (proven by a probe of the log)
    assert res.watermark == cluster2.watermark
    for value in (2.0, 3.0):  # a bound of 0 right after a write reflects it: nothing produced is left out
        offsets = cluster2.apply(MutationBatch.update_features([6], torch.full((1, F), value)))
        res = cluster2.read([6], max_staleness_ms=0, input_features=True, timeout_s=10)
        assert res.embeddings.tolist() == [[value] * F] and res.staleness_ms == 0.0
        assert all(res.watermark[p] > o for p, o in offsets.items())


def test_max_staleness_zero_without_the_idle_long_poll(cluster2: Cluster) -> None:
    """``cluster.idle_long_poll = false``: rounds never stop, and a bound-0 read is proven by its own probe."""
    cluster2.idle_long_poll = False
    try:
        for value in (5.0, 6.0):
            offsets = cluster2.apply(MutationBatch.update_features([7], torch.full((1, F), value)))
            res = cluster2.read([7], max_staleness_ms=0, input_features=True, timeout_s=10)
            assert res.embeddings.tolist() == [[value] * F] and res.staleness_ms == 0.0
            assert all(res.watermark[p] > o for p, o in offsets.items())
    finally:
        cluster2.idle_long_poll = True


def test_an_edge_from_a_missing_remote_vertex_does_not_hold_back_unrelated_writes(cluster2: Cluster) -> None:
    from kafka import KafkaConsumer, TopicPartition

    # 777_000 is owned by partition 0 and never added; the edge routes to 3's partition (1), where it waits
    # for its source until every other partition has applied what was produced up to 250 ms after it
    cluster2.apply(MutationBatch.add_edges([777_000], [3]))
    offsets = cluster2.apply(MutationBatch.update_features([3], torch.full((1, F), 4.0)))
    # an unrelated write behind it is visible well within cluster.pending_timeout_s (10 s), the old bound
    res = cluster2.read([3], input_features=True, min_offsets=offsets, timeout_s=3)
    assert res.embeddings.tolist() == [[4.0] * F]
    assert cluster2.read([5], max_staleness_ms=1000, timeout_s=3).staleness_ms <= 1000
    bootstrap = cluster2.config.kafka.bootstrap
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tps = [TopicPartition(cluster2.config.kafka.dlq, p) for p in range(2)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    dead = [dict(m.headers) for m in c]
    c.close()
    assert any(h["dlq.reason"] == b"unknown_vertex" and b"777000" in h["dlq.detail"] for h in dead), dead


def test_staleness_bound_holds_under_a_steady_produce_rate(cluster2: Cluster) -> None:
    bound_ms, rate_per_s, seconds = 250.0, 400, 3.0
    sent: list[tuple[float, dict[int, int]]] = []
    stop = threading.Event()

    def produce() -> None:
        rng = np.random.default_rng(0)
        t_end = time.time() + seconds
        while time.time() < t_end and not stop.is_set():
            src, dst = rng.integers(0, 40, 20), rng.integers(0, 40, 20)
            offsets = cluster2.apply(MutationBatch.add_edges(src, dst))
            sent.append((time.time() * 1000, offsets))  # acknowledged by now: produced before this time
            time.sleep(20 / rate_per_s)

    t = threading.Thread(target=produce)
    t.start()
    answers = []
    try:
        while t.is_alive():
            res = cluster2.read(np.arange(40), max_staleness_ms=bound_ms, timeout_s=10)
            answers.append((time.time() * 1000, res))
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
    assert len(answers) >= 10 and len(sent) >= 10
    for t_answer, res in answers:
        assert res.staleness_ms <= bound_ms
        for t_sent, offsets in sent:
            if t_sent < t_answer - bound_ms:  # produced more than the bound before the answer: reflected
                assert all(res.watermark[p] > o for p, o in offsets.items()), (
                    t_answer - t_sent,
                    res.watermark,
                    offsets,
                )


def test_bad_records_reach_the_dead_letter_topic_while_serving(cluster2: Cluster, kafka_bootstrap) -> None:
    from kafka import KafkaConsumer, TopicPartition

    topic = cluster2.config.kafka.topic
    bad_edge = MutationBatch.add_edges([1], [999_998])  # 999_998 routes to partition 0 and does not exist
    from streams.wire import encode_arrow

    raw_send(kafka_bootstrap, topic, [(0, None, b"not a record"), (0, None, encode_arrow(bad_edge))])
    offsets = cluster2.apply(MutationBatch.update_features([2], torch.full((1, F), -1.0)))
    res = cluster2.read([2], input_features=True, min_offsets=offsets, timeout_s=20)
    assert res.embeddings.tolist() == [[-1.0] * F]  # later valid mutations still apply
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tps = [TopicPartition(cluster2.config.kafka.dlq, p) for p in range(2)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    reasons = {dict(m.headers)["dlq.reason"].decode() for m in c}
    c.close()
    assert {"not_arrow_or_json", "invalid_mutation"} <= reasons
    assert cluster2.status().healthy


def test_read_errors_name_the_bad_value(cluster2: Cluster) -> None:
    with pytest.raises(UnknownVertexError, match="unknown vertex id 777"):
        cluster2.read([1, 777])
    with pytest.raises(InvalidReadError, match="layer must be in"):
        cluster2.read([1], layer=7)
    with pytest.raises(InvalidReadError, match="max_staleness_ms must be >= 0, got -5"):
        cluster2.read([1], max_staleness_ms=-5)
    with pytest.raises(StalenessDeadlineError, match="bound not met"):
        cluster2.read([1], min_offsets={0: 10**9}, timeout_s=0.3)


def test_answer_now_does_not_wait_for_the_replay_after_a_start() -> None:
    """A read during the replay after a start waits for it (up to its deadline); an answer_now read with a
    bound fails at once with the UNAVAILABLE of a replaying cluster instead of serving the state from before
    the replay.  No Ray or broker: a cluster object in the state ``start()`` leaves it in until every
    partition has caught up (replaying, NOT_SERVING)."""
    cfg = Config.from_dict(
        {
            "kafka": {"bootstrap": "127.0.0.1:9092", "topic": "never-used"},
            "cluster": {"partitions": 2},
            "model": {"builtin": "sage", "in_dim": F, "hidden": 16, "out_dim": 4, "seed": 1},
            "graph": {"dataset": None},
        }
    )
    c = Cluster(cfg)
    c._started = True  # what start() sets; replaying and not healthy are the constructor's
    waits: list[float | None] = []

    class CountingCondition(threading.Condition):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            return super().wait(timeout)

    c._cond = CountingCondition()
    for bound in ({"min_offsets": {0: 0}}, {"max_staleness_ms": 1e9}):
        with pytest.raises(PartitionUnavailableError, match="replaying its log after a start"):
            c.read([1], answer_now=True, timeout_s=5.0, **bound)
        assert waits == []  # not one wait
    with pytest.raises(PartitionUnavailableError, match="replaying its log after a start"):
        c.read([1], min_offsets={0: 0}, timeout_s=0.2)
    assert waits  # without answer_now the read waited for the replay, up to its deadline


def test_edge_from_a_vertex_added_in_another_partition_in_the_same_batch(cluster2: Cluster) -> None:
    # 101 is owned by partition 1, 100 by partition 0: the edge 101 -> 100 reaches partition 0 possibly
    # before partition 1 has applied the vertex; it waits (deferred), then applies
    b = MutationBatch.concat(
        [MutationBatch.add_vertices([100, 101], torch.ones(2, F)), MutationBatch.add_edges([101, 100], [100, 3])]
    )
    res = cluster2.read([100, 3], min_offsets=cluster2.apply(b), timeout_s=20)
    assert res.embeddings.shape == (2, 4)
    single_neigh = cluster2.read([100], input_features=True).embeddings
    assert single_neigh.tolist() == [[1.0] * F]


def test_owners_of_a_local_ray_run_at_the_configured_niceness(ray_local) -> None:
    """Ray nices its workers to 15, under which anything at 0 on a busy machine starves the owners;
    a local Ray started by ``init_ray`` gives them ``cluster.owner_niceness`` (0 by default)."""
    import os

    import ray

    from clustergnn.config import ClusterConfig

    if "RAY_worker_niceness" in os.environ and os.environ["RAY_worker_niceness"] != str(ClusterConfig().owner_niceness):
        pytest.skip("RAY_worker_niceness is set otherwise in this environment")

    @ray.remote(num_cpus=0.1)
    class Probe:
        def nice(self) -> int:
            return os.nice(0)

    p = Probe.remote()
    try:
        assert ray.get(p.nice.remote(), timeout=60) == ClusterConfig().owner_niceness
    finally:
        ray.kill(p)


def test_lean_malloc_owners_start_with_glibcs_settings(cluster2: Cluster) -> None:
    """``cluster.owner_malloc = lean`` reaches the owner processes' environment as they were started (what
    glibc reads), not only ``os.environ`` set later."""
    from clustergnn.config import LEAN_MALLOC_ENV

    pids = [int(v) for k, v in cluster2.status().extra.items() if k.startswith("owner_") and k.endswith("_pid")]
    assert len(pids) == 2
    for pid in pids:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        for k, v in LEAN_MALLOC_ENV.items():
            assert env.get(k.encode()) == v.encode(), (pid, k, env.get(k.encode()))


def test_default_owners_get_no_malloc_settings() -> None:
    from actors.cluster import _owner_env
    from clustergnn.config import LEAN_MALLOC_ENV

    assert not set(LEAN_MALLOC_ENV) & set(_owner_env(0.25)["env_vars"])
    lean = _owner_env(0.25, "lean")["env_vars"]
    assert {k: lean[k] for k in LEAN_MALLOC_ENV} == LEAN_MALLOC_ENV
    assert lean["NUMBA_NUM_THREADS"] == "1"
