"""Watch pushes a vertex's new embedding when its version changes, and ends cleanly on cancel."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from actors.gateway.client import GatewayClient, WatchUpdate
from clustergnn.mutations import MutationBatch
from tests.gateway.conftest import GatewayFactory
from tests.gateway.fakes import FakeBackend


def _next(it, timeout_s: float = 3.0) -> WatchUpdate:
    """The next message, or the stream's exception, failing after ``timeout_s`` instead of hanging."""
    box: list = []

    def pull() -> None:
        try:
            box.append(("ok", next(it)))
        except BaseException as e:  # handed to the test thread
            box.append(("err", e))

    t = threading.Thread(target=pull, daemon=True)
    t.start()
    t.join(timeout_s)
    assert box, f"no Watch message within {timeout_s} s"
    kind, value = box[0]
    if kind == "err":
        raise value
    return value


@pytest.mark.parametrize("arrow", [False, True], ids=["raw", "arrow"])
def test_initial_then_changes_only(make_gateway: GatewayFactory, arrow: bool) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c, c.watch([1, 2, 3], arrow=arrow) as stream:
        it = iter(stream)
        first = _next(it)
        assert first.initial
        assert first.vertex_ids.tolist() == [1, 2, 3] and first.versions.tolist() == [0, 0, 0]
        np.testing.assert_array_equal(first.embeddings[1], fake.expected(2))
        fake.bump(2)
        upd = _next(it)
        assert not upd.initial
        assert upd.vertex_ids.tolist() == [2] and upd.versions.tolist() == [1]
        np.testing.assert_array_equal(upd.embeddings, fake.expected(2)[None, :])
        # a mutation written through the gateway reaches watchers too
        c.apply(MutationBatch.update_features([3], np.ones((1, 8), dtype=np.float32)))
        upd = _next(it)
        assert upd.vertex_ids.tolist() == [3] and upd.versions.tolist() == [1]
        assert upd.watermark[1] >= 1


def test_layer_is_respected(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(dims=(8, 4))
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c, c.watch([5], layer=0) as stream:
        first = _next(iter(stream))
        assert first.layer == 0 and first.embeddings.shape == (1, 8)
        np.testing.assert_array_equal(first.embeddings[0], fake.expected(5, layer=0))


def test_cancel_ends_the_stream_and_frees_the_slot(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(FakeBackend(), max_watches=1)
    with GatewayClient(gw.target) as c:
        stream = c.watch([1])
        it = iter(stream)
        _next(it)
        stream.cancel()
        assert list(it) == []  # ends quietly for the client that cancelled
        end = time.monotonic() + 3
        while gw.metrics.active_watches._value.get() and time.monotonic() < end:
            time.sleep(0.01)
        assert gw.metrics.active_watches._value.get() == 0
        with c.watch([2]) as again:  # the slot is free again
            assert _next(iter(again)).vertex_ids.tolist() == [2]


def test_removed_vertex_ends_with_invalid_argument(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c, c.watch([4]) as stream:
        it = iter(stream)
        _next(it)
        c.apply(MutationBatch.remove_vertices([4]))
        with pytest.raises(Exception, match="vertex 4") as info:
            _next(it)
        assert type(info.value).__name__ == "UnknownVertexError"


def test_partition_down_ends_with_unavailable(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend()
    gw = make_gateway(fake)
    with GatewayClient(gw.target) as c, c.watch([4]) as stream:
        it = iter(stream)
        _next(it)
        fake.set_alive(0, False)
        with pytest.raises(Exception, match="owner 0") as info:
            _next(it)
        assert type(info.value).__name__ == "PartitionUnavailableError"


def test_bad_watch_request_is_invalid_argument(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(max_ids_per_request=2)
    with GatewayClient(gw.target) as c:
        for ids, layer, needle in (([], None, "empty"), ([1, 2, 3], None, "3 ids"), ([1], 5, "got 5")):
            with c.watch(ids, layer=layer) as stream, pytest.raises(Exception, match=needle) as info:
                _next(iter(stream))
            assert type(info.value).__name__ == "InvalidReadError"


def test_server_stop_ends_open_watches(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(FakeBackend())
    with GatewayClient(gw.target) as c:
        stream = c.watch([1])
        it = iter(stream)
        _next(it)
        gw.stop(grace_s=0.1)
        with pytest.raises(grpc.RpcError):
            _next(it)
