"""A bulk load with the last layer deferred (``PartitionEngine.defer_last_layer``) and finished once at the
end (``finish_deferred_layer``) leaves every partition where eager rounds would: exact against DGL, then
and through later eager rounds and a snapshot's restore (docs/distributed.md, "The same graph through the
cluster")."""

from __future__ import annotations

import numpy as np
import pytest

from clustergnn import Engine, MutationBatch, propagation
from clustergnn.partition import HashPartitionMap
from clustergnn.partitioned import LocalCluster
from clustergnn.snapshot import SnapshotStore
from tests.core.gen import random_stream
from tests.core.models import F_IN, build
from tests.core.test_partitioned import assert_cluster_matches


def _load_deferred(cluster: LocalCluster, single: Engine, init: MutationBatch, pieces: int = 4) -> None:
    """``init`` in ``pieces`` rounds' worth of batches with every partition's last layer deferred."""
    assert all(e.defer_last_layer() for e in cluster.engines)
    step = -(-len(init) // pieces)
    for a in range(0, len(init), step):
        part = init.slice(a, min(a + step, len(init)))
        single.apply(part)
        assert all(s.published is None for s in cluster.apply(part)), "a deferred round published"


@pytest.mark.parametrize("model", ["sage-mean", "sage-gcn", "gat", "sage-pool", "gin"])
def test_a_deferred_load_finished_once_matches_dgl(model: str, monkeypatch) -> None:
    monkeypatch.setattr(propagation, "RECOMPUTE_CHUNK", 7)  # the finishing pass runs in several chunks
    layers = build(model, seed=3)
    init, batches = random_stream(seed=5, n_vertices=80, n_batches=4, batch_size=30, feature_dim=F_IN)
    single = Engine.from_layers(layers, F_IN)
    cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(3), publish=True)
    _load_deferred(cluster, single, init)
    # reads during the deferral finish the asked rows (collaborative reads): exact already
    assert_cluster_matches(cluster, single, layers)
    with pytest.raises(RuntimeError, match="deferred"):  # stale aggregates are never snapshotted
        cluster.engines[0].export_state()
    finished = [e.finish_deferred_layer() for e in cluster.engines]
    assert sum(finished) == len(single.vertex_ids())
    assert not any(e.load_deferred or e.collaborative for e in cluster.engines)
    # a narrowing SAGE mean's output is finished on read in a partition too (engine.PARTITION_OUTPUT_ON_READ)
    assert all((e.h[-1] is None) == (model == "sage-mean") for e in cluster.engines)
    # what the replica is filled with (stored outputs, or finished from the cached rows), in pieces too
    ids = single.vertex_ids()
    want = single.embeddings(ids)
    for e in cluster.engines:
        pub = e.publish_all()
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids, pub.ids, sorter=order)]
        assert np.abs(pub.rows - want[pos].numpy()).max() <= 1e-5 * max(1.0, float(want.abs().max()))
        # in bounded pieces: the same rows
        pieces = [e.publish_all(a, 5) for a in range(0, len(pub.ids), 5)]
        assert np.array_equal(np.concatenate([p.ids for p in pieces]), pub.ids)
        assert np.array_equal(np.concatenate([p.rows for p in pieces]), pub.rows)
    assert e.finish_deferred_layer() == 0  # once
    for b in batches:  # eager rounds from there: their incremental rules build on the finished layer
        single.apply(b)
        pubs = [s.published for s in cluster.apply(b) if s.published is not None and s.published.ids.size]
        assert pubs, "no eager round published"
        for pub in pubs:  # the published final rows are the final rows
            ref = single.embeddings(pub.ids).numpy()
            assert np.abs(pub.rows - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))
        assert_cluster_matches(cluster, single, layers)


def test_a_finished_load_snapshots_and_restores(tmp_path) -> None:
    layers = build("sage-mean", seed=1)
    init, batches = random_stream(seed=6, n_vertices=60, n_batches=3, batch_size=25, feature_dim=F_IN)
    single = Engine.from_layers(layers, F_IN)
    pmap = HashPartitionMap(2)
    cluster = LocalCluster.from_layers(layers, F_IN, pmap)
    _load_deferred(cluster, single, init, pieces=3)
    for e in cluster.engines:
        e.finish_deferred_layer()
    store = SnapshotStore(tmp_path)
    cluster.snapshot(store)
    restored = LocalCluster.restore(store, layers, pmap)
    for b in batches:
        single.apply(b)
        restored.apply(b)
        assert_cluster_matches(restored, single, layers)


def test_finishing_needs_no_round_open_and_collaborative_engines_do_not_defer() -> None:
    layers = build("sage-mean")
    cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(2), collaborative=True)
    assert not cluster.engines[0].defer_last_layer()  # already deferred for good: nothing to finish
    assert cluster.engines[0].finish_deferred_layer() == 0
    eager = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(2))
    e = eager.engines[0]
    assert e.defer_last_layer()
    e.begin_round()
    with pytest.raises(RuntimeError, match="round is open"):
        e.finish_deferred_layer()
