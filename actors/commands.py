"""``clustergnn serve | up | down``: run the cluster (coordinator, owners, gateway).

* ``serve --config FILE`` runs a cluster against existing Kafka (and Ray, with ``--ray-address``) until
  SIGTERM/SIGINT: what a KubeRay head runs.
* ``up`` starts the embedded broker and a local ``serve`` in the background on 127.0.0.1, loads a dataset's
  initial graph and returns once the gateway is healthy; ``down`` stops exactly those two processes.

``clustergnn demo`` lives in ``actors/demo.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from clustergnn.config import Config, ConfigError

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    from streams.broker import cache_dir

    return cache_dir()


# ---------------------------------------------------------------------------------------------- serve
def cmd_serve(args: argparse.Namespace) -> int:
    from actors.cluster import Cluster
    from actors.gateway.server import GatewayServer

    try:
        cfg = Config.from_file(args.config) if args.config else Config()
        if args.ray_address:
            cfg = cfg.replace(cluster={"ray_address": args.ray_address})
        cfg.gateway.require_secure()  # before anything starts
    except (ConfigError, OSError, ValueError) as exc:
        print(f"clustergnn serve: bad config: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(cfg).start()
    gateway = None
    try:
        if cluster.restored is not None:  # the snapshot holds the initial graph: never write it twice
            if cfg.graph.dataset:
                print(
                    f"resumed from snapshot {cluster.restored.snapshot_id} (round {cluster.restored.round_id}): "
                    f"not loading {cfg.graph.dataset}'s initial graph again",
                    flush=True,
                )
        elif cfg.graph.dataset and cluster.topic_created:  # a fresh log: write the initial graph into it once
            t = time.time()
            cluster.load_dataset(cfg.graph.dataset)
            print(f"loaded {cfg.graph.dataset}'s initial graph in {time.time() - t:.1f}s", flush=True)
        gateway = GatewayServer(cluster, cfg.gateway).start()
        print(
            f"clustergnn serving on {gateway.target} ({cfg.cluster.partitions} partitions, "
            f"metrics port {gateway.metrics_port})",
            flush=True,
        )
        while not stop.wait(0.5):
            if cluster.error is not None:
                print(f"cluster stopped serving: {cluster.error!r}", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        if gateway is not None:
            gateway.stop()
        cluster.stop()


# ---------------------------------------------------------------------------------------------- up / down
def _state_path() -> Path:
    return _cache_dir() / "up.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _is_our_serve(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in cmd and any(b"actors.cli" in c or c.endswith(b"clustergnn") for c in cmd)


def _wait_healthy(target: str, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    from actors.gateway.client import GatewayClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"clustergnn serve exited with code {proc.returncode}")
        try:
            with GatewayClient(target) as c:
                if c.status(timeout_s=2).healthy:
                    return
        except Exception as exc:  # noqa: BLE001 - not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"gateway {target} not healthy after {timeout_s:.0f}s (last error: {last})")


def cmd_up(args: argparse.Namespace) -> int:
    from streams.broker import start_detached

    state = _state_path()
    if state.exists():
        st = json.loads(state.read_text())
        if _alive(st["serve_pid"]) and _is_our_serve(st["serve_pid"]):
            print(f"already up: gateway {st['target']} (serve pid {st['serve_pid']}); `clustergnn down` stops it")
            return 0
    broker = start_detached(args.broker_port)
    print(f"broker: {broker.bootstrap} (pid {broker.pid})", flush=True)
    cfg = Config.from_dict(
        {
            "kafka": {"bootstrap": broker.bootstrap},
            "graph": {"dataset": args.dataset},
            "cluster": {"partitions": args.partitions, "collaborative": args.collaborative},
            "gateway": {
                "host": "127.0.0.1",
                "port": args.port,
                "insecure_local": True,
                "metrics_port": args.metrics_port,
            },
        }
    )
    cfg_path = _cache_dir() / "up-config.json"
    cfg_path.write_text(json.dumps(cfg.to_dict(), indent=2))
    log_path = _cache_dir() / "serve.log"
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "serve", "--config", str(cfg_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
    target = f"127.0.0.1:{args.port}"
    state.write_text(
        json.dumps(
            {
                "serve_pid": proc.pid,
                "broker_port": broker.port,
                "target": target,
                "log": str(log_path),
                "config": str(cfg_path),
            }
        )
    )
    print(f"serve: pid {proc.pid}, log {log_path}; loading {args.dataset} ...", flush=True)
    try:
        _wait_healthy(target, args.timeout_s, proc)
    except (TimeoutError, RuntimeError) as exc:
        print(f"clustergnn up failed: {exc}; see {log_path}", file=sys.stderr)
        return 1
    print(f"up: gateway {target} healthy ({args.partitions} partitions). Try: clustergnn query 1 2 3 ; clustergnn down")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from streams.broker import stop_detached

    state = _state_path()
    if not state.exists():
        print("nothing is up (no state file)")
        return 0
    st = json.loads(state.read_text())
    pid = int(st["serve_pid"])
    if _alive(pid) and _is_our_serve(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        print(f"stopped serve (pid {pid})")
    rec = stop_detached(int(st["broker_port"]))
    if rec is not None:
        print(f"stopped broker (pid {rec.pid})")
    state.unlink(missing_ok=True)
    return 0


# ---------------------------------------------------------------------------------------------- wiring
def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="run a cluster (owners, coordinator, gateway) until SIGTERM")
    s.add_argument("--config", type=Path, default=None, help="JSON or YAML config (clustergnn/config.py)")
    s.add_argument("--ray-address", default=None, help="join an existing Ray cluster (e.g. auto in KubeRay)")
    s.set_defaults(func=cmd_serve)

    u = sub.add_parser("up", help="start broker + local cluster + gateway on 127.0.0.1 in the background")
    u.add_argument("--dataset", default="collegemsg")
    u.add_argument("--partitions", type=int, default=4)
    u.add_argument("--collaborative", action="store_true", help="finish the last layer at read time (STAG)")
    u.add_argument("--port", type=int, default=50051, help="gateway port")
    u.add_argument("--metrics-port", type=int, default=9464)
    u.add_argument("--broker-port", type=int, default=9092)
    u.add_argument("--timeout-s", type=float, default=300)
    u.set_defaults(func=cmd_up)

    d = sub.add_parser("down", help="stop what `up` started (only those processes)")
    d.set_defaults(func=cmd_down)
