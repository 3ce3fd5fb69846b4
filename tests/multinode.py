"""Several Ray nodes on one machine, each in its own network namespace (issue 14): a launcher for tests
and benchmarks, not part of the product's runtime.

:class:`NetnsCluster` makes a Linux bridge and one network namespace per node, joined to the bridge by a
veth pair, each with its own address on a private /24 (``10.213.X.0/24``, ``X`` free on this machine):

* ``.1``: the bridge, in this (the launching) process's namespace: how tests and benchmarks reach the
  nodes; nothing listens on it;
* ``.2``: the *service node*, a namespace for what every node must reach (the Kafka broker, a local S3
  server): :meth:`NetnsCluster.popen` starts a process there;
* ``.10``: the Ray head, ``--num-cpus 0`` (no owner lands on it), where ``clustergnn serve`` runs, i.e. the
  coordinator and the gRPC gateway;
* ``.11``, ``.12``, ...: the Ray worker nodes, where the partition owners run.

Nothing is shared between the nodes but the filesystem (a snapshot directory on it is a path all nodes
share, like a ReadWriteMany volume) and the machine's cores: no loopback between nodes, links that can
be cut (:meth:`cut`, :meth:`heal`), nodes that can be killed (:meth:`kill_node`) and re-added
(:meth:`restart_node`).  There is no delay or loss injection (no ``netem`` here, ../shared/STACK.md).

Servers inside a namespace bind its address (or all its interfaces, as Ray's GCS does): the bridge is not
attached to any physical interface, so they are reachable from this machine only.

Everything it creates (namespaces, links, the bridge, every process inside its namespaces, found with
``ip netns pids``) is removed by :meth:`close`, on ``with`` exit, at interpreter exit, and, for the leftovers
of a launcher process that died, by the next launcher (:func:`sweep_stale`).  :func:`unavailable` says why
it cannot run here (not Linux, not root, no ``ip``) so that tests skip with that reason.

    with NetnsCluster(workers=3, workdir=tmp) as nc:
        nc.popen(nc.head, ["python", "-m", "actors.cli", "serve", "--ray-address", nc.ray_address, ...])
        nc.cut(nc.workers[0]); ...; nc.heal(nc.workers[0])

Or by hand: ``python tests/multinode.py --workers 3`` holds a cluster until Ctrl-C.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "cg"
"""Every name this module creates starts with ``cg<launcher pid><letter>``: the sweep of a dead launcher's
leftovers finds them by it."""
SUBNET = "10.213"
RAY_PORT = 6379  # each namespace has its own ports: every head can use Ray's default
HEALTH_CHECK = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
"""The head's node health check (GCS): a node whose raylet misses 3 checks a second apart is marked dead,
about 6-7 s after its link goes down, measured (Ray's defaults, 3 s x 5 with a 10 s timeout, take 15-65 s).  A raylet
marked dead exits when it hears of it, with every worker it started: Ray's own fence against a node that
comes back (docs/distributed.md, "Several nodes")."""
_NAME = re.compile(rf"^{PREFIX}(\d+)[a-z]")
_live: list[NetnsCluster] = []


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    if os.geteuid() != 0:
        return "making network namespaces needs root (ip netns add); run the multi-node tests as root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if shutil.which("ray") is None:
        return "the `ray` command is not on PATH (source scripts/env.sh)"
    probe = f"{PREFIX}{os.getpid()}z-probe"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"`ip netns add` failed here: {r.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns(ns: str) -> None:
    """SIGKILL every process in namespace ``ns`` (all started by a launcher), until none is left."""
    for _ in range(50):
        pids = [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def sweep_stale() -> list[str]:
    """Remove the namespaces and links of launchers whose process is gone; the names removed."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.strip() else ""
        m = _NAME.match(ns)
        if m and not _alive(int(m.group(1))):
            _kill_netns(ns)
            _ip("netns", "del", ns, check=False)
            removed.append(ns)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        m = _NAME.match(d.name)
        if m and d.is_dir() and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(str(d))
    return removed


@dataclass
class Node:
    """One namespace: its name, address, host-side link, and (Ray nodes) the ``ray start --block`` process."""

    index: int
    ns: str
    ip: str
    link: str  # the veth end on the bridge, in the launcher's namespace: cut by setting it down
    role: str  # "service", "head" or "worker"
    proc: subprocess.Popen | None = None
    procs: list[subprocess.Popen] = field(default_factory=list)  # everything else started in it

    def __str__(self) -> str:
        return f"{self.role} {self.ns} ({self.ip})"

    def pids(self) -> list[int]:
        """Every process in this node's namespace."""
        return [int(p) for p in _ip("netns", "pids", self.ns, check=False).stdout.split()]


class NetnsCluster:
    """A Ray head and ``workers`` Ray worker nodes plus a service node, each in its own network namespace."""

    _count = 0

    def __init__(
        self,
        workers: int,
        workdir: Path | str,
        *,
        worker_cpus: float = 4,
        object_store_mb: int = 300,
        head_env: dict[str, str] | None = None,
        ray_env: dict[str, str] | None = None,
    ) -> None:
        """``head_env``: extra environment of the head's Ray processes; ``ray_env``: of every process started
        in a namespace (Ray's nodes and their workers, drivers), e.g. ``RAY_*`` system settings."""
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers!r}")
        why = unavailable()
        if why:
            raise RuntimeError(why)
        NetnsCluster._count += 1
        self.name = f"{PREFIX}{os.getpid()}{chr(ord('a') + (NetnsCluster._count - 1) % 25)}"
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.worker_cpus, self.object_store_mb = worker_cpus, object_store_mb
        self.head_env = {**HEALTH_CHECK, **(head_env or {})}
        self.ray_env = dict(ray_env or {})
        self.subnet = self._free_subnet()
        self.bridge = f"{self.name}b"
        self.bridge_ip = f"{self.subnet}.1"
        self.service = self._node(0, "service", 2)
        self.head = self._node(1, "head", 10)
        self.workers = [self._node(2 + i, "worker", 11 + i) for i in range(workers)]
        # Ray's session directories hold its Unix sockets, whose paths must stay under 108 bytes: a short
        # directory of their own, not under the (often long) workdir; removed by close()
        self.ray_tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir="/tmp"))
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in order of creation
        self._closed = False

    # ------------------------------------------------------------------ set-up
    def _node(self, index: int, role: str, host: int) -> Node:
        return Node(index, f"{self.name}-n{index}", f"{self.subnet}.{host}", f"{self.name}h{index}", role)

    @staticmethod
    def _free_subnet() -> str:
        used = set(re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", _ip("-o", "-4", "addr", check=False).stdout))
        free = [x for x in range(1, 255) if str(x) not in used]
        if not free:
            raise RuntimeError(f"no free /24 left in {SUBNET}.0.0/16 on this machine")
        return f"{SUBNET}.{random.choice(free)}"

    @property
    def nodes(self) -> list[Node]:
        return [self.service, self.head, *self.workers]

    @property
    def ray_address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    def start(self, timeout_s: float = 120.0) -> NetnsCluster:
        sweep_stale()
        _live.append(self)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for n in self.nodes:
                self._plumb(n)
            self._start_ray(self.head)
            for w in self.workers:
                self._start_ray(w)
            self.wait_nodes(len(self.workers) + 1, timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def _plumb(self, n: Node) -> None:
        _ip("netns", "add", n.ns)
        self._made.append(("netns", n.ns))
        inner = f"{self.name}c{n.index}"
        _ip("link", "add", n.link, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", n.ns)
        _ip("link", "set", n.link, "master", self.bridge, "up")
        _ip("-n", n.ns, "addr", "add", f"{n.ip}/24", "dev", inner)
        _ip("-n", n.ns, "link", "set", inner, "up")
        _ip("-n", n.ns, "link", "set", "lo", "up")

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process in a namespace: this one's, without what pins Ray to loopback."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        env.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
        env.update(self.ray_env)
        env.update(extra or {})
        return env

    def popen(
        self, node: Node, argv: list[str], *, log: Path | str | None = None, env: dict[str, str] | None = None, **kw
    ) -> subprocess.Popen:
        """Start ``argv`` inside ``node``'s namespace (its own session; output to ``log``)."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env(env),
            start_new_session=True,
            **kw,
        )
        node.procs.append(proc)
        return proc

    def run(self, node: Node, argv: list[str], timeout_s: float = 60.0, env: dict[str, str] | None = None) -> str:
        """Run ``argv`` inside ``node``'s namespace to its end; its stdout (stderr in the error)."""
        r = subprocess.run(
            ["ip", "netns", "exec", node.ns, *argv],
            capture_output=True,
            text=True,
            env=self.env(env),
            timeout=timeout_s,
        )
        if r.returncode != 0:
            raise RuntimeError(f"{argv[:3]} in {node} exited {r.returncode}: {r.stderr[-2000:]}")
        return r.stdout

    def _start_ray(self, n: Node) -> None:
        argv = [
            "ray",
            "start",
            "--block",
            "--node-ip-address",
            n.ip,
            "--object-store-memory",
            str(self.object_store_mb * 1024 * 1024),
            "--disable-usage-stats",
            "--temp-dir",
            str(self.ray_tmp / f"n{n.index}"),
        ]
        if n.role == "head":
            argv += ["--head", "--port", str(RAY_PORT), "--num-cpus", "0", "--include-dashboard", "false"]
            env = self.head_env
        else:
            argv += ["--address", self.ray_address, "--num-cpus", str(self.worker_cpus)]
            env = None
        n.proc = self.popen(n, argv, log=self.workdir / f"{n.ns}.log", env=env)

    # ------------------------------------------------------------------ what tests do
    def ray_nodes(self, timeout_s: float = 60.0) -> list[dict]:
        """Ray's view of the nodes (address, alive, CPUs), asked from a driver on the head."""
        code = (
            "import json, ray\n"
            f"ray.init(address={self.ray_address!r}, log_to_driver=False, logging_level='ERROR')\n"
            "print(json.dumps([{'ip': n['NodeManagerAddress'], 'alive': n['Alive'], 'id': n['NodeID'],"
            " 'cpus': n['Resources'].get('CPU', 0)} for n in ray.nodes()]))\n"
        )
        return json.loads(self.run(self.head, [sys.executable, "-c", code], timeout_s).strip().splitlines()[-1])

    def wait_nodes(self, alive: int, timeout_s: float = 120.0) -> list[dict]:
        """Wait until Ray has at least ``alive`` live nodes; Ray's node list."""
        deadline = time.monotonic() + timeout_s
        while True:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and n.role == "head":
                    raise RuntimeError(f"the Ray head exited ({n.proc.returncode}); see {self.workdir}/{n.ns}.log")
            try:
                nodes = self.ray_nodes(timeout_s=30)
                if sum(x["alive"] for x in nodes) >= alive:
                    return nodes
            except (RuntimeError, subprocess.TimeoutExpired, ValueError, IndexError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Ray did not reach {alive} live nodes in {timeout_s} s; logs in {self.workdir}")
            time.sleep(1.0)

    def worker_at(self, ip: str) -> Node:
        for w in self.workers:
            if w.ip == ip:
                return w
        raise KeyError(f"no worker node has address {ip!r} (workers: {[w.ip for w in self.workers]})")

    def cut(self, node: Node) -> None:
        """Take ``node``'s link down: it keeps running, unreachable (a network partition)."""
        _ip("link", "set", node.link, "down")

    def heal(self, node: Node) -> None:
        _ip("link", "set", node.link, "up")

    def kill_node(self, node: Node) -> None:
        """SIGKILL every process in ``node``'s namespace (a machine that lost power)."""
        _kill_netns(node.ns)
        for p in [node.proc, *node.procs]:
            if p is not None:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
        node.proc, node.procs = None, []

    def restart_node(self, node: Node) -> None:
        """A worker node back: every process in it killed, its link up, a new raylet joined to the head."""
        if node.role != "worker":
            raise ValueError(f"only worker nodes are restarted here, not the {node}")
        self.kill_node(node)
        self.heal(node)
        self._start_ray(node)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for n in reversed(self.nodes):
            if any(kind == "netns" and name == n.ns for kind, name in self._made):
                self.kill_node(n)
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        for logs in self.ray_tmp.glob("n*/session_*/logs"):  # Ray's logs stay, with the rest, in the workdir
            dest = self.workdir / f"ray-logs-{logs.parent.parent.name}"
            shutil.copytree(logs, dest, dirs_exist_ok=True, ignore_dangling_symlinks=True)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
        if self in _live:
            _live.remove(self)

    def __enter__(self) -> NetnsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for nc in list(_live):
        nc.close()


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Hold a namespaced Ray cluster until Ctrl-C (see the module doc).")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--worker-cpus", type=float, default=4)
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        print(f"cannot: {why}", file=sys.stderr)
        return 2
    with NetnsCluster(args.workers, tempfile.mkdtemp(prefix="clustergnn-netns-"), worker_cpus=args.worker_cpus) as nc:
        print(f"Ray at {nc.ray_address}; bridge {nc.bridge_ip}; nodes:", flush=True)
        for n in nc.nodes:
            print(f"  {n}: ip netns exec {n.ns} ...", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
