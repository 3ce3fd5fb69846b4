"""A partition keeps ``h``/``agg``/``selfc``/``drift`` rows for its owned vertices only (clustergnn.caches,
"Owned rows"), and stays exact through slots that turn from ghost to owned and back, and through snapshots."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch, cpu_kernels, propagation
from clustergnn import engine as engine_module
from clustergnn.caches import ROW_GROWTH
from clustergnn.partition import HashPartitionMap
from clustergnn.partitioned import LocalCluster, PartitionEngine
from clustergnn.snapshot import SnapshotStore
from tests.core.gen import random_stream
from tests.core.models import F_IN, build
from tests.core.test_partitioned import assert_cluster_matches


def assert_owned_rows(eng: PartitionEngine) -> None:
    """Every owned live slot has its own row, no ghost or free slot has one, and the owned-row tables
    are as long as the rows handed out (plus the growth), far shorter than a table per slot."""
    c, g = eng.caches, eng.graph
    alive = g.alive[: c.capacity]
    owned = np.flatnonzero(alive & ~c.ghost[: len(alive)])
    rows = c.rowmap[owned]
    assert (rows >= 0).all() and len(np.unique(rows)) == len(rows), "an owned slot without a row of its own"
    assert np.array_equal(c.slot_of[rows], owned)
    others = np.setdiff1d(np.arange(c.capacity), owned)
    assert (c.rowmap[others] == -1).all(), "a ghost or free slot holds a row"
    assert (c.slot_of >= 0).sum() == len(owned)
    for t in c._owned_tables():
        assert t.shape[0] == c.row_capacity, "an owned-row table with a row per slot"
    assert c.row_capacity <= max(16, int(np.ceil(c._rows_used * ROW_GROWTH)) + 1)
    for t in c.msg:
        # messages stay per slot (a ghost's are used), for the slots handed out, grown by ROW_GROWTH
        assert eng.graph.next_slot <= t.shape[0] <= max(16, int(eng.graph.next_slot * ROW_GROWTH) + 1)


def slot_kinds(cluster: LocalCluster) -> list[np.ndarray]:
    """Per partition: 1 for an owned live slot, 2 for a ghost, 0 for a free one."""
    out = []
    for e in cluster.engines:
        alive = e.graph.alive[: e.caches.capacity]
        out.append(np.where(alive, np.where(e.ghost[: len(alive)], 2, 1), 0))
    return out


def kinds_changed(last: list[np.ndarray], now: list[np.ndarray]) -> tuple[int, int]:
    """Slots whose last vertex was a ghost and that hold an owned one now, and the other way round
    (``last``: each slot's kind when it last held a vertex, updated in place)."""
    g2o = o2g = 0
    for p, b in enumerate(now):
        a = last[p]
        if len(a) < len(b):
            a = last[p] = np.concatenate([a, np.zeros(len(b) - len(a), dtype=a.dtype)])
        a = a[: len(b)]
        g2o += int(((a == 2) & (b == 1)).sum())
        o2g += int(((a == 1) & (b == 2)).sum())
        a[b > 0] = b[b > 0]
    return g2o, o2g


def n_free(eng: PartitionEngine) -> int:
    return int(sum(len(a) for a in eng.graph._free))


def flip_batches(cluster: LocalCluster, next_id: int) -> list:
    """Batches (some made from the state they meet) that turn a ghost slot of partition 0 into an owned
    one and an owned slot into a ghost's, and leave the graph as they found it plus new vertices (freed
    slots are taken first): a new vertex ``z`` of partition 0 is added, then removed while a ghost loses
    every edge (it is dropped at the round's end); new vertices of partition 0 fill every free slot;
    then new vertices of partition 1, each with an edge into partition 0, fill every free slot, and the
    ghost's edges come back."""
    e0 = cluster.engines[0]
    g, rng = e0.graph, np.random.default_rng(0)
    ghost = int(np.flatnonzero(g.alive & e0.ghost[: g.capacity])[0])
    u = int(g.ext_of[ghost])
    dsts = g.ext_of[g.out.neighbours(ghost)]
    keep = int(g.ext_of[np.flatnonzero(g.alive & ~e0.ghost[: g.capacity])[0]])
    z = next_id - 3  # partition 0's (v mod 3 == 0)
    feats = lambda n: torch.from_numpy(rng.standard_normal((n, F_IN)).astype(np.float32))  # noqa: E731

    def fill_owned() -> MutationBatch:
        n = n_free(e0) + 1
        return MutationBatch.add_vertices(np.arange(n) * 3 + next_id, feats(n))

    def fill_ghosts() -> MutationBatch:
        n = n_free(e0) + 1
        ids = np.arange(n) * 3 + next_id + 100_001  # partition 1's
        add = [MutationBatch.add_vertices(ids, feats(n)), MutationBatch.add_edges(ids, np.full(n, keep))]
        return MutationBatch.concat([*add, MutationBatch.add_edges(np.full(len(dsts), u), dsts)])

    return [
        MutationBatch.add_vertices([z], feats(1)),
        MutationBatch.concat(
            [MutationBatch.remove_edges(np.full(len(dsts), u), dsts), MutationBatch.remove_vertices([z])]
        ),
        fill_owned,
        fill_ghosts,
    ]


@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "gat", "graphconv-both", "gin"])
def test_a_partition_holds_owned_rows_only_and_stays_exact(model: str, tmp_path) -> None:
    layers = build(model, seed=3)
    pmap = HashPartitionMap(3)
    init, batches = random_stream(seed=5, n_vertices=60, n_batches=14, batch_size=40, feature_dim=F_IN)
    single = Engine.from_layers(layers, F_IN)
    cluster = LocalCluster.from_layers(layers, F_IN, pmap)
    single.bulk_load(init)
    cluster.apply(init)
    for e in cluster.engines:
        assert e.has_ghosts()
        assert_owned_rows(e)
        assert e.caches.row_capacity < e.graph.num_vertices  # the ghosts have no rows
    assert_cluster_matches(cluster, single, layers)
    store = SnapshotStore(tmp_path)
    g2o = o2g = 0
    restored = None
    batches = [*flip_batches(cluster, 3_000), *batches]
    last = slot_kinds(cluster)
    for i, b in enumerate(batches):
        b = b() if callable(b) else b  # made from the state it meets
        single.apply(b)
        cluster.apply(b)
        a, c = kinds_changed(last, slot_kinds(cluster))
        g2o, o2g = g2o + a, o2g + c
        if restored is not None:
            restored.apply(b)
        for e in cluster.engines:
            assert_owned_rows(e)
        assert_cluster_matches(cluster, single, layers)
        if i == len(batches) // 2:  # a snapshot restores owned rows from the ghost-free state
            cluster.snapshot(store)
            restored = LocalCluster.restore(store, layers, pmap)
            for e in restored.engines:
                assert_owned_rows(e)
    assert g2o and o2g, "the stream turned no ghost slot into an owned one, or none back"
    for e in restored.engines:
        assert_owned_rows(e)
    assert_cluster_matches(restored, single, layers)


def test_owned_rows_on_the_torch_path() -> None:
    with cpu_kernels.disabled():
        layers = build("sage-mean", seed=3)
        init, batches = random_stream(seed=7, n_vertices=50, n_batches=8, batch_size=40, feature_dim=F_IN)
        single = Engine.from_layers(layers, F_IN)
        cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(2))
        single.bulk_load(init)
        cluster.apply(init)
        for b in batches:
            single.apply(b)
            cluster.apply(b)
            for e in cluster.engines:
                assert_owned_rows(e)
        assert_cluster_matches(cluster, single, layers)


@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "gat", "gin"])
def test_owned_rows_give_the_same_bits_as_rows_per_slot(model: str, monkeypatch) -> None:
    """A row's number only says where its values are stored: the same stream through partitions with
    owned rows and with a row per slot (the old layout) gives bit-identical outputs at every layer."""
    layers = build(model, seed=1)
    init, batches = random_stream(seed=9, n_vertices=50, n_batches=8, batch_size=40, feature_dim=F_IN)
    clusters = []
    for owned_rows in (True, False):
        monkeypatch.setattr(engine_module, "OWNED_ROWS", owned_rows)
        cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(3))
        assert (cluster.engines[0].caches.rowmap is not None) == owned_rows
        clusters.append(cluster)
    for b in [init, *batches]:
        for cluster in clusters:
            cluster.apply(b)
        ids = np.sort(np.concatenate([e.owned_ids() for e in clusters[0].engines]))
        for li in range(len(layers) + 1):
            a, b_ = (c.embeddings(ids, layer=li) for c in clusters)
            assert torch.equal(a, b_), f"layer {li} differs"


@pytest.mark.parametrize("model", ["sage-mean", "gat", "sage-pool"])
def test_large_recomputes_in_a_partition_run_in_chunks_and_stay_exact(model: str, monkeypatch) -> None:
    """A partition recomputes many rows a chunk at a time (``RECOMPUTE_CHUNK``, small here): the same
    answers as DGL's forward, through the initial graph's and later batches' recomputes."""
    monkeypatch.setattr(propagation, "RECOMPUTE_CHUNK", 5)
    calls = []
    chunks = propagation.Propagation._recompute_in_chunks
    monkeypatch.setattr(
        propagation.Propagation, "_recompute_in_chunks", lambda self, *a: calls.append(1) or chunks(self, *a)
    )
    layers = build(model, seed=2)
    init, batches = random_stream(seed=4, n_vertices=60, n_batches=6, batch_size=40, feature_dim=F_IN)
    single = Engine.from_layers(layers, F_IN)
    cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(3))
    single.bulk_load(init)
    cluster.apply(init)
    assert calls, "no recompute ran in chunks"
    for b in batches:
        single.apply(b)
        cluster.apply(b)
        assert_cluster_matches(cluster, single, layers)
