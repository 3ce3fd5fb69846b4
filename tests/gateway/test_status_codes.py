"""Every status code the gateway promises, over real gRPC on 127.0.0.1, with messages that name the
offending value; and the Python client maps each back to the contract's exception."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch

from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from actors.gateway.client import GatewayClient
from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.mutations import MutationBatch
from clustergnn.serving import InvalidReadError, PartitionUnavailableError, StalenessDeadlineError
from tests.gateway.conftest import GatewayFactory
from tests.gateway.fakes import FakeBackend

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _get(gw, **fields) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with grpc.insecure_channel(gw.target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        timeout = fields.pop("_timeout", 5)
        try:
            stub.GetEmbeddings(pb.GetEmbeddingsRequest(**fields), timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details(), {m.key: m.value for m in e.trailing_metadata() or ()}
    return grpc.StatusCode.OK, "", {}


def _apply(gw, req: pb.ApplyRequest) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(gw.target) as ch:
        try:
            pb_grpc.MutationServiceStub(ch).Apply(req, timeout=5)
        except grpc.RpcError as e:
            return e.code(), e.details()
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"vertex_ids": [1, 12345]}, "12345"),
        ({"vertex_ids": [1], "layer": 7}, "got 7"),
        ({"vertex_ids": [1], "layer": -3}, "got -3"),
        ({"vertex_ids": [1], "max_staleness_ms": -5.0}, "got -5.0"),
        ({"vertex_ids": [1], "max_staleness_ms": float("nan")}, "got nan"),
        ({"vertex_ids": []}, "empty"),
        ({"vertex_ids": list(range(11))}, "11 ids; at most 10"),
        ({"vertex_ids": [1], "min_offsets": pb.Offsets(offsets={0: -4})}, "{0: -4}"),
        ({"vertex_ids": [1], "min_offsets": pb.Offsets(offsets={9: 0})}, "partition 9"),
        ({"vertex_ids": [1], "format": 42}, "got 42"),
    ],
)
def test_invalid_argument_names_the_value(make_gateway: GatewayFactory, fields: dict, needle: str) -> None:
    gw = make_gateway(max_ids_per_request=10)
    code, details, trailing = _get(gw, **fields)
    assert code is INVALID, details
    assert needle in details
    assert trailing["clustergnn-error"] in {"UnknownVertexError", "InvalidReadError"}


def test_unknown_vertex_maps_back_to_unknown_vertex_error(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    with GatewayClient(gw.target) as c, pytest.raises(UnknownVertexError, match="vertex 777"):
        c.get_embeddings([1, 777])
    with GatewayClient(gw.target) as c, pytest.raises(InvalidReadError, match="got 9"):
        c.get_embeddings([1], layer=9)


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (pb.ApplyRequest(), "exactly one of arrow_ipc or mutations"),
        (pb.ApplyRequest(arrow_ipc=b"not arrow"), "not a readable Arrow IPC stream"),
        (pb.ApplyRequest(mutations=[pb.Mutation(kind=0, src=1)]), "mutations[0].kind must be one of"),
        (pb.ApplyRequest(mutations=[pb.Mutation(kind=1, src=1)]), "needs features"),
        (pb.ApplyRequest(mutations=[pb.Mutation(kind=3, src=1, dst=2, features=[1.0])]), "takes no features"),
        (
            pb.ApplyRequest(
                mutations=[pb.Mutation(kind=1, src=50, features=[1.0]), pb.Mutation(kind=5, src=2, features=[1.0, 2.0])]
            ),
            "widths [1, 2]",
        ),
        (pb.ApplyRequest(mutations=[pb.Mutation(kind=5, src=1, features=[float("inf")])]), "finite"),
        (pb.ApplyRequest(mutations=[pb.Mutation(kind=3, src=1, dst=2)] * 6), "6 mutations; at most 5"),
    ],
)
def test_malformed_mutations_are_invalid_argument(
    make_gateway: GatewayFactory, req: pb.ApplyRequest, needle: str
) -> None:
    gw = make_gateway(max_mutations_per_request=5)
    code, details = _apply(gw, req)
    assert code is INVALID, details
    assert needle in details


def test_mutation_error_maps_back(make_gateway: GatewayFactory) -> None:
    class Refusing(FakeBackend):
        def apply(self, batch: MutationBatch) -> dict[int, int]:
            raise MutationError(f"owner refused vertex {int(batch.src[0])}")

    gw = make_gateway(Refusing())
    with GatewayClient(gw.target) as c:
        with pytest.raises(MutationError, match="0 mutations"):
            c.apply(MutationBatch.empty())
        with pytest.raises(MutationError, match="owner refused vertex 1"):
            c.apply(MutationBatch.update_features([1], np.ones((1, 8), dtype=np.float32)))
        with pytest.raises(MutationError, match="3 wide; the served model reads 8"):  # checked at the gateway
            c.apply(MutationBatch.update_features([1], np.ones((1, 3), dtype=np.float32)))


def test_deadline_exceeded_when_bound_not_met(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(apply_delay_s=None)  # nothing becomes visible until advance()
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c:
        offsets = fake.apply(MutationBatch.add_edges([1], [2]))
        with pytest.raises(StalenessDeadlineError, match="bound not met"):
            c.get_embeddings([1], max_staleness_ms=0.0, timeout_s=0.2)
        with pytest.raises(StalenessDeadlineError, match="min_offsets"):
            c.get_embeddings([1], min_offsets=offsets, timeout_s=0.2)
        # without a bound the same read answers at once, saying how stale it is
        res = c.get_embeddings([1], timeout_s=0.2)
        assert res.staleness_ms > 0
    code, details, trailing = _get(gw, vertex_ids=[1], max_staleness_ms=0.0, _timeout=0.3)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert trailing.get("clustergnn-error") == "StalenessDeadlineError"


def test_server_default_deadline_caps_a_longer_client_deadline(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(apply_delay_s=None)
    gw = make_gateway(fake, default_deadline_s=0.1)
    with GatewayClient(gw.target) as c:
        fake.apply(MutationBatch.add_edges([1], [2]))
        with pytest.raises(StalenessDeadlineError):
            c.get_embeddings([1], max_staleness_ms=0.0, timeout_s=10.0)
    assert fake.last_timeout_s is not None and fake.last_timeout_s <= 0.1


def test_client_deadline_shorter_than_default_is_passed_to_the_backend(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake, default_deadline_s=5.0)
    with GatewayClient(gw.target) as c:
        c.get_embeddings([1], timeout_s=0.5)
    assert fake.last_timeout_s is not None and 0.3 < fake.last_timeout_s < 0.5
    with GatewayClient(gw.target) as c:
        c.get_embeddings([1], timeout_s=60.0)
    assert fake.last_timeout_s == pytest.approx(5.0)


def test_unavailable_when_a_partition_is_down(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake)
    fake.set_alive(1, False)
    code, details, trailing = _get(gw, vertex_ids=[1])
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "partition owner 1" in details
    with GatewayClient(gw.target) as c, pytest.raises(PartitionUnavailableError, match="owner 1"):
        c.get_embeddings([1])
    fake.set_alive(1, True)
    with GatewayClient(gw.target) as c:
        assert c.get_embeddings([1]).embeddings.shape == (1, 4)


def test_backend_bug_is_internal_and_logged(make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FakeBackend):
        def read(self, ids: np.ndarray, **kw: object):  # type: ignore[override]
            raise ZeroDivisionError("oops")

    gw = make_gateway(Broken())
    code, details, _ = _get(gw, vertex_ids=[1])
    assert code is grpc.StatusCode.INTERNAL
    assert "ZeroDivisionError: oops" in details
    assert any("GetEmbeddings failed" in r.getMessage() for r in caplog.records)


def test_unauthenticated_without_token(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tokens=("secret-token",))
    code, details, _ = _get(gw, vertex_ids=[1])
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in details


def test_resource_exhausted_beyond_max_watches(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_watches=1)
    with GatewayClient(gw.target) as c:
        with c.watch([1]) as first:
            next(iter(first))
            with c.watch([2]) as second, pytest.raises(grpc.RpcError) as info:
                next(iter(second))
            assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "at most 1" in info.value.details()


# ----------------------------------------------------------------------------- retried writes


def test_an_apply_retried_with_its_request_id_is_written_once(make_gateway, fake) -> None:
    import threading

    gw = make_gateway(fake)
    writes: list[int] = []
    real_apply = fake.apply

    def counting_apply(batch):
        writes.append(len(batch))
        time.sleep(0.2)  # a slow write: the concurrent retries below arrive while it runs
        return real_apply(batch)

    fake.apply = counting_apply
    req = convert.batch_to_request(MutationBatch.add_vertices([900, 901], torch.zeros(2, 8)))
    req.request_id = "client-7-write-1"
    answers: list[dict] = []

    def call() -> None:
        with grpc.insecure_channel(gw.target) as ch:
            answers.append(dict(pb_grpc.MutationServiceStub(ch).Apply(req, timeout=5).offsets))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    call()  # and once more after it finished
    assert writes == [2] and len(answers) == 4 and all(a == answers[0] for a in answers)

    other = convert.batch_to_request(MutationBatch.add_vertices([902], torch.zeros(1, 8)))
    other.request_id = "client-7-write-1"
    code, msg = _apply(gw, other)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "client-7-write-1" in msg and "already used" in msg
    other.request_id = "x" * 129
    code, msg = _apply(gw, other)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "129 characters" in msg
    req.request_id = ""  # no id: every call writes
    call()
    assert writes == [2, 2]


# ----------------------------------------------------------------------------- verdicts


def test_an_apply_answers_applied_once_visible(make_gateway) -> None:
    fake = FakeBackend(apply_delay_s=0.15)  # each record is applied 150 ms after it is written
    gw = make_gateway(fake)
    with grpc.insecure_channel(gw.target) as ch:
        stub = pb_grpc.MutationServiceStub(ch)
        t0 = time.monotonic()
        resp = stub.Apply(convert.batch_to_request(MutationBatch.add_edges([1], [3])), timeout=5)
        assert resp.state == pb.APPLY_STATE_APPLIED and time.monotonic() - t0 >= 0.1  # it waited for the owners
    with GatewayClient(gw.target) as c:
        assert c.get_embeddings([1, 3]).versions.tolist() == [1, 1]  # no bound needed: it is visible


def test_a_pending_write_learns_its_verdict_by_its_request_id(make_gateway) -> None:
    fake = FakeBackend(apply_delay_s=None)  # nothing is applied until advance()
    gw = make_gateway(fake)
    req = convert.batch_to_request(MutationBatch.add_edges([1], [3]))
    req.request_id = "w-1"
    with grpc.insecure_channel(gw.target) as ch:
        stub = pb_grpc.MutationServiceStub(ch)
        first = stub.Apply(req, timeout=0.3)
        assert first.state == pb.APPLY_STATE_PENDING and dict(first.offsets) == {1: 0}
        again = stub.Apply(req, timeout=0.3)
        assert again.state == pb.APPLY_STATE_PENDING and dict(again.offsets) == {1: 0}
        fake.advance()
        done = stub.Apply(req, timeout=5)
        assert done.state == pb.APPLY_STATE_APPLIED and dict(done.offsets) == {1: 0}
    assert len(fake._log[1]) == 1, "asked three times, written once"
    with GatewayClient(gw.target) as c:  # the client asks again by itself until its own deadline
        with pytest.raises(StalenessDeadlineError, match="Apply again with request_id"):
            c.apply(MutationBatch.add_edges([1], [3]), timeout_s=0.5)
