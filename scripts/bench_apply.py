#!/usr/bin/env python
"""What a write that waits for its verdict costs: ``Apply`` (a transaction, answered once the owners
have applied it whole or rejected it) against the read-your-writes path it replaces (write the same
mutations to the log without a transaction, then read with ``min_offsets`` until they are visible), in
one run, interleaved, on a real cluster (embedded broker, local Ray, P owners, a gRPC gateway on
127.0.0.1, a real dataset loaded).

    python scripts/bench_apply.py [--partitions 4] [--calls 60] [--edges 1,100]

Workloads per request size: ``apply`` (edges between random existing vertices, so the request spans
the partitions), ``apply-1p`` (every edge into one partition), ``log+read`` (the baseline), and
``rejected`` (a request whose one invalid mutation makes the owners reject it: FAILED_PRECONDITION).
Prints a table, writes results/bench_apply.json and results/bench_apply.png (latency CDFs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="collegemsg")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--calls", type=int, default=60, help="calls per workload and size")
    ap.add_argument("--edges", default="1,100", help="request sizes (edge additions per request)")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()

    import grpc

    from actors.cluster import Cluster
    from actors.gateway import convert
    from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
    from actors.gateway.client import GatewayClient
    from actors.gateway.server import GatewayServer
    from clustergnn import MutationBatch
    from clustergnn.config import Config
    from clustergnn.datasets import load
    from clustergnn.partition import route
    from streams.broker import EmbeddedBroker

    sizes = [int(x) for x in args.edges.split(",")]
    ds = load(args.dataset)
    ids = np.asarray(ds.initial_vertices)
    rng = np.random.default_rng(0)
    results: dict[str, list[float]] = {}
    with EmbeddedBroker(port=0) as broker:
        cfg = Config.from_dict(
            {
                "kafka": {"bootstrap": broker.bootstrap, "topic": f"bench.apply.{uuid.uuid4().hex[:6]}"},
                "graph": {"dataset": args.dataset},
                "cluster": {"partitions": args.partitions},
                "gateway": {"host": "127.0.0.1", "port": 0, "insecure_local": True, "metrics_port": None},
            }
        )
        cluster = Cluster(cfg).start()
        gw = None
        try:
            t = time.time()
            cluster.load_dataset(args.dataset)
            print(f"loaded {args.dataset} ({len(ids):,} vertices) in {time.time() - t:.1f}s", flush=True)
            gw = GatewayServer(cluster, cfg.gateway).start()
            time.sleep(2.0)
            pmap = cluster.pmap
            dim = cluster.feature_dim
            with GatewayClient(gw.target) as client, grpc.insecure_channel(gw.target) as ch:
                stub = pb_grpc.MutationServiceStub(ch)
                total = len(sizes) * args.calls
                done = 0
                for k in sizes:
                    for i in range(args.calls):
                        src, dst = rng.choice(ids, k), rng.choice(ids, k)
                        spread = MutationBatch.add_edges(src, dst)
                        one = ids[pmap.owner(ids) == pmap.owner(ids[i % len(ids) : i % len(ids) + 1])[0]]
                        local = MutationBatch.add_edges(rng.choice(ids, k), rng.choice(one, k))
                        assert len(set(pmap.owner(route(local)).tolist())) == 1
                        work = {
                            f"apply k={k}": lambda b=spread: client.apply(b, timeout_s=30),
                            f"apply-1p k={k}": lambda b=local: client.apply(b, timeout_s=30),
                            f"log+read k={k}": lambda b=spread: client.get_embeddings(
                                [int(b.dst[0])], min_offsets=cluster.apply(b), timeout_s=30
                            ),
                        }
                        bad = MutationBatch.concat(
                            [
                                spread.slice(0, max(0, k - 1)),
                                MutationBatch.add_vertices([int(ids[0])], np.ones((1, dim), np.float32)),
                            ]
                        )
                        req = convert.batch_to_request(bad)

                        def rejected(req=req) -> None:
                            try:
                                stub.Apply(req, timeout=30)
                            except grpc.RpcError as e:
                                assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
                                return
                            raise AssertionError("an add of an existing vertex was applied")

                        work[f"rejected k={k}"] = rejected
                        order = list(work.items())
                        rng.shuffle(order)
                        for name, fn in order:
                            t1 = time.perf_counter()
                            fn()
                            results.setdefault(name, []).append((time.perf_counter() - t1) * 1000)
                        done += 1
                        if done % max(1, total // 10) == 0:
                            print(f"  {done}/{total} rounds of calls", flush=True)
            st = cluster.stats
            rounds_ms = list(st.round_ms)[-500:]
        finally:
            if gw is not None:
                gw.stop()
            cluster.stop()
    rows = []
    print(f"\n{'workload':<18} {'calls':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, xs in results.items():
        row = {"workload": name, "calls": len(xs), **{f"p{q}_ms": pct(xs, q) for q in (50, 90, 99)}, "max_ms": max(xs)}
        rows.append(row)
        print(
            f"{name:<18} {len(xs):>5} {row['p50_ms']:>8.1f} {row['p90_ms']:>8.1f} {row['p99_ms']:>8.1f} {max(xs):>8.1f}"
        )
    print(f"round p50 {pct(rounds_ms, 50):.1f} ms, p99 {pct(rounds_ms, 99):.1f} ms (last {len(rounds_ms)} rounds)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": args.dataset, "partitions": args.partitions, "calls": args.calls, "sizes": sizes}
    result = {"meta": meta, "rows": rows, "round_ms_p50": pct(rounds_ms, 50), "samples_ms": results}
    (out / "bench_apply.json").write_text(json.dumps(result, indent=2, default=float))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, xs in results.items():
            ax.plot(np.sort(xs), np.linspace(0, 1, len(xs)), label=name)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of calls")
        ax.set_title(f"Apply with verdict vs log write + min_offsets read (P = {args.partitions})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "bench_apply.png", dpi=120)
        print(f"wrote {out / 'bench_apply.json'} and {out / 'bench_apply.png'}")
    except ImportError:
        print(f"wrote {out / 'bench_apply.json'} (matplotlib missing: no plot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
