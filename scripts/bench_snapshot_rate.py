#!/usr/bin/env python
"""Sustained ingest rate with snapshots every ``--interval-s`` seconds against the same cluster without
snapshots, in one run (the durability issue's target: >= 90%).

For each configuration, alternating (off, on, off, on, ... ``--pairs`` times): a P-owner cluster on local Ray
with the embedded broker loads the dataset's initial graph through Kafka, then a producer offers the
dataset's edge events at ``--offered`` per second (above what the cluster applies, so it runs saturated)
for ``--seconds``; the sustained rate is the mutations the cluster applied in that window divided by its
length (``Cluster.stats.mutations``), so a snapshot's stall shows as mutations not applied.  Also printed:
visible latency p50/p99 of the offered batches that became visible within the window, the snapshots
taken, and their stall.

    python scripts/bench_snapshot_rate.py                      # facebook-wosn-links, P = 4, 2 pairs, 40 s
    python scripts/bench_snapshot_rate.py --seconds 20 --pairs 1

Prints a table and writes results/bench_snapshot_rate.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_cluster import progress, run_rate  # noqa: E402


def one(snapshots: bool, ds, args, snap_dir: Path) -> dict:
    from actors.cluster import Cluster
    from clustergnn.config import Config
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(port=0) as broker:
        cfg = {
            "kafka": {"bootstrap": broker.bootstrap, "topic": "rate", "poll_timeout_ms": 5, "max_poll_records": 512},
            "model": {"builtin": "sage", "in_dim": args.features, "hidden": args.hidden, "out_dim": args.out},
            "cluster": {"partitions": args.partitions, "actor_num_cpus": 0.25},
            "graph": {"dataset": None},
        }
        if snapshots:
            cfg["snapshot"] = {"uri": str(snap_dir), "interval_s": args.interval_s, "retention": 2}
        cluster = Cluster(Config.from_dict(cfg)).start()
        try:
            t = time.time()
            cluster.load_dataset(args.dataset, timeout_s=1800)
            progress(f"snapshots {'on' if snapshots else 'off'}: initial graph loaded in {time.time() - t:.1f}s")
            n0 = (cluster.last_snapshot or {}).get("count", 0)
            m0, t0 = cluster.stats.mutations, time.time()
            # the dataset's edges, then removed, then added again...: a saturated window longer than the dataset
            r = run_rate(cluster, ds, 0, args.offered, args.seconds, args.batches_per_s, cycle=True)
            # everything offered, applied: from the window's start until the backlog drained (run_rate waits)
            applied, took = cluster.stats.mutations - m0, time.time() - t0
            last = cluster.last_snapshot or {}
            return {
                "snapshots": snapshots,
                "offered_per_s": args.offered,
                "applied": applied,
                "window_s": took,
                "sustained_per_s": applied / took,
                "latency_ms_p50": r["latency_ms_p50"],
                "latency_ms_p99": r["latency_ms_p99"],
                "snapshots_taken": last.get("count", 0) - n0,
                "last_stall_ms": last.get("stall_ms"),
                "last_size_mb": (last.get("size_bytes") or 0) / 1e6,
                "last_write_s": last.get("write_s"),
            }
        finally:
            cluster.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="facebook-wosn-links")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--offered", type=float, default=40_000.0, help="events/s offered (above capacity)")
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--interval-s", type=float, default=10.0)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--batches-per-s", type=int, default=20)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out", type=int, default=64)
    p.add_argument("--json", default="results/bench_snapshot_rate.json")
    args = p.parse_args(argv)
    from clustergnn.datasets import load

    ds = load(args.dataset)
    rows = []
    with tempfile.TemporaryDirectory(prefix="clustergnn-rate-") as tmp:
        for i in range(args.pairs):
            for snapshots in (False, True):
                rows.append(one(snapshots, ds, args, Path(tmp) / f"snaps-{i}"))
                r = rows[-1]
                progress(
                    f"pair {i + 1} snapshots {'on ' if snapshots else 'off'}: {r['sustained_per_s']:,.0f} mutations/s "
                    f"sustained ({r['snapshots_taken']} snapshots)"
                )
    print(
        f"\n{args.dataset}, P = {args.partitions}, offered {args.offered:,.0f}/s for {args.seconds:.0f}s, "
        f"snapshots every {args.interval_s:g}s (a local directory)"
    )
    print(
        f"{'pair':>4} {'snapshots':>9} {'sustained/s':>12} {'ratio':>6} {'lat p50 ms':>10} {'lat p99 ms':>10} "
        f"{'taken':>5} {'stall ms':>8} {'MB':>7}"
    )
    ratios = []
    for i in range(args.pairs):
        off, on = rows[2 * i], rows[2 * i + 1]
        ratio = on["sustained_per_s"] / off["sustained_per_s"]
        ratios.append(ratio)
        for r in (off, on):
            print(
                f"{i + 1:>4} {'on' if r['snapshots'] else 'off':>9} {r['sustained_per_s']:>12,.0f} "
                f"{ratio if r['snapshots'] else 1.0:>6.2f} {r['latency_ms_p50'] or float('nan'):>10.0f} "
                f"{r['latency_ms_p99'] or float('nan'):>10.0f} {r['snapshots_taken']:>5} "
                f"{r['last_stall_ms'] or 0:>8.0f} {r['last_size_mb']:>7.1f}"
            )
    print(f"ratio on/off: {min(ratios):.2f}-{max(ratios):.2f} (mean {float(np.mean(ratios)):.2f})")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "ratios": ratios}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
