"""`clustergnn up`, `query`, `status`, `down` as a user runs them: separate processes, loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
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


def up_args(name: str, port: int, broker: int, metrics: int, *extra: str) -> list[str]:
    return ["up", "--name", name, "--dataset", "collegemsg", "--partitions", "2", "--port", str(port),
            "--broker-port", str(broker), "--metrics-port", str(metrics), *extra]  # fmt: skip


def test_named_clusters_side_by_side_secure_and_plain(tmp_path: Path) -> None:
    env = dict(os.environ, CLUSTERGNN_CACHE=str(tmp_path))  # its own state files, never the user's
    a = (free_port(), free_port(), free_port())
    b = (free_port(), free_port(), free_port())
    try:
        up = cli(*up_args("alpha", *a), env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"gateway 127.0.0.1:{a[0]} healthy" in up.stdout
        assert "plaintext gRPC without a token" in up.stdout  # says plainly what it serves
        assert "kafka" not in up.stdout.lower() or "conn" not in up.stdout.lower()  # no library chatter

        q = cli("query", "1", "2", "--name", "alpha", "--max-staleness-ms", "5000", env=env, timeout=60)
        assert q.returncode == 0, q.stdout + q.stderr
        assert "layer 1" in q.stdout and "model" in q.stdout  # the final layer, numbered as the proto says
        bad = cli("query", "987654321", "--name", "alpha", env=env, timeout=60)
        assert bad.returncode != 0 and "987654321" in (bad.stdout + bad.stderr)
        st = cli("status", "--name", "alpha", env=env, timeout=60)
        assert st.returncode == 0 and "healthy" in st.stdout and "model: SAGEConv" in st.stdout, st.stdout + st.stderr

        again = cli("up", "--name", "alpha", env=env)
        assert again.returncode == 0 and "already up" in again.stdout
        moved = cli("up", "--name", "alpha", "--port", str(b[0]), env=env)
        assert moved.returncode == 1 and "already up with" in moved.stderr and str(a[0]) in moved.stderr
        clash = cli(*up_args("beta", a[0], *b[1:]), env=env)
        assert clash.returncode == 1, clash.stdout + clash.stderr
        assert f"port {a[0]}" in clash.stderr and "'alpha'" in clash.stderr  # names who holds what
        assert "broker:" not in clash.stdout  # nothing started

        up_b = cli(*up_args("beta", *b, "--secure"), env=env)
        assert up_b.returncode == 0, up_b.stdout + up_b.stderr
        assert "TLS with a self-signed certificate" in up_b.stdout
        state = json.loads((tmp_path / "clusters" / "beta" / "state.json").read_text())
        for f in ("root_cert", "token_file"):
            assert stat.S_IMODE(os.stat(state[f]).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(Path(state["root_cert"]).with_name("tls.key")).st_mode) == 0o600
        qb = cli("query", "1", "--name", "beta", "--max-staleness-ms", "5000", env=env, timeout=60)
        assert qb.returncode == 0, qb.stdout + qb.stderr  # cert and token picked up
        plain = cli("query", "1", "--target", f"127.0.0.1:{b[0]}", "--token", "wrong", env=env, timeout=30)
        assert plain.returncode != 0
        listing = cli("clusters", env=env, timeout=30)
        assert "alpha" in listing.stdout and "beta" in listing.stdout and "TLS + token" in listing.stdout

        down_a = cli("down", "--name", "alpha", env=env, timeout=120)
        assert down_a.returncode == 0 and "stopped serve of 'alpha'" in down_a.stdout, down_a.stdout + down_a.stderr
        still = cli("status", "--name", "beta", env=env, timeout=60)
        assert still.returncode == 0 and "healthy" in still.stdout  # down --name stops only that one
    finally:
        cli("down", "--all", env=env, timeout=180)
    assert "no local clusters" in cli("clusters", env=env, timeout=30).stdout


def test_up_refuses_a_config_it_cannot_honour(tmp_path: Path) -> None:
    env = dict(os.environ, CLUSTERGNN_CACHE=str(tmp_path))
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"cluster": {"ray_address": "ray://10.0.0.1:10001"}}))
    r = cli("up", "--config", str(cfg), "--port", str(free_port()), "--broker-port", str(free_port()), env=env)
    assert r.returncode == 2 and "ray_address" in r.stderr and "broker:" not in r.stdout
    cfg.write_text(json.dumps({"cluster": {"partitions": 0}}))
    r = cli("up", "--config", str(cfg), env=env)
    assert r.returncode == 2 and "cluster.partitions" in r.stderr


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_serve_drains_on_sigterm_and_exits_0(tmp_path: Path, kafka_bootstrap: str) -> None:
    import uuid

    from actors.commands import SERVE_DRAIN_BOUND_S, descendants, wait_healthy

    port = free_port()
    cfg = tmp_path / "serve.json"
    cfg.write_text(
        json.dumps(
            {
                "kafka": {"bootstrap": kafka_bootstrap, "topic": f"sigterm-{uuid.uuid4().hex[:8]}"},
                "graph": {"dataset": None},
                "cluster": {"partitions": 2},
                "gateway": {"host": "127.0.0.1", "port": port, "metrics_port": None, "insecure_local": True},
            }
        )
    )
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "actors.cli", "serve", "--config", str(cfg)],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started: set[int] = set()
    try:
        wait_healthy(f"127.0.0.1:{port}", 180, proc)
        started = descendants(proc.pid)
        assert started, "serve started no processes (Ray)?"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=SERVE_DRAIN_BOUND_S + 30)
        out = (tmp_path / "serve.log").read_text()
        assert rc == 0, f"serve exited {rc} on SIGTERM:\n{out[-3000:]}"
        assert "drained and stopped" in out
        deadline = time.monotonic() + 15  # Ray's processes exit once its shutdown returns
        while time.monotonic() < deadline and any(_alive(p) for p in started):
            time.sleep(0.2)
        left = sorted(p for p in started if _alive(p))
        assert not left, f"processes serve started are still running: {left}"
    finally:
        for p in [proc.pid, *started]:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        log.close()
