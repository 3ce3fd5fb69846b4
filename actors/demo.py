"""``clustergnn demo``: the README's main job in one process.

It starts an embedded Kafka broker, a local Ray cluster of partition owners and the gRPC gateway, all on
127.0.0.1; loads a real dataset's initial graph through Kafka; streams the rest of the dataset at a
steady rate while querying over gRPC (live latency and served staleness); checks the final embeddings
against a single-process engine; and writes a JSON summary and a plot (``results/demo.{json,png}``).
``scripts/demo.sh`` runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from clustergnn.config import Config

log = logging.getLogger(__name__)


def cmd_demo(args: argparse.Namespace) -> int:
    from actors.cluster import Cluster
    from actors.gateway.server import GatewayServer
    from clustergnn.datasets import load
    from streams.broker import EmbeddedBroker

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = load(args.dataset)
    print(f"dataset: {ds.description}", flush=True)
    with EmbeddedBroker(port=0) as broker:
        cfg = Config.from_dict(
            {
                "kafka": {"bootstrap": broker.bootstrap, "topic": "clustergnn.demo", "poll_timeout_ms": 10},
                "graph": {"dataset": args.dataset},
                "model": {"builtin": args.model, "in_dim": 64, "hidden": 128, "out_dim": 64},
                "cluster": {"partitions": args.partitions, "collaborative": args.collaborative},
                "gateway": {"host": "127.0.0.1", "port": args.port, "insecure_local": True, "metrics_port": None},
            }
        )
        t0 = time.time()
        cluster = Cluster(cfg).start()
        print(
            f"cluster: {args.partitions} partition owners on local Ray, broker {broker.bootstrap} "
            f"({time.time() - t0:.1f}s)",
            flush=True,
        )
        gateway = None
        try:
            t0 = time.time()
            if cluster.restored is not None:  # never reached today (the demo's broker is fresh); kept honest
                print(f"resumed from snapshot {cluster.restored.snapshot_id}: initial graph not reloaded", flush=True)
            else:
                cluster.load_dataset(args.dataset)
                print(
                    f"initial graph: {len(ds.initial_vertices):,} vertices, {len(ds.initial_src):,} edges, loaded "
                    f"through Kafka in {time.time() - t0:.1f}s",
                    flush=True,
                )
            gateway = GatewayServer(cluster, cfg.gateway).start()
            print(f"gateway: {gateway.target} (gRPC, plaintext on loopback)", flush=True)
            result = _stream_and_query(cluster, gateway.target, ds, args)
            result["exactness"] = _check_exact(cluster, gateway.target, ds, args, result["events"])
        finally:
            if gateway is not None:
                gateway.stop()
            cluster.stop()
    _report(result, args, out_dir)
    return 0 if result["exactness"]["max_rel_error"] <= 1e-5 else 1


def _stream_and_query(cluster, target: str, ds, args: argparse.Namespace) -> dict:
    from actors.gateway.client import GatewayClient

    per_batch = max(1, int(args.rate / 20))  # 20 produce calls per second
    produced = {"events": 0, "mutations": 0, "offsets": {}}
    stop = threading.Event()

    def produce() -> None:
        t_start = time.time()
        batches = ds.stream_batches(per_batch, dim=cluster.feature_dim, limit=int(args.rate * args.seconds))
        for i, b in enumerate(batches):
            if stop.is_set():
                break
            delay = t_start + i * per_batch / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
            produced["offsets"] = cluster.apply(b)
            produced["events"] += per_batch
            produced["mutations"] += len(b)

    samples: list[tuple[float, float, float]] = []  # (t since start, latency ms, staleness ms)
    errors = 0
    rng = np.random.default_rng(0)
    ids = ds.initial_vertices
    th = threading.Thread(target=produce, name="demo-producer")
    t0 = time.time()
    th.start()
    last_print = t0
    with GatewayClient(target) as client:
        while th.is_alive():
            q = rng.choice(ids, size=args.ids_per_query)
            t = time.perf_counter()
            try:
                res = client.get_embeddings(q, max_staleness_ms=args.max_staleness_ms, timeout_s=5)
                samples.append((time.time() - t0, (time.perf_counter() - t) * 1000, res.staleness_ms))
            except Exception as exc:  # noqa: BLE001 - counted and shown
                errors += 1
                log.warning("query failed: %s", exc)
            if time.time() - last_print >= 1.0:
                last_print = time.time()
                recent = [s for s in samples if s[0] >= last_print - t0 - 1.0]
                if recent:
                    lat = np.array([s[1] for s in recent])
                    stl = np.array([s[2] for s in recent])
                    print(
                        f"  t={last_print - t0:5.1f}s produced {produced['mutations']:>8,} mutations | query p50 "
                        f"{np.percentile(lat, 50):5.1f} ms p99 {np.percentile(lat, 99):5.1f} ms | staleness p50 "
                        f"{np.percentile(stl, 50):5.0f} ms max {stl.max():5.0f} ms | errors {errors}",
                        flush=True,
                    )
            time.sleep(args.query_interval_ms / 1000)
    th.join()
    elapsed = time.time() - t0
    cluster.wait_for(produced["offsets"], timeout_s=120)
    catch_up = time.time() - t0 - elapsed
    return {
        "samples": samples,
        "errors": errors,
        "events": produced["events"],
        "mutations": produced["mutations"],
        "elapsed_s": elapsed,
        "catch_up_s": catch_up,
        "status": cluster.status().extra,
    }


def _check_exact(cluster, target: str, ds, args: argparse.Namespace, events: int) -> dict:
    """Replay the same mutations into one in-process engine and compare every embedding over gRPC."""
    from actors.gateway.client import GatewayClient
    from clustergnn import Engine
    from clustergnn.models import activation

    single = Engine.from_layers(
        cluster.layers, cluster.feature_dim, activation=activation(cluster.config.model.activation)
    )
    single.bulk_load(ds.initial_batch(dim=cluster.feature_dim, seed=cluster.config.graph.seed))
    per_batch = max(1, int(args.rate / 20))
    for b in ds.stream_batches(per_batch, dim=cluster.feature_dim, limit=events):
        single.apply(b)
    ids = single.vertex_ids()
    worst = 0.0
    with GatewayClient(target) as client:
        for i in range(0, len(ids), 5000):
            chunk = ids[i : i + 5000]
            got = client.get_embeddings(chunk, max_staleness_ms=10_000, timeout_s=30).embeddings
            ref = single.embeddings(chunk).numpy()
            worst = max(worst, float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max()))))
    return {"vertices": int(len(ids)), "edges": int(single.num_edges), "max_rel_error": worst}


def _report(result: dict, args: argparse.Namespace, out_dir: Path) -> None:
    s = np.array(result["samples"]) if result["samples"] else np.zeros((0, 3))
    lat, stl = (s[:, 1], s[:, 2]) if len(s) else (np.zeros(1), np.zeros(1))
    ex = result["exactness"]
    summary = {
        "dataset": args.dataset,
        "partitions": args.partitions,
        "model": args.model,
        "rate_events_per_s": args.rate,
        "mutations": result["mutations"],
        "seconds": round(result["elapsed_s"], 2),
        "achieved_mutations_per_s": round(result["mutations"] / max(result["elapsed_s"], 1e-9)),
        "queries": int(len(s)),
        "query_errors": result["errors"],
        "ids_per_query": args.ids_per_query,
        "query_ms_p50": float(np.percentile(lat, 50)),
        "query_ms_p99": float(np.percentile(lat, 99)),
        "staleness_ms_p50": float(np.percentile(stl, 50)),
        "staleness_ms_p99": float(np.percentile(stl, 99)),
        "staleness_ms_max": float(stl.max()),
        "catch_up_s": round(result["catch_up_s"], 2),
        "final_vertices": ex["vertices"],
        "final_edges": ex["edges"],
        "max_rel_error_vs_single_engine": ex["max_rel_error"],
        "cluster": result["status"],
    }
    (out_dir / "demo.json").write_text(json.dumps({"summary": summary, "samples": result["samples"]}, indent=1))
    print("\nclustergnn demo:", args.dataset, f"({args.partitions} partitions, {args.model}, seeded random features)")
    rows = [
        (
            "mutations streamed",
            f"{summary['mutations']:,} in {summary['seconds']} s ({summary['achieved_mutations_per_s']:,}/s)",
        ),
        ("queries (gRPC)", f"{summary['queries']:,} x {args.ids_per_query} ids, {summary['query_errors']} errors"),
        ("query latency", f"p50 {summary['query_ms_p50']:.1f} ms, p99 {summary['query_ms_p99']:.1f} ms"),
        (
            "served staleness",
            f"p50 {summary['staleness_ms_p50']:.0f} ms, p99 {summary['staleness_ms_p99']:.0f} ms, "
            f"max {summary['staleness_ms_max']:.0f} ms (bound {args.max_staleness_ms:.0f} ms)",
        ),
        ("final graph", f"{ex['vertices']:,} vertices, {ex['edges']:,} edges"),
        (
            "exact?",
            f"max relative error vs a single-process engine {ex['max_rel_error']:.1e} "
            f"({'OK' if ex['max_rel_error'] <= 1e-5 else 'FAILED'}: <= 1e-5)",
        ),
    ]
    for k, v in rows:
        print(f"  {k:18} {v}")
    png = _plot(s, args, out_dir / "demo.png")
    print(f"  {'files':18} {out_dir / 'demo.json'}" + (f", {png}" if png else " (install matplotlib for the plot)"))


def _plot(s: np.ndarray, args: argparse.Namespace, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    if len(s):
        a1.plot(s[:, 0], s[:, 2], ".", ms=3)
        a1.axhline(args.max_staleness_ms, color="r", ls="--", lw=1, label=f"bound {args.max_staleness_ms:.0f} ms")
        a2.plot(s[:, 0], s[:, 1], ".", ms=3, color="tab:green")
    a1.set_ylabel("served staleness (ms)")
    a1.legend(loc="upper right")
    a2.set_ylabel("query latency (ms)")
    a2.set_xlabel("time since streaming started (s)")
    fig.suptitle(f"clustergnn demo: {args.dataset}, {args.partitions} partitions, {args.rate:,.0f} events/s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def add_commands(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("demo", help="up + stream a dataset + query it live + plot (the README's main job)")
    m.add_argument("--dataset", default="collegemsg")
    m.add_argument("--partitions", type=int, default=4)
    m.add_argument("--model", default="sage", choices=["sage", "gcn", "gat", "gin", "sage-pool"])
    m.add_argument("--collaborative", action="store_true")
    m.add_argument("--rate", type=float, default=2000.0, help="dataset events per second")
    m.add_argument("--seconds", type=float, default=15.0)
    m.add_argument("--ids-per-query", type=int, default=16)
    m.add_argument("--query-interval-ms", type=float, default=20.0)
    m.add_argument("--max-staleness-ms", type=float, default=500.0)
    m.add_argument("--port", type=int, default=0, help="gateway port (0: any free one)")
    m.add_argument("--out", default="results")
    m.set_defaults(func=cmd_demo)
