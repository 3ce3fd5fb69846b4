"""Replica-finish serving: owners publish the last layer's finish inputs, a replica finishes on read.

The replica is driven with exactly what partition engines publish round by round (``LocalCluster``,
the same round driver as the Ray coordinator) and compared with DGL's forward on the same graph, for
every model of ``tests/core/models.py`` (a GAT last layer stays eager: its final rows are published).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustergnn import Engine, MutationBatch, UnknownVertexError
from clustergnn.partition import HashPartitionMap
from clustergnn.partitioned import LocalCluster, Published
from clustergnn.reference import dgl_forward
from clustergnn.replica import EmbeddingReplica, FinishingReplica, finishes_on_read, make_replica
from clustergnn.snapshot import SnapshotStore
from tests.core.models import F_IN, MODELS, build
from tests.core.test_engine_exact import GraphModel, initial_graph, rel_error


class Served:
    """A LocalCluster in replica-finish serving plus the replica a coordinator keeps of it."""

    def __init__(self, layers, partitions: int) -> None:
        self.layers = layers
        self.cluster = LocalCluster.from_layers(
            layers, F_IN, HashPartitionMap(partitions), publish=True, replica_finish=True
        )
        self.replica = make_replica(self.cluster.engines[0].rules[-1], True)

    def apply(self, batch: MutationBatch) -> list[Published]:
        pubs = []
        for s in self.cluster.apply(batch):  # in round order; a vertex's publications come from its owner
            assert s.published is not None
            self.replica.apply([s.published])
            pubs.append(s.published)
        return pubs

    def rebuild(self) -> None:
        """A new replica from every owner's full publication (a restart or recovery)."""
        self.replica = make_replica(self.cluster.engines[0].rules[-1], True)
        self.replica.apply([e.publish_all() for e in self.cluster.engines])


def assert_replica_matches(served: Served, single: Engine) -> None:
    g, x, ids = single.to_dgl()
    ref = dgl_forward(served.layers, g, x)[-1]
    got, versions = served.replica.get(ids)
    assert len(served.replica) == len(ids), "the replica holds exactly the live vertices"
    err = rel_error(torch.from_numpy(got), ref)
    assert err <= 1e-5, f"replica-finish: relative error {err:.2e}"
    # the owners' own reads of the final layer (finished there on demand) agree with the replica's
    own = served.cluster.embeddings(ids, -1).numpy()
    assert np.array_equal(got, own) or rel_error(torch.from_numpy(got), torch.from_numpy(own)) <= 1e-6
    assert (versions >= 0).all()


def bootstrap(served: Served, single: Engine, g, x) -> None:
    src, dst = (t.numpy() for t in g.edges())
    ids = np.arange(g.num_nodes())
    batch = MutationBatch.concat([MutationBatch.add_vertices(ids, x), MutationBatch.add_edges(src, dst)])
    served.apply(batch)
    single.apply(batch)


@pytest.mark.parametrize("partitions", [1, 3])
@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_the_replica_finishes_what_dgl_computes(model: str, partitions: int, data: st.DataObject) -> None:
    layers = build(model, seed=data.draw(st.integers(0, 50), label="weight seed"))
    g, x, edges = initial_graph(data)
    served = Served(layers, partitions)
    single = Engine.from_layers(layers, F_IN)
    bootstrap(served, single, g, x)
    assert_replica_matches(served, single)
    state = GraphModel(g.num_nodes(), edges)
    for _ in range(data.draw(st.integers(1, 4), label="batches")):
        batch = MutationBatch.concat([state.draw_mutation(data) for _ in range(data.draw(st.integers(1, 10)))])
        single.apply(batch)
        served.apply(batch)
        assert_replica_matches(served, single)
    served.rebuild()
    assert_replica_matches(served, single)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_what_is_published_and_kept_per_layer_type(model: str) -> None:
    layers = build(model)
    served = Served(layers, 2)
    last = served.cluster.engines[0].rules[-1]
    gen = torch.Generator().manual_seed(3)
    pubs = served.apply(
        MutationBatch.concat(
            [
                MutationBatch.add_vertices(np.arange(6), torch.randn(6, F_IN, generator=gen)),
                MutationBatch.add_edges([0, 1, 2, 3], [1, 2, 3, 4]),
            ]
        )
    )
    for e in served.cluster.engines:
        assert (e.h[-1] is None) == finishes_on_read(last), "the owners keep no final layer where a reader finishes it"
    if not finishes_on_read(last):  # GAT: eager, said plainly
        assert isinstance(served.replica, EmbeddingReplica) and not any(p.finish_inputs for p in pubs)
        return
    assert isinstance(served.replica, FinishingReplica) and all(p.finish_inputs for p in pubs)
    for p in pubs:
        assert p.rows.shape == (len(p.ids), last.msg_dim) and p.indeg.shape == (len(p.ids),)
        assert (p.self_rows is not None) == last.has_self_term and (p.msg_rows is not None) == last.finish_uses_msg
    # an update of vertex 5's features (no edges): at most its own rows travel (none where its last-layer
    # input does not change or its output does not read it: GraphConv; a GAT layer before it)
    pubs = served.apply(MutationBatch.update_features([5], torch.randn(1, F_IN, generator=gen)))
    assert set(np.concatenate([p.ids for p in pubs]).tolist()) <= {5}
    assert set(np.concatenate([p.self_ids for p in pubs]).tolist()) <= {5}


def test_removed_and_re_added_vertices_and_unknown_ids() -> None:
    layers = build("sage-mean")
    served = Served(layers, 2)
    single = Engine.from_layers(layers, F_IN)
    gen = torch.Generator().manual_seed(4)
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(8), torch.randn(8, F_IN, generator=gen)),
            MutationBatch.add_edges([0, 1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]),
        ]
    )
    for t in (served, single):
        t.apply(init)
    again = MutationBatch.concat(
        [
            MutationBatch.remove_vertices([3]),
            MutationBatch.add_vertices([3], torch.randn(1, F_IN, generator=gen)),
            MutationBatch.add_edges([3], [5]),  # 3 and 5 have one owner (an edge from 3 into the other
            MutationBatch.remove_vertices([6]),  # partition in this round would lose to the removal)
        ]
    )
    for t in (served, single):
        t.apply(again)
    assert_replica_matches(served, single)
    for t in (served, single):
        t.apply(MutationBatch.add_edges([3], [0]))
    assert_replica_matches(served, single)
    with pytest.raises(UnknownVertexError, match="unknown vertex id 6"):
        served.replica.get(np.array([1, 6]))


def test_the_replica_is_rebuilt_after_a_restore_from_a_snapshot(tmp_path) -> None:
    layers = build("sage-gcn")
    served = Served(layers, 3)
    single = Engine.from_layers(layers, F_IN)
    gen = torch.Generator().manual_seed(5)
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(12), torch.randn(12, F_IN, generator=gen)),
            MutationBatch.add_edges(np.arange(12), (np.arange(12) * 5 + 1) % 12),
        ]
    )
    for t in (served, single):
        t.apply(init)
    store = SnapshotStore(tmp_path)
    served.cluster.snapshot(store)
    served.cluster = LocalCluster.restore(store, layers, HashPartitionMap(3), publish=True, replica_finish=True)
    served.rebuild()
    assert_replica_matches(served, single)
    more = MutationBatch.concat(
        [MutationBatch.add_edges([4, 7], [9, 9]), MutationBatch.update_features([2], torch.ones(1, F_IN))]
    )
    for t in (served, single):
        t.apply(more)
    assert_replica_matches(served, single)


def test_the_knob_and_bad_input() -> None:
    from clustergnn.config import Config, ConfigError

    assert Config().cluster.replica_finish is False  # off by default (docs/gateway.md says why)
    with pytest.raises(ConfigError, match="collaborative and cluster.replica_finish"):
        Config.from_dict({"cluster": {"collaborative": True, "replica_finish": True}})
    with pytest.raises(ConfigError, match="replica_finish must be true or false, got 'yes'"):
        Config.from_dict({"cluster": {"replica_finish": "yes"}})
    rule = LocalCluster.from_layers(build("sage-mean"), F_IN, HashPartitionMap(1)).engines[0].rules[-1]
    replica = FinishingReplica(rule)
    eager = Published(
        np.zeros(0, np.int64), np.array([1]), np.zeros((1, rule.out_dim), np.float32), np.ones(1, np.int64)
    )
    with pytest.raises(ValueError, match="finish inputs"):
        replica.apply([eager])
    assert len(replica) == 0  # nothing applied


def test_a_publication_of_another_width_is_refused_not_stored_over_the_rows() -> None:
    served = Served(build("sage-mean"), 1)
    served.apply(MutationBatch.add_vertices([0, 1], torch.randn(2, F_IN)))
    before, _ = served.replica.get(np.array([0, 1]))
    empty = np.zeros(0, np.int64)
    wide = served.replica._tables["agg"].shape[1] + 1
    bad = Published(empty, np.array([0]), np.zeros((1, wide), np.float32), np.ones(1, np.int64), indeg=np.ones(1))
    gone = Published(np.array([1]), empty, served.replica._tables["agg"][:0], empty, indeg=empty)
    with pytest.raises(ValueError, match="published agg rows"):
        served.replica.apply([gone, bad])  # refused whole: vertex 1 is not removed either
    after, _ = served.replica.get(np.array([0, 1]))
    assert np.array_equal(before, after)
