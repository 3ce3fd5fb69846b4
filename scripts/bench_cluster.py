#!/usr/bin/env python
"""Cluster benchmark: produce -> visible latency (staleness) at fixed rates, the highest sustained rate,
and cross-partition traffic, for P = 1, 2, 4 partition owners on local Ray with the embedded broker.

For each P: start a cluster, load the dataset's initial graph through Kafka, then for each rate stream
the dataset's events (edge insertions) for ``--seconds`` in paced batches.  A monitor notes when each
batch's offsets become visible (the watermark passes them): visible latency = that moment minus the
moment the broker acknowledged the batch.  A rate is *sustained* when the p99 latency stays under
``--sustain-p99-ms`` and the backlog at the end of the window drains within a second.

    python scripts/bench_cluster.py                       # facebook-wosn-links, P = 1,2,4
    python scripts/bench_cluster.py --partitions 4 --rates 20000 --seconds 10
    python scripts/bench_cluster.py --partitions 4 --nodes 0,1,2,3   # several Ray nodes (needs root)

``--nodes``: 0 is the local Ray above; N >= 1 is a Ray head and N worker nodes, each in its own network
namespace (tests/multinode.py), the broker in another: the benchmark itself (the coordinator) then runs
on the head, the owners spread over the workers (``cluster.placement = spread``), and the bytes that
crossed each node's link in each window are read from its interface counters (``wire bytes/mut``: all
traffic in and out of the worker nodes per edge mutation: Kafka fetches, round calls and their replies).

Prints a table, writes results/bench_cluster.json and results/bench_cluster.png (latency over time).
Per rate it also prints the round profile (``round_profile``), rounds per second, round duration p50/p99,
and the round driver's fan-outs and owner calls per busy round, per step (``FanOutCounter``).
Features are seeded random (the dataset has none).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_stream(dataset: str):
    """A dataset by name (``clustergnn.datasets.load``), or a graph saved by :func:`save_stream` (a ``.npz``
    path: ``scripts/bench_cluster_scale.py`` saves only the stream of a graph too big to generate twice)."""
    if not dataset.endswith(".npz"):
        from clustergnn.datasets import load

        return load(dataset)
    from clustergnn.datasets.graph import TemporalGraph

    with np.load(dataset) as z:
        cols = {k: z[k] for k in z.files if k not in ("directed", "description")}
        return TemporalGraph(
            name=dataset,
            directed=bool(z["directed"]),
            native_features=None,
            description=str(z["description"]),
            **cols,
        )


def save_stream(ds, path: str, events: int) -> None:
    """``ds``'s vertices and its first ``events`` stream events, without its initial edges (:func:`load_stream`);
    features are seeded (``native_features`` is not kept)."""
    np.savez(
        path,
        directed=np.array(ds.directed),
        description=np.array(ds.description),
        initial_vertices=ds.initial_vertices,
        initial_src=np.zeros(0, np.int64),
        initial_dst=np.zeros(0, np.int64),
        event_kind=ds.event_kind[:events],
        event_src=ds.event_src[:events],
        event_dst=ds.event_dst[:events],
        event_time_s=ds.event_time_s[:events],
    )


def _producer_process(
    bootstrap: str,
    topic: str,
    P: int,
    dataset: str,
    dim: int,
    start_event: int,
    rate: float,
    seconds: float,
    batches_per_s: int,
    out,
    cycle: bool = False,
) -> None:
    """Replays events at ``rate`` from a process of its own (producers live elsewhere in a deployment,
    and must not share the coordinator's interpreter lock); reports (ack time, offsets, size) per batch.
    ``cycle``: when the dataset's events run out before the window does, go on with the same edges removed,
    then added again, and so on (every removal meets a copy its pass before added; the graph stays the
    size the first pass left), so a saturated window can be longer than the dataset."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clustergnn.partition import HashPartitionMap
    from streams.producer import MutationProducer

    ds = load_stream(dataset)
    events_per_batch = max(1, int(rate / batches_per_s))
    n_batches = max(1, int(seconds * batches_per_s))
    batches = list(
        ds.stream_batches(
            events_per_batch, dim=dim, start=start_event, limit=start_event + events_per_batch * n_batches
        )
    )
    if not batches:
        raise ValueError(
            f"the window starts at event {start_event}, past {dataset}'s {ds.num_events} events: fewer or lower rates, "
            "shorter windows, or --cycle with the last window starting inside the dataset"
        )
    if cycle and len(batches) < n_batches:
        from clustergnn.mutations import MutationBatch, MutationKind

        edges = [(b.src[b.kind == MutationKind.ADD_EDGE], b.dst[b.kind == MutationKind.ADD_EDGE]) for b in batches]
        first = len(batches)
        for k in range(first, n_batches):
            rnd, (src, dst) = k // first, edges[k % first]
            batches.append(MutationBatch.remove_edges(src, dst) if rnd % 2 else MutationBatch.add_edges(src, dst))
    producer = MutationProducer(bootstrap, topic, HashPartitionMap(P))
    producer.send(batches[0].slice(0, 0))  # connect before the clock starts
    out.put(("ready", time.time()))
    t0 = time.time()
    for k, b in enumerate(batches):
        delay = t0 + k / batches_per_s - time.time()
        if delay > 0:
            time.sleep(delay)
        offsets = producer.send(b)
        out.put(("sent", time.time(), offsets, len(b), events_per_batch))
    out.put(("done", time.time(), t0))
    producer.close()


def run_rate(
    cluster, ds, start_event: int, rate: float, seconds: float, batches_per_s: int, cycle: bool = False
) -> dict:
    """Stream events [start_event, ...) at ``rate`` events/s from another process; per-batch visible latency
    (``cycle``: see ``_producer_process``)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    kc = cluster.config.kafka
    proc = ctx.Process(
        target=_producer_process,
        args=(
            kc.bootstrap,
            kc.topic,
            cluster.P,
            ds.name,
            cluster.feature_dim,
            start_event,
            rate,
            seconds,
            batches_per_s,
            q,
            cycle,
        ),
        daemon=True,
    )
    proc.start()
    sent: list[tuple[float, dict[int, int], int]] = []
    visible_at: dict[int, float] = {}
    done = threading.Event()

    def monitor() -> None:  # notes the moment each batch's offsets are all below the watermark
        i = 0
        with cluster._cond:
            while not (done.is_set() and i >= len(sent)):
                while i < len(sent) and all(cluster.watermark[p] > o for p, o in sent[i][1].items()):
                    visible_at[i] = time.time()
                    i += 1
                cluster._cond.wait(0.005)

    mon = threading.Thread(target=monitor, daemon=True)
    mon.start()
    events = 0
    t0 = t_end = None
    while True:
        msg = q.get(timeout=120)
        if msg[0] == "sent":
            sent.append((msg[1], msg[2], msg[3]))
            events += msg[4]
        elif msg[0] == "done":
            t_end, t0 = msg[1], msg[2]
            break
    proc.join(timeout=10)
    done.set()
    mon.join(timeout=max(30.0, seconds * 4))
    lat = np.array([(visible_at[i] - sent[i][0]) * 1000 for i in sorted(visible_at)])
    drained = len(visible_at) == len(sent)
    tail = (visible_at.get(len(sent) - 1, time.time()) - t_end) if sent else 0.0
    mutations = sum(s[2] for s in sent)
    return {
        "rate_events_per_s": rate,
        "events": events,
        "mutations": mutations,
        "achieved_mutations_per_s": mutations / max(t_end - t0, 1e-9),
        "batches": len(sent),
        "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
        "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
        "latency_ms_max": float(lat.max()) if len(lat) else None,
        "drain_s": tail,
        "drained": drained,
        "series": [((sent[i][0] - t0), float(v)) for i, v in zip(sorted(visible_at), lat)],
        "window_epoch_s": [t0, t_end],
    }


def bench_partitions(P: int, ds, args) -> list[dict]:
    import ray

    from actors.cluster import Cluster
    from clustergnn.config import Config
    from streams.broker import EmbeddedBroker

    rows = []
    with contextlib.nullcontext() if args.inner_bootstrap else EmbeddedBroker(port=0) as broker:
        cluster_cfg = {"partitions": P, "collaborative": args.collaborative, "actor_num_cpus": 0.25}
        if args.inner_ray_address:  # on the head of namespaced nodes (--nodes): join their Ray
            cluster_cfg |= {"ray_address": args.inner_ray_address, "placement": "spread"}
        cfg = Config.from_dict(
            {
                "kafka": {
                    "bootstrap": args.inner_bootstrap or broker.bootstrap,
                    "topic": f"bench-{P}",
                    "poll_timeout_ms": args.poll_timeout_ms,
                    "max_poll_records": args.max_poll_records,
                },
                "model": {"builtin": "sage", "in_dim": args.features, "hidden": args.hidden, "out_dim": args.out},
                "cluster": cluster_cfg,
                "graph": {"dataset": None},
            }
        )
        t = time.time()
        cluster = Cluster(cfg).start()
        progress(f"P={P}: cluster up in {time.time() - t:.1f}s; loading {args.dataset} through Kafka")
        owner_nodes = [s.node for s in cluster.status().partitions]
        try:
            t = time.time()
            cluster.load_dataset(args.dataset, timeout_s=1800)
            progress(f"P={P}: initial graph loaded in {time.time() - t:.1f}s")
            pos = 0
            fan = FanOutCounter(cluster)
            for rate in args.rates:
                m0, b0 = cluster.stats.messages, cluster.stats.message_bytes
                mut0 = cluster.stats.mutations
                r0, br0 = cluster.stats.rounds, cluster.stats.busy_rounds
                cluster.stats.step_ms.clear()
                cluster.stats.round_ms.clear()
                fan.clear()
                ray.get([o.clear_profile.remote() for o in cluster.owners])
                t_rate = time.perf_counter()
                r = run_rate(cluster, ds, pos, rate, args.seconds, args.batches_per_s, cycle=args.cycle)
                window_s = time.perf_counter() - t_rate
                pos += r["events"]
                muts = max(cluster.stats.mutations - mut0, 1)
                rounds, busy = cluster.stats.rounds - r0, cluster.stats.busy_rounds - br0
                round_ms = list(cluster.stats.round_ms)
                r.update(
                    {
                        "partitions": P,
                        "owner_nodes": owner_nodes,
                        "messages_per_mutation": (cluster.stats.messages - m0) / muts,
                        "bytes_per_mutation": (cluster.stats.message_bytes - b0) / muts,
                        "round_ms_p50": float(np.percentile(round_ms, 50)),
                        "round_ms_p99": float(np.percentile(round_ms, 99)),
                        "rounds_per_s": rounds / window_s,
                        "busy_rounds_per_s": busy / window_s,
                        "fan_outs_per_round": fan.fan_outs / max(rounds, 1),
                        "fan_outs_per_busy_round": fan.fan_outs / max(busy, 1),
                        "owner_calls_per_busy_round": fan.owner_calls / max(busy, 1),
                        "fan_outs_by_step": dict(fan.by_step),
                    }
                )
                r["sustained"] = bool(
                    r["drained"]
                    and r["latency_ms_p99"] is not None
                    and r["latency_ms_p99"] <= args.sustain_p99_ms
                    and r["drain_s"] <= 1.0
                )
                r["steps_ms_p50"] = {
                    k: float(np.percentile(list(v), 50)) for k, v in cluster.stats.step_ms.items() if v
                }
                r["profile"] = round_profile(
                    r["steps_ms_p50"], ray.get([o.profile.remote() for o in cluster.owners]), cluster.num_layers
                )
                cluster.stats.step_ms.clear()
                rows.append(r)
                progress(
                    f"P={P} rate {rate:,.0f}/s: p50 {r['latency_ms_p50']:.0f} ms p99 {r['latency_ms_p99']:.0f} ms "
                    f"max {r['latency_ms_max']:.0f} ms; sustained={r['sustained']}; steps p50 "
                    + ", ".join(f"{k} {v:.1f}" for k, v in r["steps_ms_p50"].items())
                )
                progress(profile_table(r["profile"]))
                progress(
                    f"P={P} rate {rate:,.0f}/s: {r['rounds_per_s']:.1f} rounds/s ({r['busy_rounds_per_s']:.1f} busy); "
                    f"round p50 {r['round_ms_p50']:.1f} ms p99 {r['round_ms_p99']:.1f} ms; fan-outs per busy round "
                    f"{r['fan_outs_per_busy_round']:.2f}, owner calls per busy round "
                    f"{r['owner_calls_per_busy_round']:.1f}; by step {r['fan_outs_by_step']}"
                )
                if not r["drained"] or r["drain_s"] > 10:
                    progress(f"P={P}: backlog does not drain at {rate:,.0f}/s; stopping the ramp")
                    break
        finally:
            cluster.stop()
    return rows


class LinkBytes(threading.Thread):
    """Bytes through each named link (in this namespace), sampled every 0.25 s: what crossed a node's link
    between two moments (``between``), from the kernel's interface counters."""

    def __init__(self, links: dict[str, str]) -> None:  # role -> interface name
        super().__init__(name="link-bytes", daemon=True)
        self.links, self.samples, self.stop = links, [], threading.Event()

    def read(self) -> dict[str, int]:
        out = {}
        for role, dev in self.links.items():
            stats = Path(f"/sys/class/net/{dev}/statistics")
            out[role] = int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())
        return out

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.time(), self.read()))
            self.stop.wait(0.25)

    def between(self, t0: float, t1: float) -> dict[str, float]:
        ts = np.array([s[0] for s in self.samples])
        return {
            role: float(np.diff(np.interp([t0, t1], ts, [s[1][role] for s in self.samples]))[0]) for role in self.links
        }


def bench_nodes(N: int, P: int, args, workdir: Path) -> list[dict]:
    """``bench_partitions`` on a Ray head and ``N`` worker nodes in network namespaces: this script again,
    run on the head (``--inner-*``), its rows with the bytes that crossed each node's link per window."""
    from streams.broker import EmbeddedBroker
    from tests.multinode import NetnsCluster

    ray_env = dict(kv.split("=", 1) for kv in args.ray_env)
    with NetnsCluster(N, workdir / f"nodes-{N}-P{P}", ray_env=ray_env) as nc:
        with EmbeddedBroker(host=nc.service.ip, netns=nc.service.ns, log_path=nc.workdir / "broker.log") as broker:
            links = {"head": nc.head.link, "broker": nc.service.link}
            links |= {f"w{i}": w.link for i, w in enumerate(nc.workers)}
            sampler = LinkBytes(links)
            sampler.start()
            inner = nc.workdir / "inner.json"
            argv = [sys.executable, str(Path(__file__).resolve()), "--partitions", str(P), "--nodes", "0"]
            argv += ["--inner-ray-address", nc.ray_address, "--inner-bootstrap", broker.bootstrap, "--json", str(inner)]
            for name in ("dataset", "seconds", "batches_per_s", "features", "hidden", "out", "poll_timeout_ms"):
                argv += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            argv += ["--max-poll-records", str(args.max_poll_records), "--sustain-p99-ms", str(args.sustain_p99_ms)]
            argv += ["--rates", ",".join(str(r) for r in args.rates)]
            argv += ["--collaborative"] if args.collaborative else []
            argv += ["--cycle"] if args.cycle else []
            progress(f"{N} worker node(s), P={P}: running the benchmark on the Ray head ({nc.head.ip})")
            env = nc.env({"PYTHONPATH": str(Path(__file__).resolve().parents[1])})
            subprocess.run(["ip", "netns", "exec", nc.head.ns, *argv], env=env, check=True)
            sampler.stop.set()
            sampler.join()
    rows = json.loads(inner.read_text())["rows"]
    for r in rows:
        crossed = sampler.between(*r["window_epoch_s"])
        muts = max(r["mutations"], 1)
        r["nodes"] = N
        r["wire_bytes_per_mutation"] = {k: v / muts for k, v in crossed.items()}
        r["worker_wire_bytes_per_mutation"] = sum(v for k, v in crossed.items() if k.startswith("w")) / muts
    return rows


class FanOutCounter:
    """Counts the round driver's fan-outs (``Cluster._fan_out``: one step on the owners, one ``ray.get``), per
    step, and the owner calls in them (an argument of None leaves that owner out, where the driver does so).
    Wraps the cluster's ``_fan_out``, so it counts the same way on any version of the driver."""

    def __init__(self, cluster) -> None:
        self.clear()
        orig = cluster._fan_out

        def counted(step, args):
            self.fan_outs += 1
            self.owner_calls += sum(a is not None for a in args)
            self.by_step[step] = self.by_step.get(step, 0) + 1
            return orig(step, args)

        cluster._fan_out = counted

    def clear(self) -> None:
        self.fan_outs = self.owner_calls = 0
        self.by_step: dict[str, int] = {}


def step_calls(steps: list[str], num_layers: int) -> dict[str, str]:
    """The owner call behind each of the coordinator's steps (``clustergnn/rounds.py``: the last layer's
    step is ``finish_round_then_ingest`` when the next ingest is fused into it; an isolated round's is
    ``complete_round_then_ingest``)."""
    out = {"ingest": "ingest", "retry": "retry", "structure": "structure"}
    for li in range(num_layers - 1):
        out[f"layer{li}"] = "layer"
    out[f"layer{num_layers - 1}"] = "finish_round_then_ingest"
    out["complete"] = "complete_round_then_ingest"  # an isolated round's one call
    return {k: v for k, v in out.items() if k in steps}


def round_profile(steps_ms_p50: dict[str, float], profiles: list[dict], num_layers: int) -> dict:
    """Per step: the coordinator's time, the slowest owner's time inside the call, and the rest (Ray's
    call and reply, serialisation, scheduling: the difference of the two medians, an estimate); per
    phase inside the owners: the median over owners of each owner's median."""
    steps = {}
    for step, call in step_calls(list(steps_ms_p50), num_layers).items():
        inside = [p[f"call:{call}"]["p50"] for p in profiles if f"call:{call}" in p]
        slowest = max(inside) if inside else float("nan")
        steps[step] = {
            "coordinator_ms_p50": steps_ms_p50[step],
            "in_owner_ms_p50_slowest": slowest,
            "outside_owners_ms": steps_ms_p50[step] - slowest,
        }
    names = sorted({k for p in profiles for k in p if not k.startswith("call:")})
    phases = {n: float(np.median([p[n]["p50"] for p in profiles if n in p])) for n in names}
    return {"steps": steps, "phases_ms_p50": phases}


def profile_table(prof: dict) -> str:
    lines = [
        "round profile, p50 ms: step | coordinator | slowest owner inside its call | outside the owners "
        "(Ray call and reply, serialisation, scheduling)"
    ]
    for step, r in prof["steps"].items():
        cells = (r["coordinator_ms_p50"], r["in_owner_ms_p50_slowest"], r["outside_owners_ms"])
        lines.append(f"  {step:<10}" + "".join(f" {c:8.1f}" for c in cells))
    lines.append(
        "  phases inside an owner (median over owners): "
        + ", ".join(f"{k} {v:.1f}" for k, v in prof["phases_ms_p50"].items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="facebook-wosn-links")
    p.add_argument("--partitions", default="1,2,4")
    p.add_argument(
        "--rates", default="2500,5000,10000,20000,40000", help="dataset events/s (undirected: 2 mutations each)"
    )
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--batches-per-s", type=int, default=20)
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out", type=int, default=64)
    p.add_argument("--collaborative", action="store_true")
    p.add_argument("--poll-timeout-ms", type=int, default=5)
    p.add_argument("--max-poll-records", type=int, default=512)
    p.add_argument("--sustain-p99-ms", type=float, default=500.0)
    p.add_argument(
        "--cycle",
        action="store_true",
        help="when a window runs past the dataset's events, it goes on removing and re-adding its own edges (a "
        "window must still start inside the dataset)",
    )
    p.add_argument(
        "--nodes",
        default="0",
        help="comma list: 0 = local Ray; N = a Ray head and N worker nodes in network namespaces (root only)",
    )
    p.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --nodes: an environment variable of every Ray process (repeatable), e.g. a RAY_* setting",
    )
    p.add_argument("--inner-ray-address", default=None, help=argparse.SUPPRESS)  # --nodes: run on the head
    p.add_argument("--inner-bootstrap", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default="results/bench_cluster.json")
    args = p.parse_args(argv)
    args.rates = [float(x) for x in args.rates.split(",")]
    from clustergnn.datasets import load

    ds = load(args.dataset)
    progress(repr(ds))
    rows = []
    nodes = [int(x) for x in args.nodes.split(",")]
    if any(nodes):
        from tests.multinode import unavailable

        if unavailable():
            p.error(f"--nodes {args.nodes}: {unavailable()}")
    import tempfile

    workdir = Path(tempfile.mkdtemp(prefix="clustergnn-bench-nodes-"))
    for N in nodes:
        for P in [int(x) for x in args.partitions.split(",")]:
            if N == 0:
                rows += [r | {"nodes": 0} for r in bench_partitions(P, ds, args)]
            else:
                rows += bench_nodes(N, P, args, workdir)
    mut_per_event = 1 if ds.directed else 2
    print(
        f"\nclustergnn cluster benchmark: {args.dataset} (seeded random features), 2-layer GraphSAGE-mean "
        f"{args.features}->{args.hidden}->{args.out}{' collaborative' if args.collaborative else ''}; "
        f"local Ray + embedded broker on this machine"
        + (" (nodes N >= 1: a Ray head and N workers in network namespaces; broker in another)" if any(nodes) else "")
    )
    hdr = (
        f"{'nodes':>5} {'P':>2} {'events/s':>9} {'edge mut/s':>10} {'achieved':>9} "
        f"{'vis p50':>8} {'vis p99':>8} {'vis max':>8} "
        f"{'drain s':>7} {'msgs/mut':>8} {'bytes/mut':>9} {'wire B/mut':>10} {'round p50':>9} sustained"
    )
    print(hdr)
    print("-" * len(hdr))
    best: dict[tuple[int, int], float] = {}
    for r in rows:
        wire = r.get("worker_wire_bytes_per_mutation")
        print(
            f"{r['nodes']:>5} {r['partitions']:>2} {r['rate_events_per_s']:>9,.0f} "
            f"{r['rate_events_per_s'] * mut_per_event:>10,.0f} "
            f"{r['achieved_mutations_per_s']:>9,.0f} {r['latency_ms_p50']:>6.0f}ms {r['latency_ms_p99']:>6.0f}ms "
            f"{r['latency_ms_max']:>6.0f}ms {r['drain_s']:>7.2f} {r['messages_per_mutation']:>8.3f} "
            f"{r['bytes_per_mutation']:>9.0f} {'-' if wire is None else f'{wire:,.0f}':>10} "
            f"{r['round_ms_p50']:>7.1f}ms {'yes' if r['sustained'] else 'no'}"
        )
        if r["sustained"]:
            key = (r["nodes"], r["partitions"])
            best[key] = max(best.get(key, 0.0), r["achieved_mutations_per_s"])
    print(
        "\nhighest sustained rate (edge mutations/s): "
        + ", ".join(f"{'' if n == 0 else f'{n} nodes '}P={k}: {v:,.0f}" for (n, k), v in sorted(best.items()))
    )
    if (0, 1) in best and (0, 4) in best:
        print(f"P=4 / P=1 sustained ratio: {best[(0, 4)] / best[(0, 1)]:.2f}")
    for n, k in sorted(best):
        if n > 1 and (1, k) in best:
            print(f"P={k}: {n} nodes / 1 node sustained ratio: {best[(n, k)] / best[(1, k)]:.2f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": {k: v for k, v in vars(args).items()},
                "rows": rows,
                "sustained": {f"nodes={n} P={k}": v for (n, k), v in best.items()},
            },
            indent=1,
        )
    )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 4.5))
        for r in rows:
            s = np.array(r["series"]) if r["series"] else np.zeros((0, 2))
            if len(s):
                ax.plot(
                    s[:, 0],
                    s[:, 1],
                    ".",
                    ms=2,
                    label=f"{r['nodes']}n P={r['partitions']} {r['rate_events_per_s'] * mut_per_event:,.0f} mut/s",
                )
        ax.set_yscale("log")
        ax.set_xlabel("time in the window (s)")
        ax.set_ylabel("produce -> visible (ms)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=110)
        print(f"wrote {out} and {out.with_suffix('.png')}")
    except ImportError:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
