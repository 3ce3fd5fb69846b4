"""Prometheus metrics of the gateway, in a registry of its own (so several gateways, e.g. in tests,
never share counters), served on 127.0.0.1.

Request metrics are recorded by the servicers; cluster figures (per-partition lag, watermarks,
ingest rates, health) are read at scrape time from the last ``ClusterStatus`` the health monitor
fetched, so a scrape never calls into the cluster.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from clustergnn.serving import ClusterStatus

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STALENESS_BUCKETS_MS = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 60000.0)
_IDS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384)


class _ClusterCollector(Collector):
    def __init__(self, latest: Callable[[], ClusterStatus | None]) -> None:
        self._latest = latest

    def collect(self) -> Iterator[Metric]:
        st = self._latest()
        healthy = GaugeMetricFamily("clustergnn_cluster_healthy", "1 when every partition owner is alive (last poll)")
        healthy.add_metric([], 1.0 if st is not None and st.healthy else 0.0)
        yield healthy
        if st is None:
            return
        alive = GaugeMetricFamily(
            "clustergnn_partition_alive", "1 when the partition owner is alive", labels=["partition"]
        )
        lag = GaugeMetricFamily(
            "clustergnn_partition_lag", "records produced but not yet applied", labels=["partition"]
        )
        rate = GaugeMetricFamily("clustergnn_partition_mutations_per_second", "apply rate", labels=["partition"])
        applied = GaugeMetricFamily("clustergnn_partition_applied_mutations", "mutations applied", labels=["partition"])
        pwm = GaugeMetricFamily(
            "clustergnn_partition_watermark_offset",
            "per owner: next Kafka offset not yet visible",
            labels=["partition", "kafka_partition"],
        )
        mem = GaugeMetricFamily(
            "clustergnn_partition_memory_bytes",
            "per owner: its engine's arrays of one kind (cache, per_slot, structure, scratch, model), allocated bytes",
            labels=["partition", "kind"],
        )
        rss = GaugeMetricFamily(
            "clustergnn_partition_rss_bytes", "resident memory of the owner's process", labels=["partition"]
        )
        for p in st.partitions:
            label = [str(p.partition)]
            for kind, n in sorted(p.memory_bytes.items()):
                mem.add_metric([str(p.partition), kind], float(n))
            if p.rss_bytes:
                rss.add_metric(label, float(p.rss_bytes))
            alive.add_metric(label, 1.0 if p.alive else 0.0)
            lag.add_metric(label, float(p.lag))
            rate.add_metric(label, float(p.mutations_per_s))
            applied.add_metric(label, float(p.applied_mutations))
            for kp, off in sorted(p.watermark.items()):
                pwm.add_metric([str(p.partition), str(kp)], float(off))
        wm = GaugeMetricFamily(
            "clustergnn_watermark_offset", "cluster-wide: next Kafka offset not yet visible", labels=["kafka_partition"]
        )
        for kp, off in sorted(st.watermark.items()):
            wm.add_metric([str(kp)], float(off))
        ingest = GaugeMetricFamily("clustergnn_ingest_mutations_per_second", "sum of partition apply rates")
        ingest.add_metric([], float(sum(p.mutations_per_s for p in st.partitions)))
        yield from (alive, lag, rate, applied, pwm, wm, ingest, mem, rss)
        yield from _durability_metrics(st.extra)


# ClusterStatus.extra key -> (metric name, help); present only where the backend reports them
_DURABILITY_GAUGES = {
    "recovering": ("clustergnn_recovering", "1 while owners are being re-created and replayed after a crash"),
    "recovery_elapsed_s": ("clustergnn_recovery_elapsed_seconds", "how long the recovery in progress has run"),
    "owner_restarts": ("clustergnn_owner_restarts", "owners re-created after a crash, since the driver started"),
    "recovery_last_s": ("clustergnn_recovery_last_duration_seconds", "the last recovery, crash to SERVING"),
    "replaying": ("clustergnn_replaying", "1 until every partition has caught up with its log after a start"),
    "broker_silent_s": ("clustergnn_broker_silent_seconds", "since the broker last answered a fetch (worst owner)"),
    "snapshot_age_s": ("clustergnn_snapshot_age_seconds", "since the last snapshot was committed (-1: none)"),
    "snapshot_size_bytes": ("clustergnn_snapshot_size_bytes", "size of the last snapshot"),
    "snapshot_duration_s": ("clustergnn_snapshot_duration_seconds", "the last snapshot, cut to commit"),
    "snapshot_stall_ms": ("clustergnn_snapshot_stall_milliseconds", "how long the last snapshot held rounds up"),
    "snapshots_committed": ("clustergnn_snapshots_committed", "snapshots committed since the driver started"),
    "snapshot_failures": ("clustergnn_snapshot_failures", "snapshots that failed since the driver started"),
}


def _durability_metrics(extra: dict[str, float]) -> Iterator[Metric]:
    for key, (name, doc) in _DURABILITY_GAUGES.items():
        if key in extra:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], float(extra[key]))
            yield g
    if "recoveries" in extra:  # a summary without quantiles: rate() and sum/count work on it
        s = SummaryMetricFamily("clustergnn_recovery_duration_seconds", "owner crash recoveries, crash to SERVING")
        s.add_metric([], count_value=extra["recoveries"], sum_value=extra.get("recovery_duration_s_sum", 0.0))
        yield s


class GatewayMetrics:
    """The gateway's metrics and (optionally) their HTTP endpoint."""

    def __init__(self, latest_status: Callable[[], ClusterStatus | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "clustergnn_gateway_requests", "gRPC requests by method and status code", ["method", "code"], registry=r
        )
        self._latency = Histogram(
            "clustergnn_gateway_request_latency_seconds",
            "gRPC request latency (a Watch: stream lifetime)",
            ["method"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.served_staleness_ms = Histogram(
            "clustergnn_gateway_served_staleness_ms",
            "staleness_ms of the answers served by GetEmbeddings",
            buckets=_STALENESS_BUCKETS_MS,
            registry=r,
        )
        self.bound_unmet = Counter(
            "clustergnn_gateway_bound_unmet",
            "GetEmbeddings answers with answer_now whose freshness bound did not hold (bound_met = false)",
            registry=r,
        )
        self.ids_per_request = Histogram(
            "clustergnn_gateway_ids_per_request", "vertex ids per GetEmbeddings", buckets=_IDS_BUCKETS, registry=r
        )
        self.mutations_written = Counter(
            "clustergnn_gateway_mutations_written", "mutations written to the log through Apply", registry=r
        )
        self.mutations_rejected = Counter(
            "clustergnn_gateway_mutations_rejected",
            "mutations of Apply requests the owners rejected whole (FAILED_PRECONDITION; written, never applied)",
            registry=r,
        )
        self.active_watches = Gauge("clustergnn_gateway_active_watches", "open Watch streams", registry=r)
        r.register(_ClusterCollector(latest_status))
        self._children: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._httpd: Any = None

    def observe(self, method: str, code: grpc.StatusCode, seconds: float | None) -> None:
        key = (method, code.name)
        child = self._children.get(key)
        if child is None:  # label lookups cost microseconds; bind each pair once
            with self._lock:
                child = self._children.setdefault(key, (self._requests.labels(*key), self._latency.labels(method)))
        child[0].inc()
        if seconds is not None:
            child[1].observe(seconds)

    def render(self) -> bytes:
        """The text exposition (what the endpoint serves)."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` (0 = any free port; the gateway's host, so a deployed
        gateway is scrapeable and a local one stays on loopback); returns the port."""
        self._httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(self._httpd.server_port)
        logger.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
