"""P partition engines exchanging messages in rounds equal one engine and DGL's full forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clustergnn import Engine, MutationBatch, MutationError
from clustergnn.partition import HashPartitionMap
from clustergnn.partitioned import LocalCluster
from clustergnn.reference import dgl_forward
from tests.core.models import F_IN, MODELS, build
from tests.core.test_engine_exact import GraphModel, initial_graph, rel_error


def assert_cluster_matches(cluster: LocalCluster, single: Engine, layers) -> None:
    g, x, ids = single.to_dgl()
    owned = np.sort(np.concatenate([e.owned_ids() for e in cluster.engines]))
    assert np.array_equal(owned, np.sort(ids)), "every vertex has exactly one owner"
    refs = dgl_forward(layers, g, x)
    for li, ref in enumerate(refs):
        err = rel_error(cluster.embeddings(ids, layer=li), ref)
        assert err <= 1e-5, f"layer {li}: relative error {err:.2e} across {cluster.P} partitions"


def bootstrap(cluster: LocalCluster, g, x) -> None:
    src, dst = (t.numpy() for t in g.edges())
    ids = np.arange(g.num_nodes())
    cluster.apply(MutationBatch.concat([MutationBatch.add_vertices(ids, x), MutationBatch.add_edges(src, dst)]))


@pytest.mark.parametrize("partitions", [1, 2, 3, 4])
@pytest.mark.parametrize("model", sorted(MODELS))
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_partitions_together_match_dgl(model: str, partitions: int, data: st.DataObject) -> None:
    layers = build(model, seed=data.draw(st.integers(0, 50), label="weight seed"))
    g, x, edges = initial_graph(data)
    collaborative = data.draw(st.booleans(), label="collaborative")
    cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(partitions), collaborative=collaborative)
    single = Engine.from_dgl(layers, g, x)
    bootstrap(cluster, g, x)
    assert_cluster_matches(cluster, single, layers)
    state = GraphModel(g.num_nodes(), edges)
    for _ in range(data.draw(st.integers(1, 3), label="batches")):
        batch = MutationBatch.concat([state.draw_mutation(data) for _ in range(data.draw(st.integers(1, 10)))])
        single.apply(batch)
        cluster.apply(batch)
        assert_cluster_matches(cluster, single, layers)


def test_cross_partition_messages_are_batched_per_destination() -> None:
    layers = build("sage-mean")
    gen = torch.Generator().manual_seed(0)
    n = 300
    cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(4))
    cluster.apply(MutationBatch.add_vertices(np.arange(n), torch.randn(n, F_IN, generator=gen)))
    before = cluster.messages
    src, dst = torch.randint(0, n, (2, 2000), generator=gen)
    cluster.apply(MutationBatch.add_edges(src, dst))
    # one message per (sender, receiver) per step: 3 structural+layer steps x 4 x 3, whatever the edge count
    assert cluster.messages - before == (2 + 1) * 4 * 3


def test_vertex_removed_while_another_partition_adds_an_edge_from_it() -> None:
    layers = build("sage-pool")
    pm = HashPartitionMap(2)
    cluster = LocalCluster.from_layers(layers, F_IN, pm)
    single = Engine.from_layers(layers, F_IN)
    init = MutationBatch.concat(
        [MutationBatch.add_vertices([0, 1, 2, 3], torch.randn(4, F_IN)), MutationBatch.add_edges([0, 2], [1, 3])]
    )
    cluster.apply(init)
    single.apply(init)
    # vertex 2 (partition 0) is removed in the same round in which partition 1 adds 2 -> 1
    cluster.round([MutationBatch.remove_vertices([2]), MutationBatch.add_edges([2], [1])])
    single.apply(MutationBatch.remove_vertices([2]))  # cross-partition rule: the removal wins
    assert_cluster_matches(cluster, single, layers)


def test_edge_from_a_vertex_added_elsewhere_in_the_same_round_applies_in_that_round() -> None:
    layers = build("sage-mean")
    pm = HashPartitionMap(2)
    cluster = LocalCluster.from_layers(layers, F_IN, pm)
    single = Engine.from_layers(layers, F_IN)
    # 1 is owned by partition 1, 2 by partition 0: 1 -> 2 reaches partition 0 before it knows vertex 1
    b = MutationBatch.concat(
        [MutationBatch.add_vertices([1, 2], torch.randn(2, F_IN)), MutationBatch.add_edges([1], [2])]
    )
    summaries = cluster.apply(b)
    single.apply(b)
    assert len(summaries) == 2, "one round (2 partitions), thanks to the in-round retry"
    assert_cluster_matches(cluster, single, layers)


def test_an_edge_from_a_vertex_that_never_comes_is_reported() -> None:
    cluster = LocalCluster.from_layers(build("sage-mean"), F_IN, HashPartitionMap(2))
    cluster.apply(MutationBatch.add_vertices([2], torch.randn(1, F_IN)))
    with pytest.raises(MutationError, match="edges from vertex 41, which exists nowhere"):
        cluster.apply(MutationBatch.add_edges([41], [2]))


def test_metis_partitioning_cuts_fewer_edges_and_stays_exact() -> None:
    from clustergnn.partition import cut_fraction, metis_partition_map

    # eight cliques of 12 vertices joined in a ring: METIS should cut little, the hash most edges
    k, c = 8, 12
    src, dst = [], []
    for q in range(k):
        members = np.arange(q * c, (q + 1) * c)
        for a in members:
            for b in members:
                if a != b:
                    src.append(a)
                    dst.append(b)
        src.append(q * c)
        dst.append(((q + 1) % k) * c)
    src, dst, ids = np.array(src), np.array(dst), np.arange(k * c)
    metis = metis_partition_map(ids, src, dst, 4)
    assert np.bincount(metis.owner(ids), minlength=4).min() >= k * c // 4 - c  # balanced
    assert cut_fraction(metis, src, dst) < 0.1 < cut_fraction(HashPartitionMap(4), src, dst)
    layers = build("gin")
    cluster = LocalCluster.from_layers(layers, F_IN, metis)
    single = Engine.from_layers(layers, F_IN)
    b = MutationBatch.concat(
        [MutationBatch.add_vertices(ids, torch.randn(len(ids), F_IN)), MutationBatch.add_edges(src, dst)]
    )
    cluster.apply(b)
    single.apply(b)
    more = MutationBatch.concat(
        [MutationBatch.add_vertices([500], torch.randn(1, F_IN)), MutationBatch.add_edges([500, 3], [3, 500])]
    )
    cluster.apply(more)
    single.apply(more)
    assert_cluster_matches(cluster, single, layers)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_partition_left_out_of_the_early_steps_joins_when_a_message_comes(model: str) -> None:
    """Only partition 0 ingests (vertex 0's features); partition 2 reads vertex 0 and 3, so it is left out
    of the structure step and joins at layer 0; partition 1 reads nothing of 0 and is left out of every
    step but the last.  The cluster still equals one engine (and DGL)."""
    layers = build(model)
    pm = HashPartitionMap(3)  # vertex v is owned by v % 3
    cluster = LocalCluster.from_layers(layers, F_IN, pm)
    single = Engine.from_layers(layers, F_IN)
    gen = torch.Generator().manual_seed(1)
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(9), torch.randn(9, F_IN, generator=gen)),
            MutationBatch.add_edges([0, 3, 2, 4, 7], [2, 5, 5, 1, 4]),
        ]
    )
    for target in (cluster, single):
        target.apply(init)
    assert_cluster_matches(cluster, single, layers)
    called: dict[int, list[str]] = {p: [] for p in range(3)}
    for p, part in enumerate(cluster.parts):
        for step in ("structure", "layer", "finish_round"):
            fn = getattr(part, step)
            setattr(part, step, lambda *a, _fn=fn, _s=step, _p=p: called[_p].append(_s) or _fn(*a))
    update = MutationBatch.update_features([0], torch.randn(1, F_IN, generator=gen))
    summaries = cluster.apply(update)
    single.apply(update)
    assert len(summaries) == 3
    # the driver's calls come first (a late join here runs the missed steps through the same methods)
    assert called[0] == ["structure"] + ["layer"] * (len(layers) - 1) + ["finish_round"]
    assert called[1][0] == "finish_round"
    assert called[2][0] == ("layer" if len(layers) > 1 else "finish_round")
    assert_cluster_matches(cluster, single, layers)
