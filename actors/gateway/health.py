"""Keeps ``grpc.health.v1`` in step with the cluster.

The overall service ("") and ``clustergnn.v1.EmbeddingService`` are SERVING only while every
partition owner is alive (``ClusterStatus.healthy``): a down or recovering partition, or a
``status()`` call that fails, makes them NOT_SERVING.  ``MutationService`` and ``AdminService`` stay
SERVING while the gateway runs: writes go to the log, not to the owners, and status is most wanted
exactly when something is down.  ``set_override`` lets an operator (or ``up``/``down``) force a state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2

from clustergnn.serving import ClusterStatus, EmbeddingBackend

logger = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthMonitor:
    """Polls ``backend.status()`` every ``interval_s`` on a daemon thread and sets the health states."""

    def __init__(
        self,
        backend: EmbeddingBackend,
        servicer: health.HealthServicer,
        *,
        interval_s: float,
        cluster_services: Sequence[str],
        always_services: Sequence[str],
    ) -> None:
        self._backend = backend
        self._servicer = servicer
        self._interval_s = interval_s
        self._cluster_services = ("", *cluster_services)
        self._always_services = tuple(always_services)
        self._override: bool | None = None
        self._latest: ClusterStatus | None = None
        self._healthy: bool | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def latest(self) -> ClusterStatus | None:
        """The last status fetched (None before the first, or after a failed poll)."""
        return self._latest

    @property
    def healthy(self) -> bool:
        return bool(self._healthy)

    def start(self) -> None:
        for s in self._always_services:
            self._servicer.set(s, SERVING)
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="gateway-health", daemon=True)
        self._thread.start()

    def set_override(self, healthy: bool | None) -> None:
        """Force SERVING (True) or NOT_SERVING (False); None returns to following the cluster."""
        self._override = healthy
        self.poll_once()

    def poll_once(self) -> bool:
        """Fetch the status now and update every health state; returns whether the cluster is healthy."""
        try:
            st = self._backend.status()
            healthy = st.healthy
            self._latest = st
        except Exception as e:  # a status that cannot be fetched is a cluster that cannot serve
            logger.warning("backend.status() failed: %s", e)
            self._latest = None
            healthy = False
        serving = healthy if self._override is None else self._override
        with self._lock:
            if serving != self._healthy:
                logger.info("health -> %s", "SERVING" if serving else "NOT_SERVING")
            self._healthy = serving
            for s in self._cluster_services:
                self._servicer.set(s, SERVING if serving else NOT_SERVING)
        return serving

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.poll_once()

    def stop(self) -> None:
        """Stop polling and mark every service NOT_SERVING (the gateway is going away)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._servicer.enter_graceful_shutdown()
