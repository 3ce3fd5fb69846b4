"""Bearer-token authentication as a gRPC server interceptor.

Clients send ``authorization: Bearer <token>`` metadata on every call.  A call without a valid
token is refused with UNAUTHENTICATED before it reaches a servicer.

Open on purpose: ``grpc.health.v1.Health`` and server reflection.  Load balancers and orchestrators
(Kubernetes probes, Envoy) probe health without credentials, and reflection only reveals the
service schema, which is public in ``proto/`` anyway; neither touches embeddings or the graph.

Tokens are compared in constant time: both sides are hashed to a fixed length (so the comparison
cannot leak the token's length) and every configured token is compared (no early exit).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

logger = logging.getLogger(__name__)

OPEN_SERVICES: tuple[str, ...] = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
_SCHEME = "bearer "


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata a client sends to authenticate with ``token``."""
    return (("authorization", f"Bearer {token}"),)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call outside :data:`OPEN_SERVICES` that lacks one of ``tokens``."""

    def __init__(self, tokens: Sequence[str], on_reject: Callable[[str], None] | None = None) -> None:
        if not tokens:
            raise ValueError("BearerTokenInterceptor needs at least 1 token, got 0")
        self._digests = tuple(_digest(t) for t in tokens)
        self._on_reject = on_reject

    def is_valid(self, token: str) -> bool:
        d = _digest(token)
        ok = False
        for expected in self._digests:
            ok |= hmac.compare_digest(expected, d)
        return ok

    def _check(self, metadata: Iterable[Any] | None) -> str | None:
        """None when authenticated, else why not (never echoing the token)."""
        values = [m.value for m in (metadata or ()) if m.key == "authorization"]
        if not values:
            return "missing 'authorization: Bearer <token>' metadata"
        value = values[0]
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not value.lower().startswith(_SCHEME):
            return "authorization metadata must use the Bearer scheme ('Bearer <token>')"
        if not self.is_valid(value[len(_SCHEME) :].strip()):
            return "invalid bearer token"
        return None

    def intercept_service(self, continuation: Callable[[Any], Any], handler_call_details: Any) -> Any:
        method: str = handler_call_details.method
        service = method.lstrip("/").split("/", 1)[0]
        if service in OPEN_SERVICES:
            return continuation(handler_call_details)
        reason = self._check(handler_call_details.invocation_metadata)
        if reason is None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: let gRPC answer UNIMPLEMENTED
            return None
        logger.info("refused %s: %s", method, reason)
        if self._on_reject is not None:
            self._on_reject(method)
        return _denying_handler(handler, reason)


def _denying_handler(handler: grpc.RpcMethodHandler, reason: str) -> grpc.RpcMethodHandler:
    """A handler that refuses at once, without reading the request: it is registered as request-streaming
    (whatever the method's kind; the wire is the same) and never pulls a message, and it deserializes
    nothing.  A unary handler would make gRPC receive and parse the whole body first (a 60 MB Apply)."""

    def deny(request_iterator: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    kw = {"request_deserializer": None, "response_serializer": handler.response_serializer}
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kw)
    return grpc.stream_unary_rpc_method_handler(deny, **kw)
