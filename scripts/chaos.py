#!/usr/bin/env python
"""Chaos run: faults injected on a seeded schedule while a producer streams mutations and a client reads,
then an oracle that counts every mutation lost or doubled (issue 11; in the style of Kafka Streams'
exactly-once system test and Flink's end-to-end sequence check).

What runs: the embedded broker, one ``clustergnn serve`` process (the driver: coordinator, gateway and a
local Ray with P partition owners) on 127.0.0.1, a producer thread writing at a steady rate through
Kafka (every ``--txn-every``-th batch as one transaction, which must commit whatever is killed while an
owner holds its part), and a reader thread calling ``GetEmbeddings`` over gRPC.  Faults, drawn from a seeded schedule:

* ``owner``: SIGKILL of one partition owner's process (found among the driver's descendants);
* ``driver``: SIGKILL of ``clustergnn serve`` (and the Ray processes it started), then a new ``serve``
  with the same config: it resumes from the newest snapshot plus a replay;
* ``restart``: SIGTERM of ``serve`` (a rollout), then a new one.

After each fault the run measures the time until gRPC health says SERVING again, then waits a random gap.

**Oracle.**  Every feature update sets its vertex's column 0 to one more than the last (a per-vertex
sequence); an edge added twice is a multi-edge.  At the end the producer stops, the run waits until every
acknowledged record is visible, and compares what the cluster serves with a single-process engine fed the
whole log in the order it was produced: vertices (count), edges (count), per-vertex sequence (column 0 of
layer 0), and every final embedding (relative error).  Lost = sequence numbers missing + vertices and edges
missing; doubled = edges and vertices in excess.  Malformed records (a few) must each reach the
dead-letter topic.

    python scripts/chaos.py --seconds 600 --rate 10000 --owner-kills 50 --driver-kills 5   # the long run
    python scripts/chaos.py --quick                                                        # a short one

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clustergnn.config import Config  # noqa: E402
from clustergnn.mutations import MutationBatch  # noqa: E402
from clustergnn.partition import HashPartitionMap  # noqa: E402

log = logging.getLogger("chaos")


# ---------------------------------------------------------------------------------------------- processes
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Driver:
    """One ``clustergnn serve`` at a time, started and ended by this run only (by process id); on the
    namespaced Ray head when ``netns`` is given (``--nodes``)."""

    def __init__(self, config_path: Path, workdir: Path, netns=None) -> None:
        self.config_path, self.workdir, self.netns = config_path, workdir, netns
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        argv = [sys.executable, "-m", "actors.cli", "serve", "--config", str(self.config_path)]
        log_path = self.workdir / f"serve-{self.starts}.log"
        if self.netns is not None:
            env = {"PYTHONPATH": str(ROOT)}
            self.proc = self.netns.popen(self.netns.head, argv, log=log_path, env=env, cwd=self.workdir)
            return
        out = open(log_path, "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env, start_new_session=True
        )

    def owner_pids(self) -> list[int]:
        if self.proc is None:
            return []
        return [p for p in descendants(self.proc.pid) if cmdline(p).startswith("ray::PartitionOwner")]

    def _reap(self, pids: list[int]) -> None:
        time.sleep(0.5)
        for p in pids:  # what the driver started and left behind (Ray workers finish dying by themselves)
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        assert self.proc is not None
        pids = descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait()
        self._reap(pids)

    def terminate(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        pids = descendants(self.proc.pid)
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._reap(pids)
        return rc


# ---------------------------------------------------------------------------------------------- workload
@dataclass
class Workload:
    """Valid mutations in order, with a per-vertex sequence in feature column 0 (see the module docstring)."""

    rng: np.random.Generator
    dim: int
    alive: list[int]
    next_id: int
    mix: str = "steady"  # a key of MIXES
    seq: dict[int, int] = field(default_factory=dict)
    edges: list[tuple[int, int]] = field(default_factory=list)  # streamed edges (some gone with a vertex)
    _pos: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.first_streamed = self.next_id  # ids from here on were added by the stream
        self._pos = {v: i for i, v in enumerate(self.alive)}
        for v in self.alive:
            self.seq.setdefault(v, 0)

    def _feat(self, v: int) -> torch.Tensor:
        f = self.rng.standard_normal((1, self.dim)).astype(np.float32)
        f[0, 0] = float(self.seq[v])
        return torch.from_numpy(f)

    def _pick(self) -> int:
        return self.alive[int(self.rng.integers(len(self.alive)))]

    def _drop(self, v: int) -> None:
        i = self._pos.pop(v)
        last = self.alive.pop()
        if last != v:
            self.alive[i] = last
            self._pos[last] = i
        self.seq.pop(v)

    # shares of vertex additions, edge additions, edge removals, feature updates, vertex removals
    MIXES = {
        # a graph that keeps its size, as a long-running one does: edges removed nearly as fast as added
        # (of the streamed ones), vertices as fast as added (of the streamed ones while there are any)
        "steady": (0.01, 0.45, 0.43, 0.10, 0.01),
        # grows by ~45% of the rate in edges and 3% in vertices: at 10k/s the graph grows 5x in 15 minutes
        "growing": (0.05, 0.60, 0.15, 0.18, 0.02),
    }

    def batch(self, n: int) -> MutationBatch:
        """``n`` mutations in the shares of ``MIXES[self.mix]``; in one batch in this order of kinds:
        additions of vertices, of edges, removals of edges, updates, removals of vertices (each valid after
        the ones before)."""
        rng = self.rng
        kinds = rng.choice(5, size=n, p=list(self.MIXES[self.mix]))
        n_addv, n_adde, n_reme, n_upd, n_remv = (int((kinds == k).sum()) for k in range(5))
        parts = []
        if n_addv:
            new = list(range(self.next_id, self.next_id + n_addv))
            self.next_id += n_addv
            for v in new:
                self.seq[v] = 0
                self._pos[v] = len(self.alive)
                self.alive.append(v)
            f = rng.standard_normal((n_addv, self.dim)).astype(np.float32)
            f[:, 0] = 0.0
            parts.append(MutationBatch.add_vertices(new, torch.from_numpy(f)))
        alive = np.asarray(self.alive, dtype=np.int64)
        if n_adde:
            src, dst = rng.choice(alive, n_adde), rng.choice(alive, n_adde)
            self.edges.extend(zip(src.tolist(), dst.tolist(), strict=True))
            parts.append(MutationBatch.add_edges(src, dst))
        gone = []
        while len(gone) < n_reme and self.edges:  # swap-remove; an edge of a removed vertex went with it
            i = int(rng.integers(len(self.edges)))
            e = self.edges[i]
            self.edges[i] = self.edges[-1]
            self.edges.pop()
            if e[0] in self._pos and e[1] in self._pos:
                gone.append(e)
        if gone:
            parts.append(MutationBatch.remove_edges([e[0] for e in gone], [e[1] for e in gone]))
        if n_upd:
            vs = rng.choice(alive, n_upd).tolist()
            f = rng.standard_normal((n_upd, self.dim)).astype(np.float32)
            for i, v in enumerate(vs):  # a vertex updated twice in one batch: 1 then 2 more than before
                self.seq[v] += 1
                f[i, 0] = float(self.seq[v])
            parts.append(MutationBatch.update_features(vs, torch.from_numpy(f)))
        n_remv = min(n_remv, len(self.alive) - 16)
        if n_remv > 0:
            streamed = alive[alive >= self.first_streamed] if self.mix == "steady" else alive
            pool = streamed if len(streamed) >= n_remv else alive
            vs = [int(v) for v in rng.choice(pool, n_remv, replace=False)]
            for v in vs:
                self._drop(v)  # its streamed edges stay listed; a removal skips them (ids are never reused)
            parts.append(MutationBatch.remove_vertices(vs))
        return MutationBatch.concat(parts)


class Producer(threading.Thread):
    """Writes ``rate`` mutations/s in batches every ``tick_s``, each acknowledged before the next; keeps the
    log (what was acknowledged, in order) for the oracle; now and then a malformed record."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        pmap,
        work: Workload,
        rate: float,
        bad_every: int,
        txn_every: int = 0,
        tick_s: float = 0.05,
    ) -> None:
        super().__init__(name="chaos-producer", daemon=True)
        from kafka import KafkaProducer

        from streams.producer import MutationProducer

        self.producer = MutationProducer(bootstrap, topic, pmap)
        self.raw = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.topic, self.P, self.work, self.rate, self.bad_every = topic, pmap.num_partitions, work, rate, bad_every
        self.txn_every = txn_every  # every N-th batch is written as one transaction (all of it or none)
        self.txns = 0
        self.tick_s = tick_s
        self.log: list[MutationBatch] = []
        self.offsets: dict[int, int] = {}
        self.bad: list[tuple[int, int]] = []  # (partition, offset) of each malformed record
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.mutations = 0

    def run(self) -> None:
        tick = self.tick_s
        per_tick = max(1, int(self.rate * tick))
        t_next = time.monotonic()
        n = 0
        try:
            while not self.stop.is_set():
                b = self.work.batch(per_tick)
                n += 1
                if self.txn_every and n % self.txn_every == 0:
                    written = self.producer.send_txn(b, f"chaos-{n}")
                    self.txns += 1
                else:
                    written = self.producer.send(b)
                for p, o in written.items():
                    self.offsets[p] = max(self.offsets.get(p, -1), o)
                self.log.append(b)
                self.mutations += len(b)
                if self.bad_every and n % self.bad_every == 0:
                    p = int(self.work.rng.integers(self.P))
                    md = self.raw.send(self.topic, value=b"not a mutation record", partition=p).get(timeout=30)
                    self.bad.append((p, md.offset))
                    self.offsets[p] = max(self.offsets.get(p, -1), md.offset)
                t_next += tick
                self.stop.wait(max(0.0, t_next - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported by the run
            self.error = exc

    def close(self) -> None:
        self.producer.close()
        self.raw.close()


class Reader(threading.Thread):
    """Reads a few random vertices ``rate`` times a second; counts answers by status code and checks that
    watermarks never go backwards within one driver's life."""

    def __init__(self, target: str, ids: list[int], rate: float, seed: int) -> None:  # ids: live, shared
        super().__init__(name="chaos-reader", daemon=True)
        self.target, self.ids, self.rate = target, ids, rate
        self.rng = random.Random(seed)
        self.codes: dict[str, int] = {}
        self.regressions = 0
        self.stop = threading.Event()
        self.epoch = 0  # bumped at each driver restart: a new driver starts from its snapshot's watermark

    def run(self) -> None:
        last: dict[int, int] = {}
        epoch = self.epoch
        conn = client(self.target)
        try:
            while not self.stop.wait(1.0 / self.rate):
                if epoch != self.epoch:
                    epoch, last = self.epoch, {}
                ids = [self.ids[self.rng.randrange(len(self.ids))] for _ in range(4)]
                try:
                    r = conn.get_embeddings(ids, timeout_s=2.0)
                    code = "OK"
                    if any(r.watermark.get(p, 0) < w for p, w in last.items()):
                        self.regressions += 1
                    last = dict(r.watermark)
                except Exception as exc:  # noqa: BLE001 - counted by kind
                    code = type(exc).__name__
                self.codes[code] = self.codes.get(code, 0) + 1
        finally:
            conn.close()


# ---------------------------------------------------------------------------------------------- the run
TLS: dict = {}
"""``token`` and ``root_cert`` of the gateway when it is not on loopback (``--nodes``: it listens on the
namespaced head's address, so TLS and a token, as in a deployment); empty on 127.0.0.1."""


def client(target: str):
    from actors.gateway.client import GatewayClient

    return GatewayClient(target, **TLS)


def owner_nodes(target: str) -> dict[int, str]:
    """Partition -> address of the Ray node its owner runs on, as the cluster's status says."""
    with client(target) as c:
        return {p.partition: p.node for p in c.status(timeout_s=20).partitions}


def owner_pids(target: str, driver: Driver) -> list[int]:
    """The partition owners' processes, as the cluster's status names them (not the spare), and only those
    among this run's driver's descendants."""

    deadline = time.monotonic() + 120
    while True:  # a saturated box can take a while to answer a new connection
        try:
            with client(target) as c:
                extra = c.status(timeout_s=20).extra
            break
        except Exception:  # noqa: BLE001 - retried until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
    named = {int(v) for k, v in extra.items() if k.startswith("owner_") and k.endswith("_pid")}
    if driver.netns is not None:  # owners run under the worker nodes' raylets, not under the driver
        return [p for w in driver.netns.workers for p in w.pids() if p in named]
    return [p for p in driver.owner_pids() if p in named]


def _describe(pid: int) -> str:
    """``pid (state) command line``, from /proc (or ``pid (gone)``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return f"{pid} (gone)"
    return f"{pid} ({state}) {cmd[:160]}"


def node_loss(nc, target: str, sched: random.Random, how: str) -> dict:
    """Lose the worker node that holds the most partition owners: its link cut (``cut``: the node goes on
    running, unreachable) or every process in it killed (``kill``); wait until health is SERVING again.
    Then a cut link comes back: the node's raylet, marked dead by the head meanwhile, must exit by itself
    with every owner process in it (Ray's fence; ``fenced_s``, None if they did not within 30 s), and no
    partition may be served from it.  Finally a fresh raylet joins in its place, for the next fault."""
    from collections import Counter

    nodes = owner_nodes(target)
    count = Counter(ip for ip in nodes.values() if ip)
    top = max(count.values())
    ip = sched.choice(sorted(i for i, n in count.items() if n == top))
    node = nc.worker_at(ip)
    out: dict = {"node": ip, "partitions": sorted(p for p, i in nodes.items() if i == ip), "how": how}
    if how == "cut":
        nc.cut(node)
    else:
        nc.kill_node(node)
    out["to_serving_s"] = wait_serving(target, 120, leave_first=True)
    if how == "cut":
        nc.heal(node)
        t1 = time.monotonic()
        while node.pids() and time.monotonic() - t1 < 30:
            time.sleep(0.1)
        left = node.pids()
        out["fenced_s"] = None if left else round(time.monotonic() - t1, 2)
        if left:  # which of the node's processes outlived the fence, to say why (a raylet, a worker, an agent)
            out["not_fenced"] = [_describe(pid) for pid in left]
    after = owner_nodes(target) if out["to_serving_s"] is not None else {}
    out["served_from_lost_node"] = sorted(p for p, i in after.items() if i == ip)
    nc.restart_node(node)
    return out


def health(target: str, timeout_s: float = 1.0) -> str:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if TLS:
        pem = Path(TLS["root_cert"]).read_bytes()
        ch = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem))
    else:
        ch = grpc.insecure_channel(target)
    with ch:
        try:
            st = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(st.status)
        except grpc.RpcError as e:
            return e.code().name


def wait_serving(target: str, timeout_s: float, leave_first: bool = False) -> float | None:
    """Seconds until health is SERVING (after it has left SERVING, with ``leave_first``); None on timeout."""
    t0 = time.monotonic()
    left = not leave_first
    while time.monotonic() - t0 < timeout_s:
        h = health(target)
        left |= h != "SERVING"
        if left and h == "SERVING":
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def run(args: argparse.Namespace) -> dict:
    from clustergnn.datasets import load
    from clustergnn.models import load_layers
    from streams.broker import EmbeddedBroker

    rng = np.random.default_rng(args.seed)
    sched = random.Random(args.seed)
    work_dir = Path(args.workdir or tempfile.mkdtemp(prefix="clustergnn-chaos-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    nc = None
    if args.nodes:  # Ray head and workers in their own network namespaces (tests/multinode.py)
        from tests.multinode import NetnsCluster

        print(f"[chaos] starting a Ray head and {args.nodes} worker nodes in network namespaces", flush=True)
        nc = NetnsCluster(args.nodes, work_dir / "netns").start()
        broker = EmbeddedBroker(host=nc.service.ip, netns=nc.service.ns, log_path=work_dir / "broker.log")
    else:
        broker = EmbeddedBroker(port=0, log_path=work_dir / "broker.log")
    broker.start()
    port = args.port
    cfg = {
        "kafka": {"bootstrap": broker.bootstrap, "topic": "chaos", "poll_timeout_ms": 10},
        "cluster": {"partitions": args.partitions},
        "model": {"builtin": "sage", "in_dim": args.dim, "hidden": args.hidden, "out_dim": args.out, "seed": 1},
        "graph": {"dataset": None},
        "gateway": {"port": port, "metrics_port": None, "insecure_local": True},
        "snapshot": {"uri": str(work_dir / "snapshots"), "interval_s": args.snapshot_interval_s, "retention": 3},
    }
    host = "127.0.0.1"
    if nc is not None:  # the gateway on the head's address: TLS and a token, as in a deployment
        from actors.commands import self_signed

        host = nc.head.ip
        cert, key = self_signed(["clustergnn-head"], [host])
        for name, data in (("tls.crt", cert), ("tls.key", key), ("token", b"chaos-token-0123456789\n")):
            (work_dir / name).write_bytes(data)
        cfg["gateway"] = {
            "host": host,
            "port": port,
            "metrics_port": None,
            "tls_cert": str(work_dir / "tls.crt"),
            "tls_key": str(work_dir / "tls.key"),
            "tokens_file": str(work_dir / "token"),
        }
        cfg["cluster"] |= {"ray_address": nc.ray_address, "placement": args.placement}
        if args.placement == "pinned":  # partition p on worker p mod N
            cfg["cluster"]["placement_nodes"] = [nc.workers[p % len(nc.workers)].ip for p in range(args.partitions)]
        TLS.update(token="chaos-token-0123456789", root_cert=str(work_dir / "tls.crt"))
    cfg_path = work_dir / "config.json"
    cfg_path.write_text(json.dumps(cfg, indent=1))
    config = Config.from_dict(cfg)
    target = f"{host}:{port}"
    driver = Driver(cfg_path, work_dir, nc)
    pmap = HashPartitionMap(args.partitions)
    result: dict = {"args": vars(args), "faults": []}
    producer = reader = None
    try:
        t_up = time.monotonic()
        driver.start()
        if wait_serving(target, 180) is None:
            raise RuntimeError(f"serve did not come up; see {work_dir}/serve-1.log")
        result["first_start_s"] = time.monotonic() - t_up
        if nc is not None:
            result["nodes"] = {"head": nc.head.ip, "workers": [w.ip for w in nc.workers]}
            result["placement_start"] = owner_nodes(target)
        # the initial graph, through Kafka like everything else
        if args.dataset:
            ds = load(args.dataset)
            init = ds.initial_batch(dim=args.dim, seed=1)
            verts = ds.initial_vertices.tolist()
        else:
            verts = list(range(args.vertices))
            src = rng.choice(verts, args.vertices * 8)
            dst = rng.choice(verts, args.vertices * 8)
            f = torch.from_numpy(rng.standard_normal((len(verts), args.dim)).astype(np.float32))
            init = MutationBatch.concat([MutationBatch.add_vertices(verts, f), MutationBatch.add_edges(src, dst)])
        feats = init.features.clone()
        feats[:, 0] = 0.0  # every vertex's sequence starts at 0 (only additions carry feature rows)
        init = MutationBatch(init.kind, init.src, init.dst, feats)
        work = Workload(rng, args.dim, list(verts), next_id=int(max(verts)) + 1, mix=args.mix)
        producer = Producer(
            broker.bootstrap, "chaos", pmap, work, args.rate, args.bad_every, args.txn_every, args.tick_s
        )
        for p, o in producer.producer.send(init, timeout_s=120).items():
            producer.offsets[p] = o
        producer.log.append(init)
        reader = Reader(target, work.alive, args.read_rate, args.seed)
        producer.start()
        t_stream = time.monotonic()
        reader.start()
        print(f"[chaos] up in {result['first_start_s']:.1f}s; streaming {args.rate:.0f} mutations/s", flush=True)

        kinds = ["owner"] * args.owner_kills + ["driver"] * args.driver_kills + ["restart"] * args.restarts
        kinds += ["node"] * args.node_losses
        sched.shuffle(kinds)
        t_end = time.monotonic() + args.seconds
        for i, kind in enumerate(kinds):
            gap = sched.uniform(args.min_gap_s, args.max_gap_s)
            time.sleep(gap)
            if producer.error is not None:
                raise RuntimeError(f"the producer failed: {producer.error!r}")
            t0 = time.monotonic()
            if kind == "owner":
                pids = owner_pids(target, driver)
                if not pids:
                    raise RuntimeError("no owner process found among the driver's descendants")
                os.kill(sched.choice(pids), signal.SIGKILL)
                took = wait_serving(target, 120, leave_first=True)
            elif kind == "node":
                fault_extra = node_loss(nc, target, sched, args.node_fault)
                took = fault_extra.pop("to_serving_s")
            else:
                if kind == "driver":
                    driver.kill()
                    rc = None
                else:
                    rc = driver.terminate()
                reader.epoch += 1
                driver.start()
                took = wait_serving(target, 180)
            fault = {"kind": kind, "at_s": round(t0 - t_up, 2), "to_serving_s": took}
            if kind == "node":
                fault |= fault_extra
            if kind == "restart":
                fault["exit_code"] = rc
            result["faults"].append(fault)
            shown = f"{took:.2f}s" if took is not None else "NOT RECOVERED"
            print(f"[chaos] fault {i + 1}/{len(kinds)} {kind:7s} -> SERVING in {shown}", flush=True)
            if took is None:
                break
        while time.monotonic() < t_end:
            time.sleep(0.5)
        producer.stop.set()
        producer.join()
        result["stream_s"] = time.monotonic() - t_stream
        if producer.error is not None:
            raise RuntimeError(f"the producer failed: {producer.error!r}")
        result["oracle"] = oracle(target, config, producer, work, args, broker.bootstrap)
        if nc is not None:
            result["placement_end"] = owner_nodes(target)
    finally:
        for th in (producer, reader):
            if th is not None:
                th.stop.set()
        if reader is not None:
            reader.join(timeout=10)
        if driver.proc is not None and driver.proc.poll() is None:
            result["final_exit_code"] = driver.terminate()
        if producer is not None:
            producer.close()
        broker.stop()
        if nc is not None:
            nc.close()
    result["reads"] = dict(reader.codes) if reader else {}
    result["read_watermark_regressions"] = reader.regressions if reader else None
    result["produced_mutations"] = producer.mutations if producer else 0
    result["transactions"] = producer.txns if producer else 0
    result["workdir"] = str(work_dir)
    _ = load_layers  # the oracle loads the model itself
    return result


def oracle(target: str, config: Config, producer: Producer, work: Workload, args, bootstrap: str) -> dict:
    """Wait until every acknowledged record is visible, then compare with a single engine fed the whole log."""
    from clustergnn import Engine
    from clustergnn.models import activation as activation_fn
    from clustergnn.models import load_layers
    from clustergnn.reference import dgl_forward

    t0 = time.monotonic()
    with client(target) as c:
        deadline = time.monotonic() + 300
        while True:
            try:
                c.get_embeddings(work.alive[:1], min_offsets=producer.offsets, timeout_s=10)
                break
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                print(f"[chaos] waiting for the log to become visible: {exc}", flush=True)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the produced log never became visible: {exc!r}") from exc
                time.sleep(0.5)
        catch_up_s = time.monotonic() - t0
        layers = load_layers(config.model)
        single = Engine.from_layers(layers, args.dim)
        single.bulk_load(producer.log[0])
        for b in producer.log[1:]:
            single.apply(b)
        ids = np.sort(single.vertex_ids())
        st = c.status()
        served_vertices = sum(p.num_vertices for p in st.partitions)
        served_edges = int(st.extra.get("edges", -1))
        chunk = config.gateway.max_ids_per_request
        emb, missing = served(c, ids, chunk, single.dims[-1])
        feats, _ = served(c, ids, chunk, args.dim, input_features=True)
    # a vertex the single engine has and the cluster does not: lost (its row compares as NaN, not as off)
    emb[missing], feats[missing] = 0.0, 0.0
    ids_missing = ids[missing]
    ref = single.embeddings(ids).numpy()
    ref[missing] = 0.0
    err = float(np.abs(emb - ref).max() / max(1.0, float(np.abs(ref).max())))
    # and against DGL's own full forward on the same final graph (the engine is tested against it too)
    g, x, ext = single.to_dgl()
    by_id = dgl_forward(layers, g, x, activation_fn(config.model.activation))[-1].numpy()[np.argsort(ext)]
    assert np.array_equal(np.sort(ext), ids)
    by_id[missing] = 0.0
    err_dgl = float(np.abs(emb - by_id).max() / max(1.0, float(np.abs(by_id).max())))
    want_seq = np.array([work.seq[int(v)] for v in ids], dtype=np.int64)
    got_seq = feats[:, 0].astype(np.int64)
    got_seq[missing] = want_seq[missing]  # a missing vertex is lost as a vertex, not again as its updates
    dlq = dead_letters(bootstrap, "chaos.dlq")
    bad = set(producer.bad)
    valid_dead = [k for k in dlq if k not in bad]
    return {
        "catch_up_s": catch_up_s,
        "vertices": {"expected": single.num_vertices, "served": served_vertices},
        "edges": {"expected": int(single.num_edges), "served": served_edges},
        "updates_lost": int(np.clip(want_seq - got_seq, 0, None).sum()),
        "updates_ahead": int(np.clip(got_seq - want_seq, 0, None).sum()),
        "lost": int(np.clip(want_seq - got_seq, 0, None).sum())
        + max(0, single.num_vertices - served_vertices, int(missing.sum()))
        + max(0, int(single.num_edges) - served_edges)
        + len(valid_dead),
        "doubled": max(0, served_vertices - single.num_vertices) + max(0, served_edges - int(single.num_edges)),
        "max_rel_error": err,
        "max_rel_error_dgl": err_dgl,
        "vertices_missing": int(missing.sum()),
        "vertices_missing_first": [int(v) for v in ids_missing[:10]],
        "embeddings_off": int((np.abs(emb - ref).max(axis=1) > 1e-5 * max(1.0, float(np.abs(ref).max()))).sum()),
        "malformed_sent": len(bad),
        "malformed_dead_lettered": len(bad & set(dlq)),
        "dead_letter_duplicates": len(dlq) - len(set(dlq)),
        "valid_dead_lettered": len(valid_dead),
    }


def served(client, ids: np.ndarray, chunk: int, width: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """What the gateway serves for ``ids`` (``chunk`` per request), and a mask of the ids it does not
    know: a chunk that names one is read again id by id."""
    from clustergnn.errors import UnknownVertexError

    out, missing = np.zeros((len(ids), width), dtype=np.float32), np.zeros(len(ids), dtype=bool)
    for i in range(0, len(ids), chunk):
        part = ids[i : i + chunk]
        try:
            out[i : i + len(part)] = client.get_embeddings(part, timeout_s=30, **kw).embeddings
        except UnknownVertexError:
            for j, v in enumerate(part.tolist()):
                try:
                    out[i + j] = client.get_embeddings([v], timeout_s=30, **kw).embeddings[0]
                except UnknownVertexError:
                    missing[i + j] = True
    return out, missing


def dead_letters(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """(source partition, source offset) of every record in the dead-letter topic."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.consumer import H_OFFSET, H_PARTITION

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        out = []
        while any(c.position(tp) < end[tp] for tp in tps):
            for recs in c.poll(timeout_ms=1000).values():
                for r in recs:
                    h = {k: v.decode() for k, v in r.headers}
                    out.append((int(h[H_PARTITION]), int(h[H_OFFSET])))
        return out
    finally:
        c.close()


def table(res: dict) -> str:
    lines = ["fault     injected  recovered  to SERVING p50 / p99 / max (s)"]
    for kind in ("owner", "driver", "restart", "node"):
        fs = [f for f in res["faults"] if f["kind"] == kind]
        if not fs:
            continue
        ok = [f["to_serving_s"] for f in fs if f["to_serving_s"] is not None]
        lines.append(
            f"{kind:8s}  {len(fs):8d}  {len(ok):9d}  "
            f"{percentile(ok, 50):.2f} / {percentile(ok, 99):.2f} / {max(ok) if ok else float('nan'):.2f}"
        )
    o = res.get("oracle")
    if o:
        rate = res["produced_mutations"] / res["stream_s"] if res.get("stream_s") else float("nan")
        lines += [
            f"streamed {res.get('stream_s', float('nan')):.0f}s at {rate:,.0f} mutations/s (acknowledged)",
            f"mutations produced {res['produced_mutations']} ({res.get('transactions', 0)} batches as transactions), "
            f"lost {o['lost']}, doubled {o['doubled']}, "
            f"max rel error {o['max_rel_error']:.2e} ({o['embeddings_off']} embeddings off)",
            f"vertices {o['vertices']}, edges {o['edges']}, updates lost {o['updates_lost']}",
            f"malformed records {o['malformed_sent']}, dead-lettered {o['malformed_dead_lettered']}, "
            f"valid dead-lettered {o['valid_dead_lettered']}, duplicate dead letters {o['dead_letter_duplicates']}",
            f"catch-up after the producer stopped: {o['catch_up_s']:.1f}s",
        ]
    lines.append(f"reads {res['reads']}; watermark regressions {res['read_watermark_regressions']}")
    if "snapshot" in res:
        lines.append(f"snapshots {res['snapshot']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a short run: small graph, 3 owner kills, 1 driver kill")
    ap.add_argument("--seconds", type=float, default=None, help="minimum length of the run; 600 (--quick: 0)")
    ap.add_argument("--rate", type=float, default=10_000.0, help="mutations per second")
    ap.add_argument("--read-rate", type=float, default=20.0)
    ap.add_argument("--owner-kills", type=int, default=None, help="default 50 (--quick: 3)")
    ap.add_argument("--driver-kills", type=int, default=None, help="default 5 (--quick: 1)")
    ap.add_argument("--restarts", type=int, default=None, help="SIGTERM of serve, then a new one; 2 (--quick: 1)")
    ap.add_argument("--min-gap-s", type=float, default=2.0)
    ap.add_argument("--max-gap-s", type=float, default=8.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--dataset", default="facebook-wosn-links", help="initial graph ('' for a random one)")
    ap.add_argument("--vertices", type=int, default=2000, help="random initial graph's vertices")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--out", dest="out", type=int, default=64)
    ap.add_argument("--snapshot-interval-s", type=float, default=10.0)
    ap.add_argument("--bad-every", type=int, default=200, help="a malformed record every N batches (0: none)")
    ap.add_argument(
        "--txn-every",
        type=int,
        default=10,
        help="every N-th batch is written as one transaction (MutationProducer.send_txn; 0: none): all valid, "
        "so every one must commit, across owner and driver kills",
    )
    ap.add_argument(
        "--tick-s",
        type=float,
        default=0.05,
        help="the producer writes one batch (a record per partition) every this many seconds; the embedded "
        "broker's fetch lists every stored batch of a partition, so a long run at 10k/s keeps the batch count "
        "down with 0.5 (docs/operations.md)",
    )
    ap.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="run Ray as a head and this many worker nodes, each in its own network namespace (needs root; "
        "tests/multinode.py); 0: one local Ray node on 127.0.0.1",
    )
    ap.add_argument("--node-losses", type=int, default=0, help="with --nodes: lose the node holding most owners")
    ap.add_argument("--node-fault", choices=["cut", "kill"], default="cut", help="link down, or SIGKILL all in it")
    ap.add_argument(
        "--placement",
        choices=["spread", "pack", "pinned"],
        default="spread",
        help="cluster.placement with --nodes (pinned: partition p on worker node p mod N)",
    )
    ap.add_argument("--port", type=int, default=50171)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--mix",
        choices=sorted(Workload.MIXES),
        default="steady",
        help="steady: 45%% edge additions, 43%% edge removals, 10%% feature updates, 1%% vertex additions and "
        "removals (the graph keeps its size); growing: 60/15/18/5/2 (the earlier default: 5x in 15 min at 10k/s)",
    )
    ap.add_argument("--json", default="results/chaos.json")
    args = ap.parse_args(argv)
    if args.node_losses and not args.nodes:
        ap.error(f"--node-losses {args.node_losses} needs --nodes N (worker nodes in network namespaces)")
    counts = (0.0, 3, 1, 1) if args.quick else (600.0, 50, 5, 2)  # what is given on the command line wins
    for name, n in zip(("seconds", "owner_kills", "driver_kills", "restarts"), counts, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, n)
    if args.quick:
        args.rate = 500.0
        args.dataset, args.vertices, args.dim, args.hidden, args.out = "", 300, 8, 16, 4
        args.min_gap_s, args.max_gap_s, args.snapshot_interval_s, args.bad_every = 1.0, 2.0, 1.0, 20
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run's cleanup (driver, broker) still happens
    res = run(args)
    print(table(res), flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"[chaos] wrote {out}", flush=True)
    o = res.get("oracle") or {}
    ok = o and o["lost"] == 0 and o["doubled"] == 0 and o["max_rel_error"] <= 1e-5
    ok = ok and all(f["to_serving_s"] is not None for f in res["faults"])
    ok = ok and all(f.get("fenced_s", 0) is not None and not f.get("served_from_lost_node") for f in res["faults"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
