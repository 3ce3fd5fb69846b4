"""The Prometheus endpoint and the ``query``/``status`` sub-commands, against a real gateway."""

from __future__ import annotations

import re
import urllib.request

import grpc
import numpy as np
import pytest

from actors.cli import main
from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway.cli import abbreviate
from actors.gateway.client import GatewayClient
from clustergnn.errors import UnknownVertexError
from clustergnn.mutations import MutationBatch
from tests.gateway.conftest import TOKENS, Certs, GatewayFactory
from tests.gateway.fakes import FakeBackend


def _value(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name}{labels} not in metrics"
    return float(m.group(1))


def test_metrics_endpoint(make_gateway: GatewayFactory) -> None:
    fake = FakeBackend(apply_delay_s=None)
    fake.mutations_per_s = 12.5
    gw = make_gateway(fake, metrics_port=0)
    assert gw.metrics_port
    with GatewayClient(gw.target) as c:
        for _ in range(3):
            c.get_embeddings([1, 2])
        with pytest.raises(UnknownVertexError):
            c.get_embeddings([999])
        # nothing is applied until advance(): the write is answered PENDING (OK) when its deadline passes
        resp = c.apply_raw(convert.batch_to_request(MutationBatch.add_edges([1, 3], [2, 4])), timeout_s=0.3)
        assert resp.state == pb.APPLY_STATE_PENDING
    gw.monitor.poll_once()
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5).read().decode()
    assert _value(text, "clustergnn_gateway_requests_total", '{code="OK",method="GetEmbeddings"}') == 3
    assert _value(text, "clustergnn_gateway_requests_total", '{code="INVALID_ARGUMENT",method="GetEmbeddings"}') == 1
    assert _value(text, "clustergnn_gateway_requests_total", '{code="OK",method="Apply"}') == 1
    assert _value(text, "clustergnn_gateway_request_latency_seconds_count", '{method="GetEmbeddings"}') == 4
    assert _value(text, "clustergnn_gateway_served_staleness_ms_count") == 3
    assert _value(text, "clustergnn_gateway_mutations_written_total") == 2
    # both edges route to their destination's owner (2 and 4): Kafka partition 0
    assert _value(text, "clustergnn_partition_lag", '{partition="0"}') == 2
    assert _value(text, "clustergnn_partition_lag", '{partition="1"}') == 0
    assert _value(text, "clustergnn_partition_watermark_offset", '{kafka_partition="0",partition="0"}') == 0
    assert _value(text, "clustergnn_ingest_mutations_per_second") == 25.0
    assert _value(text, "clustergnn_cluster_healthy") == 1
    cache = _value(text, "clustergnn_partition_memory_bytes", '{kind="cache",partition="0"}')
    assert cache == 8 * 4 * (8 + 8 + 4)  # the fake's 8 owned rows: input, hidden and output widths, float32
    assert _value(text, "clustergnn_partition_memory_bytes", '{kind="structure",partition="1"}') == 0
    assert _value(text, "clustergnn_partition_rss_bytes", '{partition="1"}') > 0
    fake.advance()
    gw.monitor.poll_once()
    text = gw.metrics.render().decode()
    assert _value(text, "clustergnn_watermark_offset", '{kafka_partition="0"}') == 2
    assert _value(text, "clustergnn_partition_lag", '{partition="0"}') == 0


def test_unauthenticated_calls_are_counted(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tokens=TOKENS)
    with GatewayClient(gw.target, token="nope") as c, pytest.raises(grpc.RpcError):
        c.status()
    text = gw.metrics.render().decode()
    assert _value(text, "clustergnn_gateway_requests_total", '{code="UNAUTHENTICATED",method="Status"}') == 1


def test_abbreviate() -> None:
    assert abbreviate(np.array([1, 2], dtype=np.float32), 4) == "[1.0000, 2.0000]"
    assert abbreviate(np.arange(10, dtype=np.float32), 4) == "[0.0000, 1.0000, ..., 8.0000, 9.0000]"
    assert abbreviate(np.arange(10, dtype=np.float32), 1) == "[0.0000, ...]"


def test_cli_query_and_status(make_gateway: GatewayFactory, certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeBackend(dims=(8, 16))
    gw = make_gateway(fake, tls_cert=certs.cert, tls_key=certs.key, tokens=TOKENS, insecure_local=False)
    conn = ["--target", gw.target, "--token", TOKENS[0], "--root-cert", str(certs.ca)]
    assert main(["query", "3", "12", "--max-staleness-ms", "100", *conn]) == 0
    out = capsys.readouterr().out
    assert "layer 1  staleness 0.0 ms  watermark {0:0, 1:0}  dim 16" in out
    row = f"{fake.expected(12)[0]:.4f}"
    assert re.search(rf"^\s+12  v0\s+\[{re.escape(row)}, .*\.\.\.", out, re.MULTILINE), out
    assert main(["status", *conn]) == 0
    out = capsys.readouterr().out
    assert out.startswith("healthy  layers 2 dims [8, 16]")
    assert "part alive" in out
    # failures print the code and the server's message, exit 1
    assert main(["query", "4242", *conn]) == 1
    assert "error: UnknownVertexError: vertex 4242 is not in the graph" in capsys.readouterr().err
    assert main(["query", "1", "--target", gw.target, "--token", "bad", "--root-cert", str(certs.ca)]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_cli_query_answer_now_says_whether_the_bound_held(
    make_gateway: GatewayFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeBackend(apply_delay_s=None)  # the write below stays pending
    gw = make_gateway(fake)
    fake.apply(MutationBatch.update_features([3], np.ones((1, 8), dtype=np.float32)))
    conn = ["--target", gw.target, "--timeout-s", "0.5"]
    assert main(["query", "3", "--max-staleness-ms", "1e6", "--answer-now", *conn]) == 0
    assert "  bound met\n" in capsys.readouterr().out
    assert main(["query", "3", "--max-staleness-ms", "0", "--answer-now", *conn]) == 0
    assert "  bound NOT met\n" in capsys.readouterr().out
    assert main(["query", "3", "--max-staleness-ms", "0", *conn]) == 1  # without it: waits, then fails
    assert "StalenessDeadlineError: bound not met" in capsys.readouterr().err


def test_status_and_metrics_show_recovery_snapshots_and_broker_silence() -> None:
    from actors.gateway.cli import format_status
    from actors.gateway.metrics import GatewayMetrics
    from clustergnn.serving import ClusterStatus, PartitionStatus

    extra = {
        "recovering": 1.0,
        "recovering_partitions": 1.0,
        "recovery_elapsed_s": 2.5,
        "recoveries": 3.0,
        "owner_restarts": 3.0,
        "recovery_last_s": 4.0,
        "recovery_max_s": 6.0,
        "recovery_duration_s_sum": 14.0,
        "broker_silent_s": 12.0,
        "snapshot_last_id": 7.0,
        "snapshot_last_round": 120.0,
        "snapshot_age_s": 3.0,
        "snapshot_size_bytes": 2.5e6,
        "snapshot_duration_s": 0.4,
        "snapshot_stall_ms": 30.0,
        "snapshots_committed": 8.0,
        "snapshot_failures": 1.0,
    }
    st = ClusterStatus([PartitionStatus(0, False, 5, {0: 3}, 0, 10, 0.0)], {0: 3}, 2, [16, 4], extra)
    text = format_status(st)
    assert "RECOVERING: 1 owner(s) re-created" in text and "for 2.5s" in text
    assert "BROKER SILENT for 12s" in text
    assert "last snapshot 7: round 120, 3.0s ago, 2.5 MB, took 0.40s (stalled rounds 30 ms); 8 taken, 1 failed" in text
    assert "recoveries 3 (owners re-created 3), last 4.0s, max 6.0s" in text
    unknown = "  0    NO         5        0         10       0.0         -         -        -  {0:3}"
    assert unknown in text  # memory not reported: dashes
    mem = {"cache": 2_500_000, "per_slot": 0, "structure": 1_250_000, "scratch": 0, "model": 0}
    part = PartitionStatus(0, True, 5, {0: 3}, 0, 10, 0.0, memory_bytes=mem, rss_bytes=300_000_000)
    row = format_status(ClusterStatus([part], {0: 3}, 2, [16, 4])).splitlines()[-1]
    assert row.split()[6:9] == ["2.5", "1.2", "300.0"], row  # cache, structure, RSS in MB (1.25 rounds to even)
    scraped = GatewayMetrics(lambda: st).render().decode()
    for line in (
        "clustergnn_recovering 1.0",
        "clustergnn_recovery_duration_seconds_count 3.0",
        "clustergnn_recovery_duration_seconds_sum 14.0",
        "clustergnn_broker_silent_seconds 12.0",
        "clustergnn_snapshot_size_bytes 2.5e+06",
        "clustergnn_snapshot_failures 1.0",
    ):
        assert line in scraped, line
