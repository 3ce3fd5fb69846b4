"""The ``clustergnn.v1`` servicers over any :class:`~clustergnn.serving.EmbeddingBackend`.

They validate requests (naming the bad value and the allowed range), call the backend, map its
errors to gRPC status codes, and record metrics.  Every error carries trailing metadata
``clustergnn-error: <exception class>`` so the Python client can re-raise the same exception.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np

from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from actors.gateway.metrics import GatewayMetrics
from clustergnn.config import GatewayConfig
from clustergnn.errors import MutationError, UnknownVertexError, WriteRejectedError
from clustergnn.serving import (
    ClusterStatus,
    EmbeddingBackend,
    InvalidReadError,
    PartitionUnavailableError,
    StalenessDeadlineError,
    resolve_read,
)

logger = logging.getLogger(__name__)

ERROR_METADATA_KEY = "clustergnn-error"
# The server answers a read a little before the client's deadline so the client gets the server's
# DEADLINE_EXCEEDED message (what was not met) rather than a bare local timeout.
DEADLINE_MARGIN_S = 0.005

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (UnknownVertexError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidReadError, grpc.StatusCode.INVALID_ARGUMENT),
    (MutationError, grpc.StatusCode.INVALID_ARGUMENT),
    (WriteRejectedError, grpc.StatusCode.FAILED_PRECONDITION),
    (StalenessDeadlineError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PartitionUnavailableError, grpc.StatusCode.UNAVAILABLE),
)


class _Refused(Exception):
    """A refusal that is not one of the contract's errors (e.g. too many watches)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _classify(e: BaseException) -> grpc.StatusCode:
    if isinstance(e, _Refused):
        return e.code
    for cls, code in _CODES:
        if isinstance(e, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, e: BaseException, method: str) -> grpc.StatusCode:
    code = _classify(e)
    if code is grpc.StatusCode.INTERNAL:
        logger.exception("%s failed", method)
        message = f"internal error in {method}: {type(e).__name__}: {e}"
    else:
        message = str(e)
    context.set_trailing_metadata(((ERROR_METADATA_KEY, type(e).__name__),))
    context.abort(code, message)
    return code  # unreachable: abort raises


R = TypeVar("R")


class _Base:
    """``latest_status``: the health monitor's last ``ClusterStatus`` (the served model's layers and input
    width), or None before the first poll (then the backend checks what the gateway cannot)."""

    def __init__(
        self,
        backend: EmbeddingBackend,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        latest_status: Callable[[], ClusterStatus | None] = lambda: None,
    ) -> None:
        self._backend = backend
        self._config = config
        self._metrics = metrics
        self._latest_status = latest_status

    def _timeout_s(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        timeout = self._config.default_deadline_s
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining - DEADLINE_MARGIN_S))
        return timeout

    def _unary(self, method: str, context: grpc.ServicerContext, fn: Callable[[], R]) -> R:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return fn()
        except Exception as e:
            code = _classify(e)
            _abort(context, e, method)
            raise  # unreachable
        finally:
            self._metrics.observe(method, code, time.perf_counter() - t0)


class EmbeddingServicer(_Base, pb_grpc.EmbeddingServiceServicer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch_slots = threading.BoundedSemaphore(self._config.max_watches)

    # ------------------------------------------------------------------ validation
    def _ids(self, values: Any) -> np.ndarray:
        n = len(values)
        limit = self._config.max_ids_per_request
        if n == 0:
            raise InvalidReadError(f"vertex_ids is empty; give 1..{limit} ids")
        if n > limit:
            raise InvalidReadError(f"vertex_ids has {n} ids; at most {limit} allowed per request")
        return np.fromiter(values, dtype=np.int64, count=n)

    def _layer(self, request: Any) -> int | None:
        """The requested layer (``None`` = unset = the final embeddings), checked against the served
        model's layer count (known from the last health poll; before the first one the backend checks
        it, with the same rule: ``clustergnn.serving.resolve_read``)."""
        layer = request.layer if request.HasField("layer") else None
        features = bool(getattr(request, "input_features", False))
        st = self._latest_status()
        if features or (st is not None and st.num_layers > 0):
            resolve_read(layer, st.num_layers if st is not None else 1, features)  # raises naming the range
        return layer

    @staticmethod
    def _format(fmt: int) -> int:
        try:
            return convert.resolve_format(fmt)
        except ValueError as e:
            raise InvalidReadError(str(e)) from None

    # ------------------------------------------------------------------ RPCs
    def GetEmbeddings(
        self, request: pb.GetEmbeddingsRequest, context: grpc.ServicerContext
    ) -> pb.GetEmbeddingsResponse:
        return self._unary("GetEmbeddings", context, lambda: self._get(request, context))

    def _get(self, request: pb.GetEmbeddingsRequest, context: grpc.ServicerContext) -> pb.GetEmbeddingsResponse:
        ids = self._ids(request.vertex_ids)
        layer = self._layer(request)
        bound: float | None = None
        if request.HasField("max_staleness_ms"):
            bound = request.max_staleness_ms
            if not (math.isfinite(bound) and bound >= 0):
                raise InvalidReadError(f"max_staleness_ms must be a finite number >= 0, got {bound}")
        min_offsets: dict[int, int] | None = None
        if request.HasField("min_offsets"):
            min_offsets = dict(request.min_offsets.offsets)
            for p, off in sorted(min_offsets.items()):
                if p < 0 or off < 0:
                    raise InvalidReadError(f"min_offsets must map partitions >= 0 to offsets >= 0, got {{{p}: {off}}}")
        fmt = self._format(request.format)
        self._metrics.ids_per_request.observe(len(ids))
        res = self._backend.read(
            ids,
            layer=layer,
            max_staleness_ms=bound,
            min_offsets=min_offsets,
            timeout_s=self._timeout_s(context),
            input_features=request.input_features,
            answer_now=request.answer_now,
        )
        self._metrics.served_staleness_ms.observe(res.staleness_ms)
        if not res.bound_met:
            self._metrics.bound_unmet.inc()
        return convert.read_result_to_response(res, ids, fmt, int(time.time() * 1000))

    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Iterator[pb.WatchResponse]:
        t0 = time.perf_counter()
        code = grpc.StatusCode.OK
        acquired = False
        try:
            ids = self._ids(request.vertex_ids)
            layer = self._layer(request)
            fmt = self._format(request.format)
            if not self._watch_slots.acquire(blocking=False):
                raise _Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"too many Watch streams: at most {self._config.max_watches} at once on this gateway",
                )
            acquired = True
            self._metrics.active_watches.inc()
            yield from self._watch(ids, layer, fmt, request.min_interval_ms / 1000.0, context)
        except Exception as e:
            code = _classify(e)
            _abort(context, e, "Watch")
        finally:
            if acquired:
                self._watch_slots.release()
                self._metrics.active_watches.dec()
            self._metrics.observe("Watch", code, time.perf_counter() - t0)

    def _watch(
        self, ids: np.ndarray, layer: int, fmt: int, min_interval_s: float, context: grpc.ServicerContext
    ) -> Iterator[pb.WatchResponse]:
        stop = threading.Event()
        context.add_callback(stop.set)  # runs when the client cancels or the call ends
        interval_s = max(self._config.watch_poll_interval_s, min_interval_s)
        last: np.ndarray | None = None
        while context.is_active() and not stop.is_set():
            res = self._backend.read(ids, layer=layer, timeout_s=self._config.default_deadline_s)
            versions = np.asarray(res.versions, dtype=np.int64)
            changed = np.ones(len(ids), dtype=bool) if last is None else versions != last
            if changed.any():
                sel_ids, sel_versions = ids[changed], versions[changed]
                yield pb.WatchResponse(
                    initial=last is None,
                    vertex_ids=sel_ids.tolist(),
                    versions=sel_versions.tolist(),
                    embeddings=convert.encode_matrix(np.asarray(res.embeddings)[changed], sel_ids, sel_versions, fmt),
                    staleness_ms=float(res.staleness_ms),
                    watermark={int(k): int(v) for k, v in res.watermark.items()},
                    layer=int(res.layer),
                    answered_at_unix_ms=int(time.time() * 1000),
                    model_digest=res.model_digest,
                )
            last = versions
            stop.wait(interval_s)


class MutationServicer(_Base, pb_grpc.MutationServiceServicer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dedup = ApplyDedup(self._config.apply_dedup_window_s)

    def Apply(self, request: pb.ApplyRequest, context: grpc.ServicerContext) -> pb.ApplyResponse:
        return self._unary("Apply", context, lambda: self._apply(request, self._timeout_s(context)))

    def _apply(self, request: pb.ApplyRequest, timeout_s: float) -> pb.ApplyResponse:
        rid = request.request_id
        if len(rid) > MAX_REQUEST_ID_CHARS:
            raise MutationError(f"request_id is {len(rid)} characters; at most {MAX_REQUEST_ID_CHARS}")
        if not rid:
            resp, txn_id = self._write(request, uuid.uuid4().hex)
            return self._verdict(resp, txn_id, timeout_s)
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        entry, first = self._dedup.claim(rid, digest)
        if not first:
            resp = entry.wait()  # a retry: the first call's write (or its error), nothing written again
            return self._verdict(resp, entry.txn_id, timeout_s)
        # the transaction id is the request's: owners that applied it once skip a copy written again through
        # another gateway or after a restart (clustergnn.txn.CommittedTxns); other mutations, another id
        txn_id = f"r.{hashlib.sha256(rid.encode()).hexdigest()[:32]}.{digest[:32]}"
        try:
            resp, entry.txn_id = self._write(request, txn_id)
        except BaseException as exc:
            self._dedup.fail(rid, entry, exc)  # nothing was written: a retry may try again
            raise
        entry.done(resp)
        return self._verdict(resp, entry.txn_id, timeout_s)

    def _verdict(self, written: pb.ApplyResponse, txn_id: str | None, timeout_s: float) -> pb.ApplyResponse:
        """The owners' verdict on a written transaction: APPLIED, PENDING (not known within ``timeout_s``),
        or ``WriteRejectedError`` (FAILED_PRECONDITION: nothing of it applied)."""
        resp = pb.ApplyResponse()
        resp.CopyFrom(written)
        if txn_id is None:  # a backend that does not judge writes: written, state unspecified
            return resp
        try:
            applied = self._backend.await_txn(txn_id, dict(written.offsets), timeout_s)
        except WriteRejectedError:
            self._metrics.mutations_rejected.inc(written.num_mutations)
            raise
        resp.state = pb.APPLY_STATE_APPLIED if applied else pb.APPLY_STATE_PENDING
        return resp

    def _write(self, request: pb.ApplyRequest, txn_id: str) -> tuple[pb.ApplyResponse, str | None]:
        batch = convert.request_to_batch(request, self._config.max_mutations_per_request)
        if len(batch) == 0:
            raise MutationError("request holds 0 mutations; give at least 1")
        st = self._latest_status()
        width = st.model.dims[0] if st is not None and st.model is not None else None
        if width is not None and batch.features.shape[0] and batch.features.shape[1] != width:
            raise MutationError(
                f"features are {batch.features.shape[1]} wide; the served model reads {width} "
                "(the whole request is rejected, nothing was written)"
            )
        if hasattr(self._backend, "apply_txn"):
            offsets = self._backend.apply_txn(batch, txn_id)
        else:
            offsets, txn_id = self._backend.apply(batch), None
        self._metrics.mutations_written.inc(len(batch))
        resp = pb.ApplyResponse(offsets={int(k): int(v) for k, v in offsets.items()}, num_mutations=len(batch))
        return resp, txn_id


MAX_REQUEST_ID_CHARS = 128


class _Pending:
    """One request id's call: in flight until :meth:`done`; retries wait for it."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.txn_id: str | None = None  # the write's transaction, set once it is written
        self.at = time.monotonic()
        self._done = threading.Event()
        self._resp: pb.ApplyResponse | None = None

    def done(self, resp: pb.ApplyResponse) -> None:
        self._resp = resp
        self._done.set()

    def wait(self, timeout_s: float = 60.0) -> pb.ApplyResponse:
        if not self._done.wait(timeout_s) or self._resp is None:
            raise _Refused(grpc.StatusCode.UNAVAILABLE, "the first call with this request_id is still running; retry")
        return self._resp


class ApplyDedup:
    """Request ids seen in the last ``window_s`` seconds (in this gateway process), with their answers."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._seen: collections.OrderedDict[str, _Pending] = collections.OrderedDict()
        self._lock = threading.Lock()

    def claim(self, rid: str, digest: str) -> tuple[_Pending, bool]:
        """The entry of ``rid`` and whether this call is its first (it must write, then ``done``/``fail``)."""
        with self._lock:
            now = time.monotonic()
            while self._seen and now - next(iter(self._seen.values())).at > self.window_s:
                self._seen.popitem(last=False)
            entry = self._seen.get(rid)
            if entry is not None:
                if entry.digest != digest:
                    raise MutationError(
                        f"request_id {rid!r} was already used for other mutations; use a new id per distinct write"
                    )
                return entry, False
            entry = self._seen[rid] = _Pending(digest)
            return entry, True

    def fail(self, rid: str, entry: _Pending, exc: BaseException) -> None:
        with self._lock:
            if self._seen.get(rid) is entry:
                del self._seen[rid]
        entry._resp = None
        entry._done.set()


class AdminServicer(_Base, pb_grpc.AdminServiceServicer):
    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusResponse:
        return self._unary("Status", context, lambda: convert.status_to_proto(self._backend.status()))
