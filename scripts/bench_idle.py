#!/usr/bin/env python
"""An idle cluster: how stale its answers are, whether ``max_staleness_ms = 0`` succeeds, and what it costs
in CPU while nothing happens (issue 10, item 3: idle staleness <= 10 ms, idle CPU <= 10% of one core).

A P-owner cluster on local Ray with the embedded broker and the gRPC gateway on 127.0.0.1 loads a dataset's
initial graph through Kafka; once caught up, for ``--seconds`` it is left idle while a client reads every
``--interval-ms`` through the gateway, alternating three kinds of read:

* ``unbounded``: no bound; the staleness the answer reports (the owners' last fetch answers);
* ``bound 0``: ``max_staleness_ms = 0``, which the cluster proves with a probe of the log's end;
* ``bound 0, no probe`` (the baseline, in the same run): the staleness the owners' reports alone give, i.e.
  what a bound-0 read was judged on before the probe existed (it always failed at idle).

CPU: seconds of CPU per wall second over the idle window (``/proc/<pid>/stat``) of the driver (round loop,
gateway, probe), each owner process, Ray's own processes (raylet, GCS, ...) and the broker, separately.

    python scripts/bench_idle.py                 # P = 4, collegemsg, 30 s
    python scripts/bench_idle.py --seconds 10 --partitions 2

Prints a table and writes results/bench_idle.json and results/bench_idle.png (staleness over time).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="collegemsg")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--out", default="results")
    ap.add_argument(
        "--no-idle-wait",
        action="store_true",
        help="the baseline: rounds never stop for the idle long poll (writes bench_idle_baseline.*)",
    )
    args = ap.parse_args()

    import grpc

    import actors.cluster
    from actors.cluster import Cluster
    from actors.commands import descendants
    from actors.gateway.client import GatewayClient
    from actors.gateway.server import GatewayServer
    from clustergnn.config import Config
    from clustergnn.datasets import load
    from streams.broker import EmbeddedBroker

    if args.no_idle_wait:
        actors.cluster.IDLE_AFTER_ROUNDS = 10**9  # read at run time by Cluster._run
    stem = "bench_idle_baseline" if args.no_idle_wait else "bench_idle"
    ds = load(args.dataset)
    with EmbeddedBroker(port=0) as broker:
        cfg = Config.from_dict(
            {
                "kafka": {"bootstrap": broker.bootstrap, "topic": "bench.idle"},
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
            n = len(ds.initial_vertices)
            print(f"loaded {args.dataset} ({n:,} vertices) in {time.time() - t:.1f}s", flush=True)
            gw = GatewayServer(cluster, cfg.gateway).start()
            time.sleep(2.0)  # settle: the load's last rounds, the replica
            extra = cluster.status().extra
            pids = {k: v for k, v in extra.items() if k.startswith("owner_") and k.endswith("_pid")}
            owners = {f"owner {k[6:-4]}": int(v) for k, v in pids.items()}
            ray_procs = descendants(os.getpid()) - set(owners.values())
            groups = {"driver (rounds, gateway, probe)": [os.getpid()], **{k: [v] for k, v in owners.items()}}
            groups["ray (raylet, gcs, ...)"] = sorted(ray_procs - ({broker.pid} if broker.pid else set()))
            groups["broker"] = [broker.pid] if broker.pid else []
            ids = np.asarray(ds.initial_vertices[:8])
            samples: list[dict] = []
            before = {k: sum(cpu_s(p) for p in pids) for k, pids in groups.items()}
            t0 = time.monotonic()
            i = 0
            with GatewayClient(gw.target) as client:
                while time.monotonic() - t0 < args.seconds:
                    kind = ("unbounded", "bound 0", "bound 0, no probe")[i % 3]
                    i += 1
                    ts = time.monotonic() - t0
                    if kind == "bound 0, no probe":  # what the reports alone give (the baseline)
                        st = cluster.staleness_ms()
                        samples.append({"t": ts, "kind": kind, "ok": st is not None and st <= 0, "staleness_ms": st})
                    else:
                        t1 = time.perf_counter()
                        try:
                            r = client.get_embeddings(
                                ids, max_staleness_ms=0 if kind == "bound 0" else None, timeout_s=2
                            )
                            ok, st = True, r.staleness_ms
                        except (grpc.RpcError, Exception):  # noqa: BLE001 - counted
                            ok, st = False, None
                        samples.append(
                            {
                                "t": ts,
                                "kind": kind,
                                "ok": ok,
                                "staleness_ms": st,
                                "latency_ms": (time.perf_counter() - t1) * 1000,
                            }
                        )
                    if i % 30 == 0:
                        print(f"  {ts:5.1f}s / {args.seconds:.0f}s: {i} reads", flush=True)
                    time.sleep(args.interval_ms / 1000.0)
            wall = time.monotonic() - t0
            after = {k: sum(cpu_s(p) for p in pids) for k, pids in groups.items()}
        finally:
            if gw is not None:
                gw.stop()
            cluster.stop()

    cpu = {k: (after[k] - before[k]) / wall for k in groups}
    cluster_cpu = sum(v for k, v in cpu.items() if k != "broker")
    rows = []
    for kind in ("unbounded", "bound 0", "bound 0, no probe"):
        s = [x for x in samples if x["kind"] == kind]
        st = [x["staleness_ms"] for x in s if x["ok"] and x["staleness_ms"] is not None]
        base = [x["staleness_ms"] for x in s if x["staleness_ms"] is not None]
        lat = [x["latency_ms"] for x in s if "latency_ms" in x and x["ok"]]
        rows.append(
            {
                "read": kind,
                "n": len(s),
                "ok": sum(x["ok"] for x in s),
                "staleness_p50_ms": pct(st or base, 50),
                "staleness_p99_ms": pct(st or base, 99),
                "staleness_max_ms": max(st or base) if (st or base) else float("nan"),
                "latency_p50_ms": pct(lat, 50),
                "latency_p99_ms": pct(lat, 99),
            }
        )
    print(f"\nidle cluster: P = {args.partitions}, {args.dataset}, {wall:.0f}s, a read every {args.interval_ms:.0f} ms")
    print(f"{'read':<20} {'n':>4} {'ok':>4} {'stale p50':>10} {'p99':>8} {'max':>8} {'lat p50':>8} {'p99':>8}")
    for r in rows:
        print(
            f"{r['read']:<20} {r['n']:>4} {r['ok']:>4} {r['staleness_p50_ms']:>10.1f} {r['staleness_p99_ms']:>8.1f} "
            f"{r['staleness_max_ms']:>8.1f} {r['latency_p50_ms']:>8.1f} {r['latency_p99_ms']:>8.1f}"
        )
    print(f"\n{'process':<32} {'CPU (cores)':>12}")
    for k, v in cpu.items():
        print(f"{k:<32} {v:>12.3f}")
    print(f"{'cluster (all but the broker)':<32} {cluster_cpu:>12.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "reads": rows, "cpu_cores": cpu, "cluster_cpu_cores": cluster_cpu, "samples": samples}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=float))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3.5))
        for kind in ("unbounded", "bound 0, no probe", "bound 0"):
            s = [x for x in samples if x["kind"] == kind and x["staleness_ms"] is not None]
            ax.plot([x["t"] for x in s], [x["staleness_ms"] for x in s], ".", ms=3, label=kind)
        ax.set_xlabel("seconds idle")
        ax.set_ylabel("staleness (ms)")
        ax.set_title(f"idle staleness, P = {args.partitions}; cluster CPU {cluster_cpu:.2f} cores")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{stem}.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no plot (pip install .[plot])")
    print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
