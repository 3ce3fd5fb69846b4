#!/usr/bin/env python
"""What a snapshot costs a running cluster, and how long a restarted driver takes to resume.

A dataset's initial graph (``--dataset``, default facebook-wosn-links) goes through the embedded broker
into ``--partitions`` owners on local Ray (SAGE 64-128-64), with snapshots every ``--interval-s`` to a
local directory; ``--batches`` stream batches follow.  Then the driver stops (no final snapshot) and a
new one resumes from the newest snapshot.  Prints a table and writes results/bench_cluster_snapshot.json:
per snapshot the stall of the rounds at the cut (export), the owners' background write, cut to commit,
the bytes; and the restart's time to resume.  No assertion on any time.

    python scripts/bench_cluster_snapshot.py --dataset collegemsg --batches 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="facebook-wosn-links")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--interval-s", type=float, default=2.0)
    args = ap.parse_args()

    from actors.cluster import Cluster
    from clustergnn.config import Config
    from clustergnn.datasets import load
    from streams.broker import EmbeddedBroker

    ds = load(args.dataset)
    snaps: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        cfg = Config.from_dict(
            {
                "kafka": {"bootstrap": broker.bootstrap, "topic": "bench-snap"},
                "cluster": {"partitions": args.partitions, "actor_num_cpus": 0.5, "ray_num_cpus": 8},
                "graph": {"dataset": None},
                "snapshot": {"uri": tmp, "interval_s": args.interval_s, "retention": 2},
            }
        )
        c = Cluster(cfg).start()
        t = time.time()
        c.load_dataset(args.dataset)
        load_s = time.time() - t
        last = None
        offsets = {}
        t = time.time()
        stream = ds.stream_batches(args.batch_size, dim=c.feature_dim, limit=args.batches * args.batch_size)
        for b in stream:
            offsets = c.apply(b)
            time.sleep(0.1)
            if c.last_snapshot is not last:
                last = c.last_snapshot
                snaps.append(dict(last))
        c.wait_for(offsets, timeout_s=600)
        stream_s = time.time() - t
        deadline = time.time() + 60
        while (c._snap_inflight is not None or not snaps) and time.time() < deadline:
            time.sleep(0.2)
            if c.last_snapshot is not last:
                last = c.last_snapshot
                snaps.append(dict(last))
        vertices = sum(p.num_vertices for p in c.status().partitions)
        c.stop()
        t = time.time()
        c2 = Cluster(cfg).start()
        resume_s = time.time() - t
        t = time.time()
        c2.wait_for(offsets, timeout_s=600)
        replay_s = time.time() - t
        c2.stop()
    print(f"{args.dataset}: {vertices:,} vertices, P={args.partitions}, load {load_s:.1f}s, stream {stream_s:.1f}s")
    print("| snapshot | round | MB | stall ms | export s | write s | cut to commit s |")
    print("|---|---|---|---|---|---|---|")
    for s in snaps:
        print(
            f"| {s['id']} | {s['round']} | {s['size_bytes'] / 1e6:.1f} | {s['stall_ms']:.0f} | {s['export_s']:.3f} "
            f"| {s['write_s']:.3f} | {s['duration_s']:.2f} |"
        )
    print(f"restart: start + restore {resume_s:.1f}s, replay to the old end {replay_s:.1f}s")
    out = Path("results") / "bench_cluster_snapshot.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": vars(args), "vertices": vertices, "snapshots": snaps, "resume_s": resume_s, "replay_s": replay_s},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
