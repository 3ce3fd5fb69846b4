"""Several Ray nodes: a head and workers, each in its own network namespace on this machine
(tests/multinode.py), the broker in another, real network between them.  Through Kafka and gRPC (TLS and a
token: the gateway listens on the head's address, not loopback), every answer compared with DGL's own full
forward; then nodes lost under load (``scripts/chaos.py --nodes``: its oracle counts every mutation lost or
doubled).  Skipped, with the reason, where network namespaces cannot be made (not root, not Linux)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.broker import free_port
from tests.multinode import NetnsCluster, sweep_stale, unavailable

WHY = unavailable()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(WHY is not None, reason=WHY or "")]

ROOT = Path(__file__).resolve().parents[2]


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def _running(pids: list[int], wait_s: float = 10.0) -> list[int]:
    """Those of ``pids`` still running (not gone, not a zombie waiting to be reaped) after up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for p in pids:
            try:
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if state != "Z":
                left.append(p)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def chaos(tmp_path: Path, *extra: str) -> tuple[dict, str]:
    out = tmp_path / "chaos.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--quick", "--json", str(out), "--seed", "5"]
    cmd += ["--port", str(free_port()), "--workdir", str(tmp_path / "work"), *extra]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    tail = (run.stdout + run.stderr)[-4000:]
    assert out.exists(), tail
    return json.loads(out.read_text()), tail


def assert_exact_and_complete(res: dict, tail: str) -> None:
    o = res["oracle"]
    assert o["lost"] == 0 and o["doubled"] == 0 and o["updates_lost"] == 0, tail
    assert o["max_rel_error_dgl"] <= 1e-5 and o["max_rel_error"] <= 1e-5 and o["embeddings_off"] == 0, tail
    assert o["vertices"]["served"] == o["vertices"]["expected"] > 0, tail
    assert o["edges"]["served"] == o["edges"]["expected"] > 0, tail
    assert o["malformed_dead_lettered"] == o["malformed_sent"] > 0 and o["valid_dead_lettered"] == 0, tail
    assert res["read_watermark_regressions"] == 0 and res["reads"].get("OK", 0) > 0, tail


def test_the_launcher_makes_separate_nodes_and_removes_everything_it_made(tmp_path: Path) -> None:
    with NetnsCluster(1, tmp_path) as nc:
        made = [n.ns for n in nc.nodes]
        nodes = nc.ray_nodes()
        assert {n["ip"]: n["alive"] for n in nodes} == {nc.head.ip: True, nc.workers[0].ip: True}
        assert {n["ip"]: n["cpus"] for n in nodes}[nc.head.ip] == 0  # no owner can land on the head
        assert len({n.ip for n in nc.nodes}) == 3 and all(n.ip.startswith("10.213.") for n in nc.nodes)
        # no shared loopback: the worker's own 127.0.0.1 does not reach the head's Ray port
        probe = "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(s.connect_ex(('127.0.0.1', 6379)))"
        with pytest.raises(RuntimeError, match="exited"):
            nc.run(nc.workers[0], [sys.executable, "-c", probe])
        nc.run(nc.workers[0], [sys.executable, "-c", probe.replace("127.0.0.1", nc.head.ip)])
        pids = nc.head.pids() + nc.workers[0].pids()
        assert pids
    listed = _ip("netns", "list")
    assert not [ns for ns in made if ns in listed]
    assert nc.bridge not in _ip("-o", "link", "show")
    assert _running(pids) == []


def test_the_leftovers_of_a_launcher_that_died_are_swept() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    ns = f"cg{gone.pid}a-n0"
    _ip("netns", "add", ns)
    try:
        assert ns in sweep_stale()
        assert ns not in _ip("netns", "list")
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize(("nodes", "placement"), [(2, "pinned"), (3, "spread")])
def test_exact_through_kafka_and_grpc_with_owners_on_several_nodes(tmp_path: Path, nodes: int, placement: str) -> None:
    res, tail = chaos(
        tmp_path,
        *("--nodes", str(nodes), "--placement", placement, "--seconds", "8"),
        *("--owner-kills", "0", "--driver-kills", "0", "--restarts", "0"),
    )
    workers, head = res["nodes"]["workers"], res["nodes"]["head"]
    for when in ("placement_start", "placement_end"):
        where = {int(p): ip for p, ip in res[when].items()}
        assert sorted(where) == [0, 1, 2, 3] and head not in where.values(), (when, where)
        assert set(where.values()) == set(workers), (when, where)  # every worker node holds an owner
        if placement == "pinned":
            assert where == {p: workers[p % nodes] for p in range(4)}, (when, where)
    assert_exact_and_complete(res, tail)


def test_losing_a_node_under_load_recovers_its_owners_elsewhere_and_fences_it(tmp_path: Path) -> None:
    res, tail = chaos(
        tmp_path,
        *("--nodes", "3", "--node-losses", "2", "--owner-kills", "1", "--driver-kills", "0", "--restarts", "0"),
    )
    lost = [f for f in res["faults"] if f["kind"] == "node"]
    assert len(lost) == 2, tail
    for f in lost:
        assert len(f["partitions"]) >= 2, f  # four owners on three nodes: the fullest holds two or more
        assert f["to_serving_s"] is not None, f
        assert f["fenced_s"] is not None, f  # the cut node's raylet exited by itself once its link was back
        assert f["served_from_lost_node"] == [], f
    assert all(f["to_serving_s"] is not None for f in res["faults"]), tail
    assert_exact_and_complete(res, tail)
