"""grpc.health.v1 follows the cluster: NOT_SERVING while a partition is down or status fails."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from actors.gateway.server import SERVICE_NAMES
from tests.gateway.conftest import GatewayFactory
from tests.gateway.fakes import FakeBackend

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _check(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def _eventually(pred: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_health_follows_partition_liveness(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake)
    assert _check(gw.target) == SERVING
    assert _check(gw.target, "clustergnn.v1.EmbeddingService") == SERVING
    fake.set_alive(0, False)  # the poller notices on its own
    assert _eventually(lambda: _check(gw.target) == NOT_SERVING)
    assert _check(gw.target, "clustergnn.v1.EmbeddingService") == NOT_SERVING
    # writes and status do not need the owners
    assert _check(gw.target, "clustergnn.v1.MutationService") == SERVING
    assert _check(gw.target, "clustergnn.v1.AdminService") == SERVING
    fake.set_alive(0, True)  # recovered
    assert _eventually(lambda: _check(gw.target) == SERVING)


def test_failing_status_is_not_serving(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake, health_poll_interval_s=60)  # driven by hand
    fake.status_error = RuntimeError("coordinator unreachable")
    assert gw.monitor.poll_once() is False
    assert _check(gw.target) == NOT_SERVING
    fake.status_error = None
    assert gw.monitor.poll_once() is True
    assert _check(gw.target) == SERVING


def test_override_and_watch_stream(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(FakeBackend(), health_poll_interval_s=60)
    with grpc.insecure_channel(gw.target) as ch:
        stream = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        seen = [next(stream).status]
        gw.set_healthy(False)
        seen.append(next(stream).status)
        gw.set_healthy(None)
        seen.append(next(stream).status)
        stream.cancel()
    assert seen == [SERVING, NOT_SERVING, SERVING]


def test_stopping_gateway_goes_not_serving(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(FakeBackend())
    gw.monitor.stop()  # what stop() does first, before it refuses new calls
    assert _check(gw.target) == NOT_SERVING


def test_reflection_lists_service_names(make_gateway: GatewayFactory) -> None:
    gw = make_gateway()
    with grpc.insecure_channel(gw.target) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert set(SERVICE_NAMES) <= services
        assert {
            "clustergnn.v1.EmbeddingService",
            "clustergnn.v1.MutationService",
            "clustergnn.v1.AdminService",
            "grpc.health.v1.Health",
        } <= services
        fd = db.FindFileContainingSymbol("clustergnn.v1.EmbeddingService")
        assert fd.name == "clustergnn/v1/clustergnn.proto" and fd.package == "clustergnn.v1"
