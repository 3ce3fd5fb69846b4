"""A small Python client of the gateway.

:class:`GatewayClient` speaks the serving contract too (``read``/``apply``/``status`` as in
:class:`~clustergnn.serving.EmbeddingBackend`), so code written against a backend also runs against a
remote gateway, and the gateway's errors come back as the same exceptions (from the
``clustergnn-error`` trailing metadata the server attaches).

    with GatewayClient("127.0.0.1:50051", token="...", root_cert="ca.pem") as c:
        offsets = c.apply(MutationBatch.add_edges([1], [2]))
        res = c.get_embeddings([1, 2], min_offsets=offsets)   # read your writes
        print(res.embeddings.shape, res.versions, res.staleness_ms, res.watermark)
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import numpy as np

from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from actors.gateway.auth import bearer_metadata
from actors.gateway.servicers import ERROR_METADATA_KEY
from clustergnn.config import is_loopback
from clustergnn.errors import MutationError, UnknownVertexError, WriteRejectedError
from clustergnn.mutations import MutationBatch
from clustergnn.serving import (
    ClusterStatus,
    InvalidReadError,
    Offsets,
    PartitionUnavailableError,
    ReadResult,
    StalenessDeadlineError,
)

logger = logging.getLogger(__name__)

_ERRORS: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        UnknownVertexError,
        InvalidReadError,
        MutationError,
        WriteRejectedError,
        StalenessDeadlineError,
        PartitionUnavailableError,
    )
}


@dataclass(frozen=True)
class WatchUpdate:
    """One push of a Watch stream: the vertices whose embedding changed (all of them when ``initial``)."""

    initial: bool
    vertex_ids: np.ndarray
    versions: np.ndarray
    embeddings: np.ndarray
    staleness_ms: float
    watermark: dict[int, int]
    layer: int


class WatchStream:
    """Iterate for :class:`WatchUpdate` values; :meth:`cancel` (or leaving ``with``) ends the stream."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Iterator[WatchUpdate]:
        try:
            for m in self._call:
                yield WatchUpdate(
                    initial=m.initial,
                    vertex_ids=np.asarray(m.vertex_ids, dtype=np.int64),
                    versions=np.asarray(m.versions, dtype=np.int64),
                    embeddings=convert.decode_matrix(m.embeddings),
                    staleness_ms=m.staleness_ms,
                    watermark=dict(m.watermark),
                    layer=m.layer,
                )
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.CANCELLED and self._call.cancelled():
                return
            raise _translate(e) from e

    def cancel(self) -> None:
        self._call.cancel()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()


def _translate(e: grpc.RpcError) -> Exception:
    """The clustergnn exception the server named, else the RpcError itself."""
    trailing = e.trailing_metadata() if hasattr(e, "trailing_metadata") else None
    for m in trailing or ():
        if m.key == ERROR_METADATA_KEY and m.value in _ERRORS:
            return _ERRORS[m.value](e.details())
    return e


def _is_loopback_target(target: str) -> bool:
    return is_loopback(target.rsplit(":", 1)[0].strip("[]") if ":" in target else target)


class GatewayClient:
    """A connection to one gateway.

    Args:
        target: ``host:port``.
        token: bearer token sent on every call (None: none sent).
        root_cert: PEM bytes or a path of the CA that signed the server's certificate; turns TLS on.
        tls: use TLS with the system's root certificates (implied by ``root_cert``).
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        root_cert: bytes | str | Path | None = None,
        *,
        tls: bool | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        use_tls = bool(tls) or root_cert is not None
        if token is not None and not use_tls and not _is_loopback_target(target):
            raise ValueError(f"refusing to send a bearer token in plaintext to non-loopback target {target!r}; use TLS")
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A gateway restarts (a rollout, a driver recovery): reconnect within a second or two, not
            # after gRPC's default backoff of up to 120 s, and never through another client's subchannel
            # that is still backing off (channels to one target share subchannels by default).
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if use_tls:
            pem = Path(root_cert).read_bytes() if isinstance(root_cert, (str, Path)) else root_cert
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem), options)
        else:
            self._channel = grpc.insecure_channel(target, options)
        self._metadata = bearer_metadata(token) if token is not None else None
        self._emb = pb_grpc.EmbeddingServiceStub(self._channel)
        self._mut = pb_grpc.MutationServiceStub(self._channel)
        self._admin = pb_grpc.AdminServiceStub(self._channel)
        self.target = target

    # ------------------------------------------------------------------ embeddings
    def get_embeddings(
        self,
        ids: Sequence[int] | np.ndarray,
        *,
        layer: int | None = None,
        max_staleness_ms: float | None = None,
        min_offsets: Offsets | None = None,
        timeout_s: float = 5.0,
        arrow: bool = False,
        input_features: bool = False,
        answer_now: bool = False,
    ) -> ReadResult:
        """Embeddings of ``ids`` as numpy (``res.embeddings``: ``(n, D)`` float32) with their freshness.

        ``layer``: ``0 .. L-1`` (layer ``i``'s output) or negative from the last; ``None`` = the final
        embeddings.  ``input_features=True`` reads the stored input features instead (``layer`` unset).
        ``max_staleness_ms`` / ``min_offsets``: the call waits for them up to ``timeout_s``
        (``StalenessDeadlineError``), or with ``answer_now=True`` answers at once with what is visible and
        ``res.bound_met`` says whether they held."""
        req = pb.GetEmbeddingsRequest(
            vertex_ids=np.asarray(ids, dtype=np.int64).tolist(),
            format=convert.ARROW if arrow else convert.RAW,
            input_features=input_features,
            answer_now=answer_now,
        )
        if layer is not None:
            req.layer = layer
        if max_staleness_ms is not None:
            req.max_staleness_ms = max_staleness_ms
        if min_offsets is not None:
            req.min_offsets.offsets.update({int(k): int(v) for k, v in min_offsets.items()})
        try:
            resp = self._emb.GetEmbeddings(req, timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _translate(e) from e
        return convert.response_to_read_result(resp)

    def read(
        self,
        ids: np.ndarray,
        *,
        layer: int | None = None,
        max_staleness_ms: float | None = None,
        min_offsets: Offsets | None = None,
        timeout_s: float = 5.0,
        input_features: bool = False,
        answer_now: bool = False,
    ) -> ReadResult:
        """:meth:`EmbeddingBackend.read` over the wire."""
        return self.get_embeddings(
            ids,
            layer=layer,
            max_staleness_ms=max_staleness_ms,
            min_offsets=min_offsets,
            timeout_s=timeout_s,
            input_features=input_features,
            answer_now=answer_now,
        )

    def watch(
        self,
        ids: Sequence[int] | np.ndarray,
        *,
        layer: int | None = None,
        min_interval_ms: int = 0,
        arrow: bool = False,
    ) -> WatchStream:
        req = pb.WatchRequest(
            vertex_ids=np.asarray(ids, dtype=np.int64).tolist(),
            format=convert.ARROW if arrow else convert.RAW,
            min_interval_ms=min_interval_ms,
        )
        if layer is not None:
            req.layer = layer
        return WatchStream(self._emb.Watch(req, metadata=self._metadata))

    # ------------------------------------------------------------------ mutations, status
    def apply(
        self,
        batch: MutationBatch,
        *,
        arrow: bool = True,
        timeout_s: float = 30.0,
        request_id: str | None = None,
        retries: int = 3,
    ) -> dict[int, int]:
        """Write ``batch`` and wait until it is applied whole; returns Kafka partition -> offset of its
        record (a read with these ``min_offsets`` sees it).  ``WriteRejectedError`` (naming the partition
        and the mutation) when the owners rejected it: nothing of it applied.

        The call carries a ``request_id`` (a fresh UUID unless given) and is retried up to ``retries`` times
        on UNAVAILABLE or DEADLINE_EXCEEDED with the same id, so the gateway writes it once
        (docs/gateway.md, "Retrying writes"); a PENDING answer (no verdict yet) is asked again with the
        same id until ``timeout_s`` has passed, then ``StalenessDeadlineError``."""
        req = convert.batch_to_request(batch, arrow=arrow)
        req.request_id = request_id if request_id is not None else uuid.uuid4().hex
        retry_on = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            try:
                left = max(0.05, deadline - time.monotonic())
                resp = self._mut.Apply(req, timeout=left, metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() not in retry_on or attempt >= retries:
                    raise _translate(e) from e
                attempt += 1
                time.sleep(min(2.0, 0.1 * 2**attempt))
                continue
            if resp.state != pb.APPLY_STATE_PENDING:
                return dict(resp.offsets)
            if time.monotonic() >= deadline:
                raise StalenessDeadlineError(
                    f"write {req.request_id} is in the log at offsets {dict(resp.offsets)} but the owners gave no "
                    f"verdict within {timeout_s}s; Apply again with request_id={req.request_id!r} to learn it"
                )

    def status(self, *, timeout_s: float = 5.0) -> ClusterStatus:
        try:
            resp = self._admin.Status(pb.StatusRequest(), timeout=timeout_s, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _translate(e) from e
        return convert.proto_to_status(resp)

    def apply_raw(self, request: pb.ApplyRequest, *, timeout_s: float = 30.0) -> pb.ApplyResponse:
        """Send a hand-built ApplyRequest (tests, other encodings)."""
        return self._mut.Apply(request, timeout=timeout_s, metadata=self._metadata)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
