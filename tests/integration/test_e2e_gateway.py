"""End to end: a real Ray cluster fed by a real broker, served by the real gRPC gateway on 127.0.0.1
with TLS and bearer tokens; clients see exactly what a single-process engine computes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actors.cluster import Cluster
from actors.gateway.client import GatewayClient
from actors.gateway.server import GatewayServer
from clustergnn import Engine, MutationBatch, UnknownVertexError
from clustergnn.config import Config, GatewayConfig
from clustergnn.serving import InvalidReadError, PartitionUnavailableError, StalenessDeadlineError
from streams.producer import MutationProducer
from tests.gateway.conftest import TOKENS, make_certs

pytestmark = pytest.mark.integration

F = 8


class Served:
    def __init__(self, cluster: Cluster, gateway: GatewayServer, certs, single: Engine) -> None:
        self.cluster, self.gateway, self.certs, self.single = cluster, gateway, certs, single

    def client(self, token: str | None = TOKENS[0], ca=None) -> GatewayClient:
        return GatewayClient(self.gateway.target, token=token, root_cert=ca or self.certs.ca)

    def check_exact(self, res, ids) -> None:
        ref = self.single.embeddings(ids).numpy()
        assert np.abs(res.embeddings - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5


@pytest.fixture(scope="module")
def served(ray_local, kafka_bootstrap, tmp_path_factory) -> Iterator[Served]:
    import uuid

    certs = make_certs(tmp_path_factory.mktemp("tls"))
    cfg = Config.from_dict(
        {
            "kafka": {"bootstrap": kafka_bootstrap, "topic": f"e2e-{uuid.uuid4().hex[:8]}", "poll_timeout_ms": 10},
            "cluster": {"partitions": 2, "actor_num_cpus": 0.5},
            "model": {"builtin": "sage", "in_dim": F, "hidden": 16, "out_dim": 4, "seed": 3},
            "graph": {"dataset": None},
        }
    )
    cluster = Cluster(cfg).start()
    gw = GatewayServer(
        cluster,
        GatewayConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=None,
            tls_cert=certs.cert,
            tls_key=certs.key,
            tokens=TOKENS,
            health_poll_interval_s=0.1,
        ),
    ).start()
    single = Engine.from_layers(cluster.layers, F)
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(np.arange(30), torch.randn(30, F, generator=torch.Generator().manual_seed(0))),
            MutationBatch.add_edges(np.arange(30), (np.arange(30) * 7 + 1) % 30),
        ]
    )
    single.bulk_load(init)
    with GatewayClient(gw.target, token=TOKENS[0], root_cert=certs.ca) as c:
        c.read(np.arange(30), min_offsets=c.apply(init), timeout_s=60)
    yield Served(cluster, gw, certs, single)
    gw.stop()
    cluster.stop()


def test_mutations_through_the_gateway_are_read_back_exactly(served: Served) -> None:
    b = MutationBatch.concat(
        [
            MutationBatch.add_edges([1, 2, 3], [4, 4, 5]),
            MutationBatch.remove_edges([8], [27]),
            MutationBatch.update_features([6], torch.full((1, F), 0.5)),
        ]
    )
    served.single.apply(b)
    with served.client() as c:
        offsets = c.apply(b)
        res = c.get_embeddings(np.arange(30), min_offsets=offsets, timeout_s=20)
    assert all(res.watermark[p] > o for p, o in offsets.items())
    served.check_exact(res, np.arange(30))


def test_a_write_retried_with_its_request_id_lands_once_in_the_log(served: Served) -> None:
    """Against the real cluster: the retry gets the first call's offsets, the log holds one copy (the next
    write lands right after it) and the embeddings equal DGL's with the edges added once."""
    b = MutationBatch.add_edges([10, 11], [12, 13])  # both edges route to the partitions of 12 and 13
    served.single.apply(b)
    with served.client() as c:
        first = c.apply(b, request_id="retry-test-1")
        again = c.apply(b, request_id="retry-test-1")
        nxt = c.apply(MutationBatch.update_features([12, 13], torch.full((2, F), 0.25)))
        assert again == first and all(nxt[p] == first[p] + 1 for p in first)
        served.single.apply(MutationBatch.update_features([12, 13], torch.full((2, F), 0.25)))
        res = c.get_embeddings(np.arange(30), min_offsets=nxt, timeout_s=20)
    served.check_exact(res, np.arange(30))


def test_mutations_straight_through_kafka_are_served_within_the_staleness_bound(served: Served) -> None:
    b = MutationBatch.add_edges([10, 11], [12, 12])
    served.single.apply(b)
    producer = MutationProducer(
        served.cluster.config.kafka.bootstrap, served.cluster.config.kafka.topic, served.cluster.pmap
    )
    producer.send(b)
    producer.close()
    time.sleep(0.3)  # produced more than 250 ms ago: any answer with that bound must reflect it
    with served.client() as c:
        res = c.get_embeddings(np.arange(30), max_staleness_ms=250, timeout_s=20)
    assert res.staleness_ms <= 250
    served.check_exact(res, np.arange(30))


def test_max_staleness_zero_through_the_gateway_is_every_mutation_produced_so_far(served: Served) -> None:
    """Idle and caught up, a bound-0 read answers OK with staleness 0 and the cluster's latest watermark;
    after a mutation produced straight through Kafka (the read names no offsets), a bound-0 read reflects
    it: read-your-writes through the bound alone."""
    with served.client() as c:
        res = c.get_embeddings(np.arange(30), max_staleness_ms=0, timeout_s=10)
        assert res.staleness_ms == 0.0
        assert res.watermark == served.cluster.watermark
        served.check_exact(res, np.arange(30))
        b = MutationBatch.concat(
            [MutationBatch.add_edges([20], [21]), MutationBatch.update_features([21], torch.full((1, F), -1.5))]
        )
        served.single.apply(b)
        kc = served.cluster.config.kafka
        with MutationProducer(kc.bootstrap, kc.topic, served.cluster.pmap) as producer:
            offsets = producer.send(b)  # acknowledged: in the log before the read below is sent
        res = c.get_embeddings(np.arange(30), max_staleness_ms=0, timeout_s=10)
    assert res.staleness_ms == 0.0
    assert all(res.watermark[p] > o for p, o in offsets.items())
    served.check_exact(res, np.arange(30))


def test_status_codes(served: Served) -> None:
    with served.client() as c:
        with pytest.raises(UnknownVertexError, match="999"):
            c.get_embeddings([1, 999])
        with pytest.raises(InvalidReadError, match="layer"):
            c.get_embeddings([1], layer=9)
        with pytest.raises(InvalidReadError, match="-1"):
            c.get_embeddings([1], max_staleness_ms=-1)
        with pytest.raises(StalenessDeadlineError):
            c.get_embeddings([1], min_offsets={0: 10**9}, timeout_s=0.5)
    with served.client(token=None) as c:
        with pytest.raises(grpc.RpcError) as e:
            c.get_embeddings([1])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with served.client(token="wrong-token-000000000") as c:
        with pytest.raises(grpc.RpcError) as e:
            c.get_embeddings([1])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with served.client(ca=served.certs.other_ca) as c:  # a server certificate we do not trust
        with pytest.raises(grpc.RpcError) as e:
            c.get_embeddings([1], timeout_s=2)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE


def test_watch_pushes_a_vertex_when_its_embedding_changes(served: Served) -> None:
    with served.client() as c:
        stream = c.watch([4])
        it = iter(stream)
        first = next(it)
        assert first.initial and first.vertex_ids.tolist() == [4]
        b = MutationBatch.add_edges([20, 21], [4, 4])
        served.single.apply(b)
        c.apply(b)
        update = next(it)
        stream.cancel()
    assert update.versions[0] > first.versions[0]
    ref = served.single.embeddings([4]).numpy()
    assert np.abs(update.embeddings - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))


def test_a_dead_partition_owner_turns_health_off_until_it_is_recovered(served: Served) -> None:
    """The owner dies: NOT_SERVING, reads that need an owner (layer 1) fail UNAVAILABLE saying it is
    recovering, final-layer reads still answer from the replica; then SERVING again by itself."""
    import ray

    channel = grpc.secure_channel(served.gateway.target, grpc.ssl_channel_credentials(served.certs.ca.read_bytes()))
    health = health_pb2_grpc.HealthStub(channel)
    service = "clustergnn.v1.EmbeddingService"
    check = lambda: health.Check(health_pb2.HealthCheckRequest(service=service)).status  # noqa: E731
    assert check() == health_pb2.HealthCheckResponse.SERVING
    with served.client() as c:
        before = c.get_embeddings([1], timeout_s=5)
        ray.kill(served.cluster.owners[1])  # a real failure: the owner process is gone
        seen, unavailable, answered = set(), False, False
        deadline = time.time() + 90
        while time.time() < deadline:
            seen.add(check())
            if served.cluster.recovery is not None:
                try:
                    c.get_embeddings([1], layer=0, timeout_s=2)
                except PartitionUnavailableError as e:
                    unavailable |= "recovering" in str(e)
                r = c.get_embeddings([1], timeout_s=2)
                answered |= np.array_equal(r.embeddings, before.embeddings)
            if health_pb2.HealthCheckResponse.NOT_SERVING in seen and check() == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.05)
        assert health_pb2.HealthCheckResponse.NOT_SERVING in seen
        assert check() == health_pb2.HealthCheckResponse.SERVING and served.cluster.recoveries
        assert unavailable and answered
        np.testing.assert_allclose(c.get_embeddings([1], timeout_s=5).embeddings, before.embeddings, atol=1e-5)
    channel.close()
