"""Freshness through the protocol: staleness bounds, read-your-writes with Apply's offsets, and the
answer's self-description (versions, staleness_ms, watermark, layer)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway.client import GatewayClient
from clustergnn.freshness import FakeClock
from clustergnn.mutations import MutationBatch
from clustergnn.serving import StalenessDeadlineError
from tests.gateway.conftest import GatewayFactory
from tests.gateway.fakes import FakeBackend

DELAY_S = 0.15


def test_read_your_writes(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(apply_delay_s=DELAY_S)  # the cluster applies each record 150 ms after produce
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c:
        before = c.get_embeddings([1, 3])
        assert before.versions.tolist() == [0, 0] and before.staleness_ms == 0.0
        offsets = fake.apply(MutationBatch.add_edges([1], [3]))
        assert offsets == {1: 0}  # Kafka partition src % 2, first record
        stale = c.get_embeddings([1, 3])  # no bound: answers now, says it is behind
        assert stale.versions.tolist() == [0, 0]
        assert stale.watermark[1] == 0 and stale.staleness_ms >= 0.0
        t0 = time.monotonic()
        fresh = c.get_embeddings([1, 3], min_offsets=offsets)
        assert time.monotonic() - t0 > DELAY_S / 2  # it waited for the write
        assert fresh.versions.tolist() == [1, 1]
        assert fresh.watermark[1] > offsets[1]
        np.testing.assert_array_equal(fresh.embeddings[0], fake.expected(1))


def test_staleness_bound_is_honoured(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(apply_delay_s=DELAY_S)
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c:
        fake.apply(MutationBatch.update_features([2], np.ones((1, 8), dtype=np.float32)))
        loose = c.get_embeddings([2], max_staleness_ms=10_000)
        assert loose.versions.tolist() == [0]  # allowed to be behind
        strict = c.get_embeddings([2], max_staleness_ms=0)
        assert strict.versions.tolist() == [1] and strict.staleness_ms <= 0.0 + 1e-9
        # several writes: each answer's staleness is within its bound
        for i in range(3):
            fake.apply(MutationBatch.update_features([2], np.full((1, 8), i, dtype=np.float32)))
            res = c.get_embeddings([2], max_staleness_ms=50)
            assert res.staleness_ms <= 50


class _StillWall(FakeClock):
    """Wall time moves only when told (exact staleness figures); deadlines run on the real monotonic clock,
    so a read that waits (if answer_now were lost on the way) times out instead of spinning forever."""

    def monotonic_ms(self) -> float:
        return time.monotonic() * 1000.0


def test_answer_now_answers_with_what_is_visible_and_whether_the_bound_held(make_gateway: GatewayFactory) -> None:
    clock = _StillWall()
    fake = FakeBackend(apply_delay_s=None, clock=clock)  # nothing is applied until advance()
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c:
        assert c.get_embeddings([2], max_staleness_ms=0, answer_now=True).bound_met  # nothing pending: holds
        offsets = fake.apply(MutationBatch.update_features([2], np.ones((1, 8), dtype=np.float32)))
        (p,) = offsets
        clock.advance(30)  # the write has waited 30 ms
        for bound in ({"min_offsets": offsets}, {"max_staleness_ms": 10.0}):
            res = c.get_embeddings([2], answer_now=True, **bound)
            assert not res.bound_met
            assert res.versions.tolist() == [0]  # what is visible: the write is not
            assert res.watermark[p] == offsets[p]  # ... and how far off it is: the record at offsets[p] is next
            assert res.staleness_ms == 30.0  # its true staleness
            np.testing.assert_array_equal(res.embeddings[0], fake.expected(2, version=0))
        assert c.get_embeddings([2], max_staleness_ms=30, answer_now=True).bound_met  # 30 ms is within 30
        with pytest.raises(StalenessDeadlineError):  # without answer_now the same bound waits, then fails
            c.get_embeddings([2], min_offsets=offsets, timeout_s=0.3)
        fake.advance()
        res = c.get_embeddings([2], min_offsets=offsets, answer_now=True)
        assert res.bound_met and res.versions.tolist() == [1] and res.staleness_ms == 0.0
        waited = c.get_embeddings([2], min_offsets=offsets)  # a waiting read is always met when it answers
        assert waited.bound_met and waited.versions.tolist() == [1]
    text = gw.metrics.render().decode()
    assert "clustergnn_gateway_bound_unmet_total 2.0" in text


def test_answer_describes_itself(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(dims=(6, 3))
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c:
        res = c.get_embeddings([7, 7, 0])  # duplicates answered in place
        assert res.layer == 1 and res.embeddings.shape == (3, 3) and res.embeddings.dtype == np.float32
        np.testing.assert_array_equal(res.embeddings[0], res.embeddings[1])
        res0 = c.get_embeddings([7], layer=-2)
        assert res0.layer == 0 and res0.embeddings.shape == (1, 6)
    import grpc

    from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc

    with grpc.insecure_channel(gw.target) as ch:
        t = time.time() * 1000
        raw = pb_grpc.EmbeddingServiceStub(ch).GetEmbeddings(pb.GetEmbeddingsRequest(vertex_ids=[7, 0]), timeout=5)
    assert list(raw.vertex_ids) == [7, 0]
    assert raw.embeddings.format == pb.EMBEDDING_FORMAT_RAW_F32
    assert len(raw.embeddings.data) == 2 * 3 * 4
    expected = np.stack([fake.expected(7), fake.expected(0)]).astype("<f4").tobytes()
    assert raw.embeddings.data == expected  # little-endian float32, row-major
    assert abs(raw.answered_at_unix_ms - t) < 5_000


def test_arrow_and_raw_embeddings_agree(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    with GatewayClient(gw.target) as c:
        a = c.get_embeddings([1, 2, 3], arrow=True)
        r = c.get_embeddings([1, 2, 3])
    np.testing.assert_array_equal(a.embeddings, r.embeddings)


@pytest.mark.parametrize("arrow", [True, False], ids=["arrow_ipc", "repeated"])
def test_apply_forms_carry_the_same_batch(make_gateway: GatewayFactory, arrow: bool) -> None:
    seen: list[MutationBatch] = []

    class Recording(FakeBackend):
        def apply(self, batch: MutationBatch) -> dict[int, int]:
            seen.append(batch)
            return super().apply(batch)

    gw = make_gateway(Recording())
    feats = np.arange(16, dtype=np.float32).reshape(2, 8)  # the fake model reads 8
    batch = MutationBatch.concat(
        [
            MutationBatch.add_vertices([100, 101], feats),
            MutationBatch.add_edges([100], [101], bidirectional=True),
            MutationBatch.update_features([100], feats[:1] + 1),
            MutationBatch.remove_edges([100], [101]),
            MutationBatch.remove_vertices([101]),
        ]
    )
    with GatewayClient(gw.target) as c:
        offsets = c.apply(batch, arrow=arrow)
        # edges route to their destination's owner (as the real producer routes): partition 0 holds
        # add_vertex 100, edge 101->100 and the update of 100; partition 1 the other four
        assert offsets == {0: 2, 1: 3}
        assert c.get_embeddings([100], min_offsets=offsets).versions.tolist() == [4]
    (got,) = seen
    np.testing.assert_array_equal(got.kind, batch.kind)
    np.testing.assert_array_equal(got.src, batch.src)
    np.testing.assert_array_equal(got.dst, batch.dst)
    np.testing.assert_array_equal(got.features.numpy(), batch.features.numpy())


def test_edge_only_batches_round_trip_through_arrow() -> None:
    batch = MutationBatch.add_edges([1, 2], [3, 4])
    req = convert.batch_to_request(batch, arrow=True)
    back = convert.request_to_batch(req, max_mutations=10)
    np.testing.assert_array_equal(back.src, batch.src)
    assert back.feature_dim == 0
