"""``clustergnn broker start|stop|status`` and ``clustergnn produce`` against real brokers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from actors.cli import main
from clustergnn import datasets
from clustergnn.mutations import MutationBatch
from clustergnn.partition import HashPartitionMap, split_by_owner
from streams.broker import BrokerRecord, free_port, probe
from streams.consumer import MutationConsumer
from tests.batches import assert_same
from tests.kafka_util import drain, joined

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CLUSTERGNN_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=120
    )


def test_broker_start_status_stop(tmp_path: Path) -> None:
    port = free_port()
    started = cli("broker", "start", "--port", str(port), cache=tmp_path)
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"127.0.0.1:{port}"
        assert probe("127.0.0.1", port)  # start returned only once it answers Kafka requests
        pidfile = tmp_path / f"broker-{port}.pid.json"
        assert pidfile.exists()
        again = cli("broker", "start", "--port", str(port), cache=tmp_path)  # idempotent: reuses the running one
        assert again.returncode == 0 and again.stdout.strip() == f"127.0.0.1:{port}"
        status = cli("broker", "status", "--port", str(port), cache=tmp_path)
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout
        pid = int(re.search(r"pid (\d+)", status.stdout).group(1))  # type: ignore[union-attr]
        assert Path(f"/proc/{pid}").exists()
    finally:
        stopped = cli("broker", "stop", "--port", str(port), cache=tmp_path)
    assert stopped.returncode == 0 and f"pid {pid}" in stopped.stdout
    assert not probe("127.0.0.1", port) and not pidfile.exists()
    assert not Path(f"/proc/{pid}/cmdline").exists() or Path(f"/proc/{pid}/cmdline").read_bytes() == b""
    status = cli("broker", "status", "--port", str(port), cache=tmp_path)
    assert status.returncode == 3 and "no broker" in status.stdout


def test_broker_stop_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    port = free_port()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a stale pidfile whose pid now belongs to someone else
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CLUSTERGNN_CACHE", str(tmp_path))
            BrokerRecord(bystander.pid, port, f"127.0.0.1:{port}", "/nonexistent/tansu", 0.0).save()
        out = cli("broker", "stop", "--port", str(port), cache=tmp_path)
        assert out.returncode == 0
        assert bystander.poll() is None  # still running
        assert not (tmp_path / f"broker-{port}.pid.json").exists()
    finally:
        bystander.kill()
        bystander.wait()


def _consume_all(bootstrap: str, topic: str, offsets: dict[int, int], dim: int) -> dict[int, MutationBatch]:
    with MutationConsumer(bootstrap, topic, list(range(4)), HashPartitionMap(4), feature_dim=dim) as c:
        got = drain(c, {p: last + 1 for p, last in offsets.items()}, timeout_s=60)
    return {p: joined(pbs, dim) for p, pbs in got.items()}


def _offsets(stdout: str) -> dict[int, int]:
    return {int(p): int(last) for p, last in re.findall(r"partition (\d+): offsets \d+\.\.(\d+)", stdout)}


@pytest.mark.parametrize("fmt", ["arrow", "json"])
def test_produce_replays_a_dataset_in_time_order(
    kafka_bootstrap: str, topic_name: Callable[[], str], capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    topic = topic_name()
    limit = 300 if fmt == "json" else 2000
    args = [
        "produce",
        "--dataset",
        "rmat",
        "--dataset-option",
        "scale=7",
        "--dataset-option",
        "edge_factor=4",
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--format",
        fmt,
        "--limit",
        str(limit),
        "--dim",
        "8",
        "--batch-events",
        "97",
        "--no-progress",
    ]
    if fmt == "arrow":
        args.append("--with-initial")
    assert main(args) == 0
    out = capsys.readouterr().out
    graph = datasets.load("rmat", scale=7, edge_factor=4)
    batches = ([graph.initial_batch(8)] if fmt == "arrow" else []) + list(graph.stream_batches(97, 8, limit=limit))
    expected = MutationBatch.concat(batches)
    assert f"produced {len(expected)} mutations" in out and "4 partitions, created" in out
    got = _consume_all(kafka_bootstrap, topic, _offsets(out), 8)
    for p, part in split_by_owner(expected, HashPartitionMap(4)).items():
        assert_same(got[p], part)


def test_produce_paces_to_the_requested_rate(
    kafka_bootstrap: str, topic_name: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    topic = topic_name()
    args = [
        "produce",
        "--dataset",
        "rmat",
        "--dataset-option",
        "scale=8",
        "--bootstrap",
        kafka_bootstrap,
        "--topic",
        topic,
        "--limit",
        "400",
        "--rate",
        "1000",
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    rate = float(re.search(r"s: ([\d,]+) mutations/s", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    n = int(re.search(r"produced (\d+) mutations", out).group(1))  # type: ignore[union-attr]
    assert n >= 400 and rate < 1000 * 1.6  # paced (unpaced it runs at tens of thousands/s)
    assert sum(v + 1 for v in _offsets(out).values()) > 0
    assert np.isfinite(rate)


def test_produce_rejects_an_unknown_dataset(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--dataset", "nope", "--bootstrap", "127.0.0.1:1", "--topic", "t"]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err
