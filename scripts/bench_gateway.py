#!/usr/bin/env python
"""Query latency of the gateway under open-loop load: p50/p99 at fixed request rates.

    python scripts/bench_gateway.py                       # spawn a gateway over an in-memory backend
    python scripts/bench_gateway.py --target host:port --token T --root-cert ca.pem --ids-range 1000000

Open loop: request i is *due* at ``t0 + i / rate`` whatever happened to earlier ones (no coordinated
omission), so a slow answer cannot slow the offered load.  Latency is measured from the due time
(``p50``/``p99``: what a client with that arrival rate sees, including any queueing in the load
generator) and from the actual send (``svc_p99``).  Each cell is bounded in time (``--duration-s``)
and count (rate x duration); outstanding calls are capped (``--max-in-flight``).

By default the server runs in a child process (so client and server each get a core) over an
in-memory backend: ``table`` (a numpy embedding table, always fresh: measures the gateway itself) or
``fake`` (tests/gateway/fakes.FakeBackend).  Prints a table, writes results/bench_gateway.json and,
with matplotlib, results/bench_gateway.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------- server
class TableBackend:
    """An always-fresh ``EmbeddingBackend`` over a ``(num_vertices, dim)`` table: costs one gather."""

    def __init__(self, num_vertices: int, dim: int) -> None:
        rng = np.random.default_rng(0)
        self.table = rng.standard_normal((num_vertices, dim), dtype=np.float32)
        self.versions = np.zeros(num_vertices, dtype=np.int64)

    # ignores freshness bounds (always fresh), so answer_now changes nothing
    def read(  # noqa: ANN001
        self,
        ids,
        *,
        layer=None,
        max_staleness_ms=None,
        min_offsets=None,
        timeout_s=5.0,
        input_features=False,
        answer_now=False,
    ):
        from clustergnn.errors import UnknownVertexError
        from clustergnn.serving import InvalidReadError, ReadResult, resolve_read

        if input_features:
            raise InvalidReadError("this benchmark backend serves one layer and no input features")
        resolve_read(layer, 1)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.table)):
            bad = int(ids[(ids < 0) | (ids >= len(self.table))][0])
            raise UnknownVertexError(f"vertex {bad} is not in the graph")
        return ReadResult(self.table[ids], self.versions[ids], 0.0, {0: 0}, 0)

    def apply(self, batch):  # noqa: ANN001
        return {0: 0}

    def status(self):  # noqa: ANN201
        from clustergnn.serving import ClusterStatus, PartitionStatus

        return ClusterStatus(
            [PartitionStatus(0, True, len(self.table), {0: 0}, 0, 0, 0.0)], {0: 0}, 1, [self.table.shape[1]]
        )


def _stream(bootstrap: str, topic: str, partitions: int, dataset: str, dim: int, rate: float, seconds: float) -> None:
    """A producer process: the dataset's stream at ``rate`` mutations/s for ``seconds``."""
    sys.path.insert(0, str(ROOT))
    from clustergnn.datasets import load
    from clustergnn.partition import HashPartitionMap
    from streams.producer import MutationProducer
    from streams.replay import replay

    ds = load(dataset)
    per_event = 1 if ds.directed else 2
    events = int(rate * seconds / per_event)
    batches = ds.stream_batches(max(1, int(rate / per_event / 20)), dim=dim, limit=events)
    with MutationProducer(bootstrap, topic, HashPartitionMap(partitions)) as producer:
        replay(producer, batches, rate_per_s=rate)


def serve_cluster(args: argparse.Namespace) -> int:
    """The real thing: embedded broker, P owners on local Ray, the gateway, and a dataset streaming in."""
    import multiprocessing as mp

    from actors.cluster import Cluster
    from actors.gateway.server import GatewayServer
    from clustergnn.config import Config
    from clustergnn.datasets import load
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(port=0) as broker:
        cfg = Config.from_dict(
            {
                "kafka": {"bootstrap": broker.bootstrap, "topic": "bench-gateway"},
                "model": {"builtin": "sage", "in_dim": args.dim, "hidden": 128, "out_dim": args.dim},
                "cluster": {"partitions": args.partitions, "collaborative": args.collaborative},
                "graph": {"dataset": args.dataset},
                "gateway": {"port": 0, "metrics_port": None, "insecure_local": True, "max_workers": 64},
            }
        )
        cluster = Cluster(cfg).start()
        cluster.load_dataset(args.dataset)
        np.save(args.port_file + ".ids.npy", load(args.dataset).initial_vertices)
        gw = GatewayServer(cluster, cfg.gateway).start()
        producer = mp.get_context("spawn").Process(
            target=_stream,
            args=(
                broker.bootstrap,
                cfg.kafka.topic,
                args.partitions,
                args.dataset,
                args.dim,
                args.stream_rate,
                args.stream_seconds,
            ),
            daemon=True,
        )
        producer.start()
        Path(args.port_file).write_text(str(gw.port))
        sys.stdin.read()  # the parent closes stdin to stop us
        st = cluster.status().extra
        print(
            f"cluster during the run: {st.get('rounds', 0):.0f} rounds, {cluster.stats.mutations:,} mutations applied, "
            f"staleness now {st.get('staleness_ms', -1):.0f} ms",
            flush=True,
        )
        producer.terminate()
        gw.stop(grace_s=0.5)
        cluster.stop()
    return 0


def serve_child(args: argparse.Namespace) -> int:
    from actors.gateway.server import GatewayServer
    from clustergnn.config import GatewayConfig

    if args.backend == "cluster":
        return serve_cluster(args)
    if args.backend == "table":
        backend = TableBackend(args.num_vertices, args.dim)
    else:
        from tests.gateway.fakes import FakeBackend

        backend = FakeBackend(num_vertices=args.num_vertices, dims=(args.dim, args.dim))
    gw = GatewayServer(backend, GatewayConfig(port=0, metrics_port=None, insecure_local=True)).start()
    Path(args.port_file).write_text(str(gw.port))
    sys.stdin.read()  # the parent closes stdin to stop us
    gw.stop(grace_s=0.5)
    return 0


# ----------------------------------------------------------------------------------------- load
@dataclass(frozen=True)
class Cell:
    ids_per_request: int
    target_rps: int
    achieved_rps: float
    sent: int
    ok: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    svc_p50_ms: float
    svc_p99_ms: float


async def run_cell(stub, pb, metadata, rate: int, n_ids: int, args: argparse.Namespace) -> Cell:  # noqa: ANN001
    rng = np.random.default_rng(rate * 1000 + n_ids)

    def draw() -> list[int]:
        if args.valid_ids is not None:
            return rng.choice(args.valid_ids, n_ids).tolist()
        return rng.integers(0, args.ids_range, n_ids).tolist()

    pool = [pb.GetEmbeddingsRequest(vertex_ids=draw(), max_staleness_ms=args.max_staleness_ms) for _ in range(256)]
    total = int(min(rate * args.duration_s, args.max_requests))
    due_lat = np.full(total, np.nan)
    svc_lat = np.full(total, np.nan)
    errors = 0
    sem = asyncio.Semaphore(args.max_in_flight)
    loop = asyncio.get_running_loop()

    async def one(i: int, due: float) -> None:
        nonlocal errors
        async with sem:
            sent = loop.time()
            try:
                await stub.GetEmbeddings(pool[i % len(pool)], timeout=args.timeout_s, metadata=metadata)
            except Exception:
                errors += 1
                return
            end = loop.time()
            due_lat[i] = end - due
            svc_lat[i] = end - sent

    tasks = []
    t0 = loop.time() + 0.05
    i = 0
    while i < total:
        now = loop.time()
        if now - t0 > args.duration_s * 3:  # bounded even if the generator cannot keep up
            break
        due = t0 + i / rate
        if due > now:
            await asyncio.sleep(due - now)
        while i < total and t0 + i / rate <= loop.time():  # fire everything due (catch up in a burst)
            tasks.append(asyncio.ensure_future(one(i, t0 + i / rate)))
            i += 1
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.timeout_s + 5)
    elapsed = loop.time() - t0
    ok = ~np.isnan(due_lat)
    d, s = due_lat[ok] * 1000, svc_lat[ok] * 1000

    def q(a: np.ndarray, p: float) -> float:
        return float(np.percentile(a, p)) if a.size else float("nan")

    return Cell(
        n_ids,
        rate,
        round(int(ok.sum()) / elapsed, 1),
        i,
        int(ok.sum()),
        errors,
        q(d, 50),
        q(d, 90),
        q(d, 99),
        float(d.max()) if d.size else float("nan"),
        q(s, 50),
        q(s, 99),
    )


async def run_all(target: str, args: argparse.Namespace) -> list[Cell]:
    import grpc

    from actors.gateway._gen import clustergnn_pb2 as pb
    from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
    from actors.gateway.auth import bearer_metadata

    creds = grpc.ssl_channel_credentials(Path(args.root_cert).read_bytes()) if args.root_cert else None
    async with grpc.aio.secure_channel(target, creds) if creds else grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.EmbeddingServiceStub(ch)
        md = bearer_metadata(args.token) if args.token else None
        warm = pb.GetEmbeddingsRequest(vertex_ids=[int(args.valid_ids[0]) if args.valid_ids is not None else 0])
        for _ in range(200):  # connection, server threads and caches warm
            await stub.GetEmbeddings(warm, timeout=args.timeout_s, metadata=md)
        cells = []
        for n_ids in args.ids:
            for rate in args.rates:
                cell = await run_cell(stub, pb, md, rate, n_ids, args)
                print(
                    f"  ids={n_ids:<3} rate={rate:<5} p50={cell.p50_ms:.2f} ms p99={cell.p99_ms:.2f} ms "
                    f"achieved={cell.achieved_rps} rps errors={cell.errors}",
                    flush=True,
                )
                cells.append(cell)
                await asyncio.sleep(0.5)
        return cells


def table(cells: list[Cell]) -> str:
    head = (
        f"{'ids':>4} {'rate':>6} {'achieved':>9} {'ok':>7} {'err':>5} "
        f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'svc p99':>8}"
    )
    rows = [head, "-" * len(head)]
    for c in cells:
        rows.append(
            f"{c.ids_per_request:>4} {c.target_rps:>6} {c.achieved_rps:>9.1f} {c.ok:>7} {c.errors:>5} "
            f"{c.p50_ms:>8.2f} {c.p90_ms:>8.2f} {c.p99_ms:>8.2f} {c.max_ms:>8.2f} {c.svc_p99_ms:>8.2f}"
        )
    return "\n".join(rows)


def plot(cells: list[Cell], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for n_ids in sorted({c.ids_per_request for c in cells}):
        cs = [c for c in cells if c.ids_per_request == n_ids]
        x = [c.target_rps for c in cs]
        ax.plot(x, [c.p50_ms for c in cs], "o--", label=f"{n_ids} ids p50")
        ax.plot(x, [c.p99_ms for c in cs], "s-", label=f"{n_ids} ids p99")
    ax.axhline(10, color="grey", lw=0.8, ls=":", label="10 ms target")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="offered load (requests/s)",
        ylabel="latency (ms)",
        title="clustergnn gateway GetEmbeddings, open loop",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="an existing gateway host:port (default: spawn one)")
    p.add_argument("--token")
    p.add_argument("--root-cert")
    p.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000, 5000])
    p.add_argument("--ids", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    p.add_argument("--duration-s", type=float, default=5.0, help="per cell")
    p.add_argument("--max-requests", type=int, default=30_000, help="per cell")
    p.add_argument("--max-in-flight", type=int, default=1000)
    p.add_argument("--timeout-s", type=float, default=5.0)
    p.add_argument("--ids-range", type=int, default=10_000, help="ids are drawn from [0, ids-range)")
    p.add_argument(
        "--backend",
        choices=["table", "fake", "cluster"],
        default="table",
        help="spawned server's backend; cluster = broker + Ray owners + a dataset streaming in",
    )
    p.add_argument("--dataset", default="facebook-wosn-links", help="cluster backend: the graph")
    p.add_argument("--partitions", type=int, default=4, help="cluster backend: partition owners")
    p.add_argument("--collaborative", action="store_true", help="cluster backend: STAG collaborative mode")
    p.add_argument("--stream-rate", type=float, default=10_000, help="cluster backend: mutations/s streaming in")
    p.add_argument("--stream-seconds", type=float, default=120, help="cluster backend: how long the stream runs")
    p.add_argument("--max-staleness-ms", type=float, default=1000.0, help="bound carried by every request")
    p.add_argument("--num-vertices", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_gateway.json")
    p.add_argument("--serve-fake", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.valid_ids = None
    if args.serve_fake:
        return serve_child(args)

    child = None
    target = args.target
    if target is None:
        port_file = Path(tempfile.mkdtemp()) / "port"
        cmd = [
            sys.executable,
            __file__,
            "--serve-fake",
            "--port-file",
            str(port_file),
            "--backend",
            args.backend,
            "--num-vertices",
            str(args.num_vertices),
            "--dim",
            str(args.dim),
            "--dataset",
            args.dataset,
            "--partitions",
            str(args.partitions),
            "--stream-rate",
            str(args.stream_rate),
            "--stream-seconds",
            str(args.stream_seconds),
        ] + (["--collaborative"] if args.collaborative else [])
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE, cwd=ROOT)
        deadline = time.monotonic() + 300
        while not port_file.exists() or not port_file.read_text():
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the gateway child did not start")
            time.sleep(0.1)
        target = f"127.0.0.1:{port_file.read_text()}"
        args.ids_range = min(args.ids_range, args.num_vertices)
        ids_file = Path(str(port_file) + ".ids.npy")
        args.valid_ids = np.load(ids_file) if ids_file.exists() else None
    print(
        f"gateway {target} ({'spawned, backend=' + args.backend if child else 'external'}), "
        f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    try:
        cells = asyncio.run(run_all(target, args))
    finally:
        if child is not None:
            assert child.stdin is not None
            child.stdin.close()
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    print()
    print(table(cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "target": target,
        "spawned_backend": args.backend if child else None,
        "dim": args.dim,
        "cluster": (
            {
                "dataset": args.dataset,
                "partitions": args.partitions,
                "stream_mutations_per_s": args.stream_rate,
                "collaborative": args.collaborative,
            }
            if child and args.backend == "cluster"
            else None
        ),
        "duration_s": args.duration_s,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1m_after": os.getloadavg()[0],
        "unix_time": time.time(),
    }
    args.out.write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]}, indent=2))
    png = args.out.with_suffix(".png")
    print(f"\nwrote {args.out}" + (f" and {png}" if plot(cells, png) else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
