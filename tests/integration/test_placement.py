"""``cluster.placement``: the scheduling strategy the coordinator asks Ray for, per partition, given the
nodes Ray reports alive (``ray.nodes()``, replaced here by a list; the strategies are Ray's own objects).
Placement on real nodes, and re-creation after a node is lost, are in ``test_multinode.py``."""

from __future__ import annotations

import pytest
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.cluster import Cluster
from clustergnn.config import Config

pytestmark = pytest.mark.integration


def nid(ip: str) -> str:
    """A node id as Ray spells it (56 hex digits), made from the address."""
    return f"{int(ip.rsplit('.', 1)[1]):056x}"


def node(ip: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": nid(ip), "NodeManagerAddress": ip, "Alive": alive, "Resources": {"CPU": cpus}}


@pytest.fixture
def nodes(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    import ray

    live = [node("10.0.0.1", 0), node("10.0.0.2", 4), node("10.0.0.3", 8), node("10.0.0.4", 8)]
    monkeypatch.setattr(ray, "nodes", lambda: live)
    return live


def cluster(**placement: object) -> Cluster:
    cfg = {"partitions": 3, **placement}
    return Cluster(Config.from_dict({"cluster": cfg, "model": {"in_dim": 4, "hidden": 4, "out_dim": 2}}))


def test_spread_is_rays_spread_for_owners_and_spares(nodes: list[dict]) -> None:
    c = cluster()  # the default
    assert c.config.cluster.placement == "spread"
    assert [c._placement(p) for p in (0, 1, 2, None)] == ["SPREAD"] * 4


def test_pack_prefers_the_node_with_most_cpus_and_keeps_it_while_it_lives(nodes: list[dict]) -> None:
    c = cluster(placement="pack")
    got = [c._placement(p) for p in (0, 1, 2, None)]
    assert all(isinstance(s, NodeAffinitySchedulingStrategy) and s.soft for s in got)
    assert {s.node_id for s in got} == {nid("10.0.0.3")}  # 8 CPUs (tie with .4: the lower address)
    nodes[2]["Alive"] = False  # that node is lost: the next spawn goes to another, and stays there
    assert c._placement(0).node_id == nid("10.0.0.4")
    nodes[2]["Alive"] = True
    assert c._placement(1).node_id == nid("10.0.0.4")


def test_pinned_puts_each_partition_on_its_node_softly_and_elsewhere_when_that_node_is_gone(
    nodes: list[dict],
) -> None:
    c = cluster(placement="pinned", placement_nodes=["10.0.0.2", "10.0.0.4", "10.0.0.2"])
    got = [c._placement(p) for p in (0, 1, 2)]
    assert [s.node_id for s in got] == [nid("10.0.0.2"), nid("10.0.0.4"), nid("10.0.0.2")]
    assert all(s.soft for s in got)  # a pin is a preference: a lost node's owner must land somewhere
    assert c._placement(None) == "SPREAD"  # spares are not pinned
    nodes[1]["Alive"] = False
    assert c._placement(0) == "SPREAD"


def test_a_bad_placement_is_refused_naming_it() -> None:
    from clustergnn.config import ConfigError

    with pytest.raises(ConfigError, match="'spread', 'pack' or 'pinned', got 'round-robin'"):
        cluster(placement="round-robin")
    with pytest.raises(ConfigError, match=r"one node address per partition \(3\), got \('10.0.0.2',\)"):
        cluster(placement="pinned", placement_nodes=["10.0.0.2"])
