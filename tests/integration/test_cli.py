"""`clustergnn up`, `query`, `status`, `down` as a user runs them: separate processes, loopback only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "actors.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_up_query_status_down(tmp_path: Path) -> None:
    env = dict(os.environ, CLUSTERGNN_CACHE=str(tmp_path))  # its own state files, never the user's
    port, broker, metrics = free_port(), free_port(), free_port()
    up = cli(
        "up",
        "--dataset",
        "collegemsg",
        "--partitions",
        "2",
        "--port",
        str(port),
        "--broker-port",
        str(broker),
        "--metrics-port",
        str(metrics),
        env=env,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"gateway 127.0.0.1:{port} healthy" in up.stdout
        q = cli("query", "1", "2", "--target", f"127.0.0.1:{port}", "--max-staleness-ms", "5000", env=env, timeout=60)
        assert q.returncode == 0, q.stdout + q.stderr
        assert "staleness" in q.stdout.lower() and "1" in q.stdout
        bad = cli("query", "987654321", "--target", f"127.0.0.1:{port}", env=env, timeout=60)
        assert bad.returncode != 0 and "987654321" in (bad.stdout + bad.stderr)
        st = cli("status", "--target", f"127.0.0.1:{port}", env=env, timeout=60)
        assert st.returncode == 0 and "healthy" in st.stdout and "watermark" in st.stdout, st.stdout + st.stderr
        again = cli("up", "--port", str(port), "--broker-port", str(broker), env=env)
        assert "already up" in again.stdout
    finally:
        down = cli("down", env=env, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped serve" in down.stdout and "stopped broker" in down.stdout
    assert not (tmp_path / "up.json").exists()
    with socket.socket() as s:  # the gateway's port is free again: its process is gone
        s.bind(("127.0.0.1", port))
