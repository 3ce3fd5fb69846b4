#!/usr/bin/env python
"""An idle cluster: how stale its answers are, whether ``max_staleness_ms = 0`` succeeds, and what it costs
in CPU while nothing happens (issue 10, item 3: idle staleness <= 10 ms, idle CPU of the cluster <= 10% of
one core), against the baseline in the same run.

A P-owner cluster on local Ray with the embedded broker and the gRPC gateway on 127.0.0.1 loads a dataset's
initial graph through Kafka; once caught up it is left idle, alternating ``--segment``-second spells of

* ``idle long poll`` (``cluster.idle_long_poll = true``, the default): rounds stop and the driver long-polls
  the log's end (``streams/probe.py``), each answer whose high watermarks are applied proving the cluster
  fresh up to its fetch's send time, and reads that find that proof older than 10 ms probe first;
* ``rounds`` (the baseline, ``cluster.idle_long_poll = false``): rounds back to back, each owner polling its
  partitions, the cluster as fresh as its owners' last fetches,

switched on the running cluster (``Cluster.idle_long_poll``), so both see the same machine load; the first
``--settle`` seconds after a switch are not measured.  Meanwhile a client in a process of its own (its CPU
is not counted) reads 8 vertices through the gateway every ``--interval-ms``: an unbounded read (the
staleness the answer reports) and a ``max_staleness_ms = 0`` read (success and latency).  A third kind of
spell, ``idle long poll, no reads``, pauses the client: the CPU of a cluster that nobody asks anything.
The driver also samples the cluster's own staleness every 100 ms (``Cluster.staleness_ms``: what status and
metrics report, with no probe), the age of its last proof.

CPU: seconds of CPU per wall second (``/proc/<pid>/stat``) of the driver (round loop, gateway, probe), each
owner process, Ray's raylet, GCS and other processes, and the broker, separately.  "cluster" is the driver
plus the owners (the gateway runs in the driver); Ray's own processes and the broker are reported apart.

    python scripts/bench_idle.py                  # P = 4, collegemsg, 30 s of each mode
    python scripts/bench_idle.py --seconds 10 --partitions 2

Prints progress and a table; writes results/bench_idle.json and results/bench_idle.png (staleness over time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TICK = os.sysconf("SC_CLK_TCK")
MODES = ("idle long poll", "rounds (baseline)", "idle long poll, no reads")


def cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def client_main(args: argparse.Namespace) -> int:
    """The reading client (a process of its own): one JSON line per read, appended to ``args.client_out``."""
    import grpc

    from actors.gateway.client import GatewayClient

    ids = np.asarray(json.loads(args.client_ids), dtype=np.int64)
    end = time.time() + args.seconds
    pause = Path(args.client_out + ".pause")  # the parent creates it while no reads are wanted
    with GatewayClient(args.client) as client, open(args.client_out, "a") as out:
        while time.time() < end:
            tick = time.monotonic()
            if pause.exists():
                time.sleep(args.interval_ms / 1000.0)
                continue
            for kind, bound in (("unbounded", None), ("bound 0", 0)):
                t0, t1 = time.time(), time.perf_counter()
                try:
                    r = client.get_embeddings(ids, max_staleness_ms=bound, timeout_s=2)
                    ok, st, err = True, float(r.staleness_ms), None
                except (grpc.RpcError, Exception) as exc:  # noqa: BLE001 - counted
                    details = exc.details() if isinstance(exc, grpc.RpcError) else repr(exc)
                    ok, st, err = False, None, str(details)[:200]
                lat = (time.perf_counter() - t1) * 1000
                out.write(
                    json.dumps({"t": t0, "kind": kind, "ok": ok, "staleness_ms": st, "latency_ms": lat, "err": err})
                )
                out.write("\n")
            out.flush()
            time.sleep(max(0.0, args.interval_ms / 1000.0 - (time.monotonic() - tick)))
    return 0


def read_samples(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def summarize(samples: list[dict]) -> dict:
    un = [s for s in samples if s["kind"] == "unbounded"]
    b0 = [s for s in samples if s["kind"] == "bound 0"]
    st = [s["staleness_ms"] for s in un if s["ok"]]
    lat = [s["latency_ms"] for s in b0 if s["ok"]]
    lat_un = [s["latency_ms"] for s in un if s["ok"]]
    return {
        "unbounded_reads": len(un),
        "unbounded_ok": sum(s["ok"] for s in un),
        "staleness_p50_ms": pct(st, 50),
        "staleness_p99_ms": pct(st, 99),
        "staleness_max_ms": max(st) if st else float("nan"),
        "unbounded_latency_p50_ms": pct(lat_un, 50),
        "unbounded_latency_p99_ms": pct(lat_un, 99),
        "bound0_reads": len(b0),
        "bound0_ok": sum(s["ok"] for s in b0),
        "bound0_staleness_max_ms": max((s["staleness_ms"] for s in b0 if s["ok"]), default=float("nan")),
        "bound0_latency_p50_ms": pct(lat, 50),
        "bound0_latency_p99_ms": pct(lat, 99),
        "bound0_errors": sorted({s["err"] for s in b0 if not s["ok"]})[:3],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="collegemsg")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds of each mode")
    ap.add_argument("--segment", type=float, default=5.0, help="seconds of one mode before switching")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after a switch that are not measured")
    ap.add_argument("--interval-ms", type=float, default=100.0)
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds idle before measuring (the spare owner starts)")
    ap.add_argument("--out", default="results")
    ap.add_argument(
        "--wait-ms", type=int, help="the idle long poll's broker wait (default: actors.cluster.IDLE_WAIT_MS)"
    )
    ap.add_argument("--client", help=argparse.SUPPRESS)  # internal: run as the reading client of TARGET
    ap.add_argument("--client-out", help=argparse.SUPPRESS)
    ap.add_argument("--client-ids", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args)

    import actors.cluster
    from actors.cluster import Cluster
    from actors.commands import descendants
    from actors.gateway.server import GatewayServer
    from clustergnn.config import Config
    from clustergnn.datasets import load
    from streams.broker import EmbeddedBroker

    if args.wait_ms is not None:
        actors.cluster.IDLE_WAIT_MS = args.wait_ms  # read by every turn of Cluster._idle
    args.wait_ms = actors.cluster.IDLE_WAIT_MS
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / "bench_idle.samples.jsonl"
    samples_path.write_text("")
    pause_path = Path(str(samples_path) + ".pause")
    pause_path.unlink(missing_ok=True)
    n_seg = max(1, int(round(args.seconds / args.segment)))
    load_before = os.getloadavg()
    ds = load(args.dataset)
    segments: list[dict] = []
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
        gw = client = None
        try:
            t = time.time()
            cluster.load_dataset(args.dataset)
            print(
                f"loaded {args.dataset} ({len(ds.initial_vertices):,} vertices) in {time.time() - t:.1f}s", flush=True
            )
            gw = GatewayServer(cluster, cfg.gateway).start()
            deadline = time.monotonic() + 60
            while cluster.idle_periods == 0 and time.monotonic() < deadline:  # caught up and quiet
                time.sleep(0.1)
            if cluster.idle_periods == 0:
                print("the cluster never went idle within 60 s", file=sys.stderr)
                return 1
            extra = cluster.status().extra
            owners = {
                f"owner {k[6:-4]}": int(v) for k, v in extra.items() if k.startswith("owner_") and k.endswith("_pid")
            }
            total_s = len(MODES) * n_seg * (args.segment + args.settle) + args.warmup + 2
            ids = [int(x) for x in np.asarray(ds.initial_vertices[:8])]
            client = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--client",
                    gw.target,
                    "--client-out",
                    str(samples_path),
                    "--client-ids",
                    json.dumps(ids),
                    "--seconds",
                    str(total_s),
                    "--interval-ms",
                    str(args.interval_ms),
                ]
            )
            time.sleep(args.warmup)  # the client connects; the spare owner process imports torch
            others = descendants(os.getpid()) - set(owners.values()) - {client.pid, broker.pid or -1}
            groups = {"driver (rounds, gateway, probe)": [os.getpid()], **{k: [v] for k, v in owners.items()}}
            for name in ("raylet", "gcs_server"):
                groups[f"ray {name}"] = sorted(p for p in others if comm(p) == name)
            groups["ray other"] = sorted(p for p in others if comm(p) not in ("raylet", "gcs_server"))
            groups["broker"] = [broker.pid] if broker.pid else []
            print(
                f"idle: {n_seg} segments of {args.segment:.0f} s per mode, alternating, reads every "
                f"{args.interval_ms:.0f} ms (load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
            for i in range(len(MODES) * n_seg):
                mode = MODES[i % len(MODES)]
                cluster.idle_long_poll = mode != MODES[1]
                if mode == MODES[2]:
                    pause_path.touch()
                else:
                    pause_path.unlink(missing_ok=True)
                time.sleep(args.settle)
                before = {k: sum(cpu_s(p) for p in ps) for k, ps in groups.items()}
                other0 = {p: cpu_s(p) for p in groups["ray other"]}
                rounds0, w0, t0 = cluster.round_id, time.monotonic(), time.time()
                own: list[float] = []  # the cluster's own staleness (no probe), sampled every 100 ms
                while time.monotonic() - w0 < args.segment:
                    st = cluster.staleness_ms()
                    if st is not None:
                        own.append(st)
                    time.sleep(min(0.1, max(0.0, args.segment - (time.monotonic() - w0))))
                after = {k: sum(cpu_s(p) for p in ps) for k, ps in groups.items()}
                wall, t1 = time.monotonic() - w0, time.time()
                cpu = {k: (after[k] - before[k]) / wall for k in groups}
                seg = {
                    "mode": mode,
                    "t0": t0,
                    "t1": t1,
                    "wall_s": wall,
                    "rounds": cluster.round_id - rounds0,
                    "own_staleness_ms": own,
                    "cpu_cores": cpu,
                    "load1": os.getloadavg()[0],
                    "ray_other": {f"{p} {comm(p)}": (cpu_s(p) - c) / wall for p, c in other0.items()},
                }
                segments.append(seg)
                got = [s for s in read_samples(samples_path) if t0 <= s["t"] < t1]
                sm = summarize(got)
                cl = sum(v for k, v in cpu.items() if k.startswith(("driver", "owner")))
                print(
                    f"  {i + 1:2d}/{len(MODES) * n_seg} {mode:<24} staleness p50 {sm['staleness_p50_ms']:5.1f} ms, "
                    f"max {sm['staleness_max_ms']:5.1f} ms; bound 0 ok {sm['bound0_ok']}/{sm['bound0_reads']}; "
                    f"cluster CPU {cl:.3f}; rounds {seg['rounds']}; load {seg['load1']:.2f}",
                    flush=True,
                )
        finally:
            if client is not None:
                client.terminate()
                client.wait(timeout=10)
            if gw is not None:
                gw.stop()
            cluster.stop()

    samples = read_samples(samples_path)
    per_mode = {}
    for mode in MODES:
        segs = [s for s in segments if s["mode"] == mode]
        wall = sum(s["wall_s"] for s in segs)
        cpu = {k: sum(s["cpu_cores"][k] * s["wall_s"] for s in segs) / wall for k in segs[0]["cpu_cores"]}
        got = [x for x in samples if any(s["t0"] <= x["t"] < s["t1"] for s in segs)]
        per_mode[mode] = {
            **summarize(got),
            "cpu_cores": cpu,
            "cluster_cpu_cores": sum(v for k, v in cpu.items() if k.startswith(("driver", "owner"))),
            "ray_cpu_cores": sum(v for k, v in cpu.items() if k.startswith("ray")),
            "seconds": wall,
            "rounds_per_s": sum(s["rounds"] for s in segs) / wall,
            "own_staleness_p50_ms": pct([x for s in segs for x in s["own_staleness_ms"]], 50),
            "own_staleness_p99_ms": pct([x for s in segs for x in s["own_staleness_ms"]], 99),
            "own_staleness_max_ms": max((x for s in segs for x in s["own_staleness_ms"]), default=float("nan")),
        }
    new, base, quiet = (per_mode[m] for m in MODES)
    print(
        f"\nidle cluster: P = {args.partitions}, {args.dataset}, {new['seconds']:.0f} s of each mode in "
        f"{args.segment:.0f} s segments, 8 ids per read every {args.interval_ms:.0f} ms; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    rows = [
        ("unbounded reads ok", "unbounded_ok", "{:.0f}"),
        ("  staleness p50 (ms)", "staleness_p50_ms", "{:.1f}"),
        ("  staleness p99 (ms)", "staleness_p99_ms", "{:.1f}"),
        ("  staleness max (ms)", "staleness_max_ms", "{:.1f}"),
        ("  latency p50 (ms)", "unbounded_latency_p50_ms", "{:.1f}"),
        ("  latency p99 (ms)", "unbounded_latency_p99_ms", "{:.1f}"),
        ("max_staleness_ms=0 reads", "bound0_reads", "{:.0f}"),
        ("  ok", "bound0_ok", "{:.0f}"),
        ("  latency p50 (ms)", "bound0_latency_p50_ms", "{:.1f}"),
        ("  latency p99 (ms)", "bound0_latency_p99_ms", "{:.1f}"),
        ("cluster's own staleness, no probe", "own_staleness_p50_ms", ""),
        ("  p50 (ms)", "own_staleness_p50_ms", "{:.1f}"),
        ("  p99 (ms)", "own_staleness_p99_ms", "{:.1f}"),
        ("  max (ms)", "own_staleness_max_ms", "{:.1f}"),
        ("rounds per second", "rounds_per_s", "{:.1f}"),
    ]
    print(f"{'':<34} {'idle long poll':>16} {'rounds':>16} {'long poll,':>16}")
    print(f"{'':<34} {'':>16} {'(baseline)':>16} {'no reads':>16}")
    for label, key, fmt in rows:
        print(f"{label:<34} " + " ".join(f"{fmt.format(m[key]):>16}" for m in (new, base, quiet)))
    print("CPU (cores)")
    for k in new["cpu_cores"]:
        print(f"  {k:<32} " + " ".join(f"{m['cpu_cores'][k]:>16.3f}" for m in (new, base, quiet)))
    for label, key in (
        ("cluster (driver + owners)", "cluster_cpu_cores"),
        ("ray (raylet, gcs, other)", "ray_cpu_cores"),
    ):
        print(f"  {label:<32} " + " ".join(f"{m[key]:>16.3f}" for m in (new, base, quiet)))
    ratio = base["cluster_cpu_cores"] / new["cluster_cpu_cores"] if new["cluster_cpu_cores"] > 0 else float("inf")
    print(f"cluster CPU, baseline / idle long poll: {ratio:.1f}x")
    for mode in MODES:
        if per_mode[mode]["bound0_errors"]:
            print(f"{mode}: bound-0 failures, e.g. {per_mode[mode]['bound0_errors']}")
    result = {
        "args": vars(args),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "modes": per_mode,
        "cluster_cpu_ratio_baseline_over_new": ratio,
        "segments": segments,
        "samples": samples,
    }
    (out / "bench_idle.json").write_text(json.dumps(result, indent=2, default=float))
    samples_path.unlink(missing_ok=True)
    pause_path.unlink(missing_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t_start = segments[0]["t0"] if segments else 0.0
        fig, ax = plt.subplots(figsize=(9, 3.8))
        for seg in segments:
            if seg["mode"] != MODES[0]:
                ax.axvspan(
                    seg["t0"] - t_start, seg["t1"] - t_start, color="0.9" if seg["mode"] == MODES[1] else "0.97", lw=0
                )
        for mode, color in zip(MODES[:2], ("tab:blue", "tab:orange")):
            segs = [s for s in segments if s["mode"] == mode]
            xs = [
                x
                for x in samples
                if x["kind"] == "unbounded" and x["ok"] and any(s["t0"] <= x["t"] < s["t1"] for s in segs)
            ]
            ax.plot(
                [x["t"] - t_start for x in xs],
                [x["staleness_ms"] for x in xs],
                ".",
                ms=3,
                color=color,
                label=f"{mode}: cluster CPU {per_mode[mode]['cluster_cpu_cores']:.2f} cores",
            )
        ax.axhline(10, color="k", lw=0.6, ls="--")
        ax.set_xlabel("seconds (grey: baseline segments; light grey: no reads)")
        ax.set_ylabel("staleness of unbounded reads (ms)")
        ax.set_title(
            f"idle cluster, P = {args.partitions}: served staleness; max_staleness_ms=0 ok "
            f"{new['bound0_ok']}/{new['bound0_reads']} (long poll), {base['bound0_ok']}/{base['bound0_reads']} (rounds)"
        )
        ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "bench_idle.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no plot (pip install .[plot])")
    print(f"wrote {out / 'bench_idle.json'} and {out / 'bench_idle.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
