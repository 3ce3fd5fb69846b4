"""The gRPC gateway: ``clustergnn.v1`` services, grpc.health.v1 and reflection over any
:class:`~clustergnn.serving.EmbeddingBackend`.

    backend = ...  # the Ray cluster's backend, or tests/gateway/fakes.FakeBackend
    config = GatewayConfig(port=50051, tls_cert="server.pem", tls_key="server.key", tokens_file="tokens.txt")
    with GatewayServer(backend, config).start() as gw:
        gw.wait()

Threading: a synchronous ``grpc.server`` over a thread pool (``max_workers``), since the backend
contract is blocking (a read may wait for its freshness bound).  Each Watch holds one thread while
open, so Watch streams are capped (``max_watches``) below the pool size.
"""

from __future__ import annotations

import logging
from concurrent import futures
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from actors.gateway.auth import BearerTokenInterceptor
from actors.gateway.env import gateway_tokens
from actors.gateway.health import HealthMonitor
from actors.gateway.metrics import GatewayMetrics
from actors.gateway.servicers import AdminServicer, EmbeddingServicer, MutationServicer
from clustergnn.config import GatewayConfig
from clustergnn.serving import EmbeddingBackend

__all__ = ["GatewayConfig", "GatewayServer", "SERVICE_NAMES", "serve"]

logger = logging.getLogger(__name__)

EMBEDDING_SERVICE = pb.DESCRIPTOR.services_by_name["EmbeddingService"].full_name
MUTATION_SERVICE = pb.DESCRIPTOR.services_by_name["MutationService"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name
SERVICE_NAMES: tuple[str, ...] = (
    EMBEDDING_SERVICE,
    MUTATION_SERVICE,
    ADMIN_SERVICE,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class GatewayServer:
    """One gateway: build with a backend and a config, then :meth:`start`; :meth:`stop` when done.

    Raises ``ConfigError`` unless the config has TLS and tokens or says ``insecure_local``, and when its
    ``tokens_file`` holds no token."""

    def __init__(self, backend: EmbeddingBackend, config: GatewayConfig) -> None:
        config.require_secure()
        self.backend = backend
        self.config = config
        self._tokens = gateway_tokens(config)
        self._health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1)
        )
        self.monitor = HealthMonitor(
            backend,
            self._health,
            interval_s=config.health_poll_interval_s,
            cluster_services=(EMBEDDING_SERVICE,),
            always_services=(MUTATION_SERVICE, ADMIN_SERVICE),
        )
        self.metrics = GatewayMetrics(lambda: self.monitor.latest)
        self._server: grpc.Server | None = None
        self._port: int | None = None
        self._metrics_port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the gateway is not started; call start() first")
        return self._port

    @property
    def target(self) -> str:
        """``host:port`` for clients."""
        return _bind_address(self.config.host, self.port)

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_port

    def start(self) -> GatewayServer:
        cfg = self.config
        interceptors = []
        if self._tokens is not None:
            interceptors.append(
                BearerTokenInterceptor(
                    self._tokens,
                    on_reject=lambda m: self.metrics.observe(
                        m.rsplit("/", 1)[-1], grpc.StatusCode.UNAUTHENTICATED, None
                    ),
                )
            )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="gateway"),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                ("grpc.max_send_message_length", cfg.max_message_bytes),
                ("grpc.so_reuseport", 0),  # never share a port with another process
            ],
        )
        embeddings = EmbeddingServicer(self.backend, cfg, self.metrics, lambda: self.monitor.latest)
        pb_grpc.add_EmbeddingServiceServicer_to_server(embeddings, server)
        mutations = MutationServicer(self.backend, cfg, self.metrics, lambda: self.monitor.latest)
        pb_grpc.add_MutationServiceServicer_to_server(mutations, server)
        pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(self.backend, cfg, self.metrics), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)

        address = _bind_address(cfg.host, cfg.port)
        if cfg.tls_cert is not None and cfg.tls_key is not None:
            creds = grpc.ssl_server_credentials([(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind the gateway to {address}")
        self.monitor.start()  # health is known before the first call is accepted
        server.start()
        self._server, self._port = server, port
        if cfg.metrics_port is not None:
            self._metrics_port = self.metrics.serve(cfg.metrics_port, cfg.host)
        logger.info(
            "gateway on %s (tls=%s, auth=%s, metrics=%s)",
            _bind_address(cfg.host, port),
            cfg.tls_enabled,
            cfg.auth_enabled,
            self._metrics_port,
        )
        return self

    def set_healthy(self, healthy: bool | None) -> None:
        """Force the health state (True/False) or follow the cluster again (None)."""
        self.monitor.set_override(healthy)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops (or ``timeout_s``); True if it stopped."""
        if self._server is None:
            return True
        return bool(self._server.wait_for_termination(timeout_s))

    def stop(self, grace_s: float = 1.0) -> None:
        """Refuse new calls, let running ones finish for ``grace_s``, then cancel the rest (Watch too)."""
        if self._server is None:
            return
        self.monitor.stop()
        self._server.stop(grace_s).wait()
        self.metrics.close()
        self._server = None
        logger.info("gateway stopped")

    def __enter__(self) -> GatewayServer:
        return self if self._server is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(backend: EmbeddingBackend, config: GatewayConfig) -> GatewayServer:
    """Build and start a gateway."""
    return GatewayServer(backend, config).start()
