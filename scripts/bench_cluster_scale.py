#!/usr/bin/env python
"""The same graph through the cluster: P partition owners load a large R-MAT graph through Kafka and serve it.

On an R-MAT graph (``--scale``, ``--edge-factor``; ogbn-products' shape by default: 2^21 vertices, edge
factor 59, 2-layer SAGE-mean 100 -> 128 -> 47, seeded random features), with the embedded broker and P
owners (Ray actors, ``actors/cluster.py``) on this machine:

* **produce**: a subprocess generates the graph and writes the initial graph to the mutation topic
  (every vertex with its features, then every edge, in chunks), then exits; the stream's events are kept
  in a small ``.npz`` for the rate phase.  The whole log is in the broker before the owners start.
* **load**: the cluster starts and its owners read their partitions from offset 0 (the replay a restart
  does); load time is from the start of the cluster until every partition's watermark has passed its
  last offset; mutations/s is the initial graph's mutations over that time.  Progress every
  ``--progress-s`` (offsets visible, RSS).
* **memory**: per owner its engine's arrays by kind and its process's RSS, from the cluster's status
  (``PartitionStatus.memory_bytes`` / ``rss_bytes``); the RSS of every process this run started (owners,
  driver, broker, Ray's own processes; the sum counts shared pages once per process), sampled every
  second, and its peak over the load.  ``--max-total-rss-gib`` stops the run (every process it started,
  by pid) before the out-of-memory killer would.
* **updates**: the rest of the R-MAT stream (insertions with 20% deletions) at each of ``--rates`` edge
  mutations/s for ``--seconds``, produced from another process (``scripts/bench_cluster.py``'s
  ``run_rate``): visible latency p50/p99 (acknowledged by the broker -> the watermark passes it),
  achieved rate, whether the backlog drains (sustained: p99 <= ``--sustain-p99-ms`` and drained within 1 s).
* **exactness**: the final embeddings of ``--samples`` random vertices read from the cluster, against
  DGL's own forward on the final graph (the initial graph minus the deleted, plus the inserted edges,
  rebuilt from the seed once the cluster is stopped; ``scripts/bench_scale.py``'s DGL worker, in a
  subprocess): relative error ``max|ours - DGL| / max(1, max|DGL|)``.

    python scripts/bench_cluster_scale.py                        # products-shaped, P = 4
    python scripts/bench_cluster_scale.py --scale 18 --rates 2000,5000 --seconds 10
    python scripts/bench_cluster_scale.py --scale 10 --edge-factor 8 --rates 500 --seconds 2   # seconds

Binds 127.0.0.1 only; ends only the processes it started.  Prints tables, progress on stderr, writes
results/bench_cluster_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cluster import profile_table, progress, round_profile, run_rate, save_stream  # noqa: E402

GIB = 1 << 30


# ---------------------------------------------------------------------------- processes and their memory
def _children() -> dict[int, list[int]]:
    """ppid -> pids, from /proc."""
    out: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(d))
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (Ray's GCS and raylet, its workers, the broker, subprocesses)."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


# glibc malloc with two arenas, an mmap threshold fixed at 256 KiB (a freed large block goes back to the
# system; glibc otherwise raises the threshold after such a free, keeping later ones in the heap) and a
# 1 MiB trim threshold (docs/distributed.md, "The same graph through the cluster")


def rss_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def role_of(pid: int) -> str:
    """``ray`` (Ray's GCS, raylet, workers and helpers) or ``other`` (e.g. the rate phase's producer)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return "other"
    return "ray" if b"ray" in cmd or b"gcs_server" in cmd else "other"


class RssSampler(threading.Thread):
    """Every ``interval_s``: the RSS of every process below this one, by role (``roles``: pid -> name; the
    rest is ``ray``, Ray's own processes and idle workers, or ``other``); keeps the peak of the total and, with
    ``limit`` bytes, calls ``on_limit`` once when the total crosses it."""

    def __init__(self, interval_s: float = 1.0, limit: int | None = None, on_limit=None) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval_s, self.limit, self.on_limit = interval_s, limit, on_limit
        self.roles: dict[int, str] = {os.getpid(): "driver"}
        self.last: dict[str, int] = {}
        self.peak_total = 0
        self.peak_at: dict[str, int] = {}
        self.stop = threading.Event()
        self.fired = False

    def sample(self) -> dict[str, int]:
        by: dict[str, int] = {}
        for pid in descendants(os.getpid()):
            role = self.roles.get(pid) or role_of(pid)
            by[role] = by.get(role, 0) + rss_of(pid)
        return by

    def run(self) -> None:
        while not self.stop.is_set():
            by = self.sample()
            total = sum(by.values())
            self.last = by
            if total > self.peak_total:
                self.peak_total, self.peak_at = total, by
            if self.limit is not None and total > self.limit and not self.fired:
                self.fired = True
                progress(f"total RSS {total / GIB:.1f} GiB crossed --max-total-rss-gib: stopping the run")
                self.on_limit()
            self.stop.wait(self.interval_s)


def fmt_gib(by: dict[str, int]) -> str:
    return ", ".join(f"{k} {v / GIB:.2f}" for k, v in sorted(by.items())) + f"; total {sum(by.values()) / GIB:.2f} GiB"


# ---------------------------------------------------------------------------- the graph
def stream_events(args) -> int:
    """Events the rate phase needs (edge mutations: R-MAT is directed, one mutation per event)."""
    return int(sum(r * args.seconds for r in args.rates) * 1.05) + 64


def generate(args):
    """The R-MAT graph: the stream is the last edges (plus deletions), sized for the rate phase."""
    from clustergnn.datasets import rmat

    total = args.edge_factor << args.scale
    need = stream_events(args)
    init_frac = 1.0 - need * (1.0 - args.delete_fraction) / total
    if init_frac <= 0.5:
        raise SystemExit(f"the rate phase ({need:,} events) needs more than half of the {total:,} R-MAT edges")
    return rmat(
        args.scale, args.edge_factor, initial_fraction=init_frac, delete_fraction=args.delete_fraction, seed=args.seed
    )


def produce_worker(args) -> int:
    """``--produce-worker DIR``: generate, write the initial graph to the topic, save the stream; JSON on stdout."""
    import torch

    from clustergnn.datasets import hashed_features
    from clustergnn.mutations import MutationBatch
    from clustergnn.partition import HashPartitionMap
    from streams.producer import MutationProducer

    work = Path(args.produce_worker)
    t = time.perf_counter()
    ds = generate(args)
    gen_s = time.perf_counter() - t
    progress(f"produce: generated {ds!r} in {gen_s:.1f}s")
    save_stream(ds, str(work / "stream.npz"), stream_events(args))
    producer = MutationProducer(args.bootstrap, args.topic, HashPartitionMap(args.partitions))
    ends: dict[int, int] = {}
    t0 = t_prog = time.perf_counter()
    nv, ne = len(ds.initial_vertices), len(ds.initial_src)
    chunks = [("v", s, min(s + args.vertex_chunk, nv)) for s in range(0, nv, args.vertex_chunk)]
    chunks += [("e", s, min(s + args.edge_chunk, ne)) for s in range(0, ne, args.edge_chunk)]
    pending = []
    for what, a, b in chunks:
        if what == "v":
            ids = ds.initial_vertices[a:b]
            batch = MutationBatch.add_vertices(ids, torch.from_numpy(hashed_features(ids, args.features, args.seed)))
        else:
            batch = MutationBatch.add_edges(ds.initial_src[a:b], ds.initial_dst[a:b])
        pending.append(producer.send_async(batch))
        if len(pending) > 4:  # bounded in flight: the client's buffer blocks the sends anyway
            for p, o in pending.pop(0).get(timeout_s=300).items():
                ends[p] = max(ends.get(p, -1), o)
        if time.perf_counter() - t_prog > 10:
            done = producer.stats.mutations
            progress(
                f"produce: {done:,}/{nv + ne:,} mutations written ({done / (time.perf_counter() - t0):,.0f}/s), "
                f"{producer.stats.value_bytes / GIB:.2f} GiB"
            )
            t_prog = time.perf_counter()
    for res in pending:
        for p, o in res.get(timeout_s=300).items():
            ends[p] = max(ends.get(p, -1), o)
    producer.close()
    produce_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "ends": {str(p): o for p, o in ends.items()},
                "vertices": nv,
                "edges": ne,
                "mutations": producer.stats.mutations,
                "records": producer.stats.records,
                "value_bytes": producer.stats.value_bytes,
                "generate_s": gen_s,
                "produce_s": produce_s,
                "description": ds.description,
            }
        )
    )
    return 0


def final_edges_worker(args) -> int:
    """``--final-edges-worker DIR``: the graph after the initial graph and the first DIR/streamed.npy events
    (each removal takes one copy of a multi-edge, as the engine's), as DIR/edges.npy ``(2, E)`` int32/64."""
    work = Path(args.final_edges_worker)
    ds = generate(args)
    k = int(np.load(work / "streamed.npy"))
    kind, src, dst = ds.event_kind[:k], ds.event_src[:k], ds.event_dst[:k]
    from clustergnn.mutations import MutationKind

    shift = np.int64(args.scale)
    add = kind == MutationKind.ADD_EDGE
    keys = np.concatenate([(ds.initial_src << shift) | ds.initial_dst, (src[add] << shift) | dst[add]])
    removed = (src[~add] << shift) | dst[~add]
    del ds
    u, cnt = np.unique(keys, return_counts=True)
    del keys
    ru, rc = np.unique(removed, return_counts=True)
    at = np.searchsorted(u, ru)
    if len(ru) and (at.max() >= len(u) or (u[np.minimum(at, len(u) - 1)] != ru).any()):
        raise SystemExit("a removed edge is not in the graph: the stream does not match the initial graph")
    cnt[at] -= rc
    if (cnt < 0).any():
        raise SystemExit("an edge is removed more often than it was added")
    final = np.repeat(u, cnt)
    dtype = np.int32 if args.scale < 31 else np.int64
    edges = np.lib.format.open_memmap(work / "edges.npy", mode="w+", dtype=dtype, shape=(2, len(final)))
    edges[0] = final >> shift
    edges[1] = final & ((np.int64(1) << shift) - 1)
    edges.flush()
    print(json.dumps({"edges": int(len(final))}))
    return 0


def reference_rows(args, sample: np.ndarray, streamed: int) -> tuple[dict, np.ndarray | None]:
    """DGL's forward on the final graph (two subprocesses: the final edges, then ``bench_scale.py``'s DGL
    worker); its numbers and the rows of ``sample``."""
    with tempfile.TemporaryDirectory(prefix="bench_cluster_scale_", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        np.save(work / "streamed.npy", np.int64(streamed))
        np.save(work / "sample.npy", sample)
        np.save(work / "num_nodes.npy", np.int64(1 << args.scale))
        common = ["--scale", str(args.scale), "--edge-factor", str(args.edge_factor), "--seed", str(args.seed)]
        common += ["--features", str(args.features), "--hidden", str(args.hidden), "--out", str(args.out)]
        t = time.perf_counter()
        cmd = [sys.executable, __file__, "--final-edges-worker", str(work), *common]
        cmd += ["--rates", ",".join(str(r) for r in args.rates), "--seconds", str(args.seconds)]
        cmd += ["--delete-fraction", str(args.delete_fraction)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"dgl_error": f"final edges: rc {proc.returncode}: {proc.stderr[-800:]}"}, None
        n_edges = json.loads(proc.stdout.strip().splitlines()[-1])["edges"]
        progress(f"final graph: {n_edges:,} edges in {time.perf_counter() - t:.1f}s; DGL forward in a subprocess")
        cmd = [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--dgl-worker", str(work)]
        cmd += ["--models", "sage-mean", "--dgl-repeats", "1", *common]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            return {"dgl_error": f"DGL worker: rc {proc.returncode}: {proc.stderr[-800:]}"}, None
        res = json.loads(proc.stdout.strip().splitlines()[-1]) | {"final_edges": n_edges}
        return res, np.load(work / "dgl_out.npz")["rows"]


# ---------------------------------------------------------------------------- the run
def wait_loaded(cluster, ends: dict[int, int], sampler: RssSampler, args) -> tuple[float, float]:
    """Block until every partition's watermark has passed ``ends`` and the cluster serves (in eager serving
    the load's deferred last layer is finished and the replica filled then: ``actors.cluster.DEFER_LOAD``);
    the seconds each took from now."""
    t0 = t_prog = time.monotonic()
    total = sum(o + 1 for o in ends.values())
    passed = None
    while True:
        if cluster.error is not None:
            raise RuntimeError(f"the cluster failed while loading: {cluster.error!r}")
        if sampler.fired:
            raise RuntimeError("stopped: total RSS crossed --max-total-rss-gib")
        wm = cluster.watermark
        if passed is None and all(wm.get(p, 0) > o for p, o in ends.items()):
            passed = time.monotonic() - t0
        if passed is not None and cluster.healthy:
            return passed, time.monotonic() - t0
        now = time.monotonic()
        if now - t0 > args.load_timeout_s:
            raise RuntimeError(f"not loaded after {args.load_timeout_s}s: watermark {wm}, ends {ends}")
        if now - t_prog >= args.progress_s:
            seen = sum(min(wm.get(p, 0), o + 1) for p, o in ends.items())
            progress(
                f"load: {seen:,}/{total:,} records visible ({100 * seen / total:.0f}%) after {now - t0:.0f}s, "
                f"{cluster.stats.rounds} rounds; RSS {fmt_gib(sampler.last)}"
            )
            t_prog = now
        time.sleep(0.2)


def owner_memory(cluster) -> list[dict]:
    """Per owner: engine bytes by kind and process RSS (``clustergnn status``'s numbers), its ghosts (slots
    that mirror another partition's vertex), in-edges and every array's bytes (``memory_entries``)."""
    import ray

    st = cluster.status()
    raw = ray.get([o.status.remote() for o in cluster.owners], timeout=120)
    entries = ray.get([o.memory_entries.remote() for o in cluster.owners], timeout=120)
    return [
        {
            "partition": p.partition,
            "vertices": p.num_vertices,
            "ghosts": r["ghosts"],
            "edges": r["edges"],
            "applied_mutations": p.applied_mutations,
            "memory_bytes": dict(p.memory_bytes),
            "rss_bytes": p.rss_bytes,
            "entries": {k: {"kind": kind, "bytes": b} for k, (kind, b) in e.items()},
        }
        for p, r, e in zip(st.partitions, raw, entries, strict=True)
    ] + [{"edges_total": st.extra.get("edges", 0.0)}]


def run(args) -> dict:
    import ray

    from actors.cluster import Cluster
    from clustergnn.config import Config
    from streams.broker import EmbeddedBroker
    from streams.topics import ensure_topics

    out: dict = {"args": {k: v for k, v in vars(args).items()}}
    stop_all = threading.Event()
    sampler = RssSampler(limit=int(args.max_total_rss_gib * GIB), on_limit=stop_all.set)
    cluster = None
    with tempfile.TemporaryDirectory(prefix="bench_cluster_scale_", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        with EmbeddedBroker(port=0) as broker:
            sampler.roles[broker.pid] = "broker"
            cfg = Config.from_dict(
                {
                    "kafka": {
                        "bootstrap": broker.bootstrap,
                        "topic": "bench-scale",
                        "poll_timeout_ms": args.poll_timeout_ms,
                        "max_poll_records": args.max_poll_records,
                    },
                    "model": {
                        "builtin": "sage",
                        "in_dim": args.features,
                        "hidden": args.hidden,
                        "out_dim": args.out,
                        "seed": args.seed,
                    },
                    "cluster": {
                        "partitions": args.partitions,
                        "actor_num_cpus": 0.25,
                        "device": "cpu",
                        "collaborative": args.collaborative,
                        "owner_malloc": "lean" if args.lean_malloc else "default",
                    },
                    "graph": {"dataset": None},
                }
            )
            ensure_topics(broker.bootstrap, cfg.kafka.topic, args.partitions, dead_letter_topic=cfg.kafka.dlq)
            sampler.start()

            def kill_all() -> None:  # the RSS limit: end what this run started, by pid, before the OOM killer
                for pid in reversed(descendants(os.getpid())[1:]):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)

            sampler.on_limit = lambda: (stop_all.set(), kill_all())

            # ---- produce
            cmd = [sys.executable, __file__, "--produce-worker", str(work), "--bootstrap", broker.bootstrap]
            cmd += ["--topic", cfg.kafka.topic, "--partitions", str(args.partitions)]
            for name in ("scale", "edge_factor", "seed", "features", "delete_fraction", "seconds"):
                cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
            cmd += ["--rates", ",".join(str(r) for r in args.rates)]
            cmd += ["--vertex-chunk", str(args.vertex_chunk), "--edge-chunk", str(args.edge_chunk)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            sampler.roles[proc.pid] = "producer"
            stdout, _ = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"the produce worker failed (rc {proc.returncode})")
            prod = json.loads(stdout.strip().splitlines()[-1])
            ends = {int(p): o for p, o in prod["ends"].items()}
            out["produce"] = prod | {"broker_rss_bytes_after": rss_of(broker.pid)}
            progress(
                f"produced {prod['mutations']:,} mutations in {prod['records']:,} records "
                f"({prod['value_bytes'] / GIB:.2f} GiB) in {prod['produce_s']:.1f}s; broker RSS "
                f"{rss_of(broker.pid) / GIB:.2f} GiB"
            )

            # ---- load
            try:
                t = time.monotonic()
                cluster = Cluster(cfg).start()
                up_s = time.monotonic() - t
                raw = ray.get([o.status.remote() for o in cluster.owners], timeout=60)
                for r in raw:
                    sampler.roles[r["pid"]] = f"owner{r['partition']}"
                progress(f"cluster up in {up_s:.1f}s (owner pids {[r['pid'] for r in raw]}); loading")
                passed_s, load_s = (s + up_s for s in wait_loaded(cluster, ends, sampler, args))
                rate = prod["mutations"] / load_s
                out["load"] = {
                    "cluster_up_s": up_s,
                    "load_s": load_s,  # until the cluster serves
                    "watermark_s": passed_s,  # until the watermark passed the last offsets
                    "mutations_per_s": rate,
                    "mutations_per_s_after_start": prod["mutations"] / max(load_s - up_s, 1e-9),
                    "rounds": cluster.stats.rounds,
                    "peak_total_rss_bytes": sampler.peak_total,
                    "peak_rss_by_role": sampler.peak_at,
                }
                progress(
                    f"loaded in {load_s:.1f}s ({rate:,.0f} mutations/s, {cluster.stats.rounds} rounds; the "
                    f"watermark passed the log's end after {passed_s:.1f}s, serving {load_s - passed_s:.1f}s later); "
                    f"peak RSS {fmt_gib(sampler.peak_at)}"
                )
                out["owners"] = owner_memory(cluster)
                out["rss_after_load"] = sampler.sample()
                progress(f"RSS after the load: {fmt_gib(out['rss_after_load'])}")

                # ---- updates
                ds_stream = type("Stream", (), {"name": str(work / "stream.npz")})()
                pos, rows = 0, []
                for r in args.rates:
                    cluster.stats.step_ms.clear()
                    cluster.stats.round_ms.clear()
                    ray.get([o.clear_profile.remote() for o in cluster.owners])
                    r0 = cluster.stats.rounds
                    t_rate = time.perf_counter()
                    res = run_rate(cluster, ds_stream, pos, r, args.seconds, args.batches_per_s)
                    pos += res["events"]
                    round_ms = list(cluster.stats.round_ms)
                    res["rounds_per_s"] = (cluster.stats.rounds - r0) / (time.perf_counter() - t_rate)
                    res["round_ms_p50"] = float(np.percentile(round_ms, 50)) if round_ms else None
                    steps = {k: float(np.percentile(list(v), 50)) for k, v in cluster.stats.step_ms.items() if v}
                    res["profile"] = round_profile(
                        steps, ray.get([o.profile.remote() for o in cluster.owners]), cluster.num_layers
                    )
                    res["sustained"] = bool(
                        res["drained"]
                        and res["latency_ms_p99"] is not None
                        and res["latency_ms_p99"] <= args.sustain_p99_ms
                        and res["drain_s"] <= 1.0
                    )
                    res.pop("series", None)
                    rows.append(res)
                    progress(
                        f"rate {r:,.0f}/s: achieved {res['achieved_mutations_per_s']:,.0f}/s, visible p50 "
                        f"{res['latency_ms_p50']:.0f} ms p99 {res['latency_ms_p99']:.0f} ms, drain "
                        f"{res['drain_s']:.2f}s, sustained={res['sustained']}; {res['rounds_per_s']:.1f} rounds/s, "
                        f"round p50 {res['round_ms_p50'] or 0:.0f} ms\n" + profile_table(res["profile"])
                    )
                    if not res["drained"] or res["drain_s"] > 10:
                        progress(f"backlog does not drain at {r:,.0f}/s; stopping the ramp")
                        break
                out["rates"] = rows
                out["streamed_events"] = pos
                out["owners_after_stream"] = owner_memory(cluster)
                out["peak_total_rss_bytes"] = sampler.peak_total
                out["peak_rss_by_role"] = sampler.peak_at

                # ---- the sample's final rows, then stop everything before DGL's forward
                rng = np.random.default_rng(args.seed + 1)
                sample = np.sort(rng.choice(1 << args.scale, min(args.samples, 1 << args.scale), replace=False))
                wm = cluster.watermark
                ours = cluster.read(sample, min_offsets={p: o - 1 for p, o in wm.items() if o > 0}, timeout_s=120)
                ours_rows = ours.embeddings
            finally:
                if cluster is not None:
                    cluster.stop()
                sampler.stop.set()
    if args.no_dgl:
        return out
    import torch
    from bench_scale import rel_error

    ref, rows = reference_rows(args, sample, out["streamed_events"])
    out["dgl"] = ref
    if rows is not None:
        out["max_rel_error_sampled"] = rel_error(torch.from_numpy(ours_rows), torch.from_numpy(rows))
        progress(
            f"DGL forward {ref['dgl_forward_s']:.1f}s, peak {ref['dgl_peak_rss_gib']:.2f} GiB; the cluster's relative "
            f"error on {len(sample)} vertices {out['max_rel_error_sampled']:.1e}"
        )
    return out


def report(out: dict) -> None:
    a = out["args"]
    print(
        f"\nclustergnn: the same graph through the cluster. R-MAT scale {a['scale']} edge factor {a['edge_factor']}, "
        f"2-layer SAGE-mean {a['features']}->{a['hidden']}->{a['out']}, P = {a['partitions']} owners on local Ray, "
        "embedded broker, this machine"
    )
    p, ld = out["produce"], out["load"]
    print(
        f"initial graph: {p['vertices']:,} vertices, {p['edges']:,} edges = {p['mutations']:,} mutations in "
        f"{p['records']:,} records ({p['value_bytes'] / GIB:.2f} GiB); produced in {p['produce_s']:.1f}s"
    )
    print(
        f"load through Kafka: {ld['load_s']:.1f}s ({ld['mutations_per_s']:,.0f} mutations/s, {ld['rounds']} rounds, "
        f"cluster start {ld['cluster_up_s']:.1f}s included; {ld['mutations_per_s_after_start']:,.0f} mutations/s "
        f"after it; serving {ld['load_s'] - ld.get('watermark_s', ld['load_s']):.1f}s after the watermark passed "
        f"the log's end); peak RSS of every process "
        f"{ld['peak_total_rss_bytes'] / GIB:.2f} GiB"
    )
    hdr = (
        f"{'owner':>5} {'vertices':>10} {'ghosts':>10} {'in-edges':>12} {'cache':>7} {'per_slot':>8} {'struct':>7} "
        f"{'scratch':>7} {'RSS':>7} (GiB) {'cache B/slot':>12} {'struct B/edge':>13}"
    )
    print(hdr)
    print("-" * len(hdr))
    owners = [o for o in out["owners"] if "partition" in o]
    for o in owners:
        m = o["memory_bytes"]
        cells = [m.get(k, 0) for k in ("cache", "per_slot", "structure", "scratch")] + [o["rss_bytes"]]
        slots = max(o["vertices"] + o["ghosts"], 1)
        print(
            f"{o['partition']:>5} {o['vertices']:>10,} {o['ghosts']:>10,} {o['edges']:>12,}"
            + "".join(f" {c / GIB:>7.2f}" for c in cells)
            + f"       {m.get('cache', 0) / slots:>12,.0f} {m.get('structure', 0) / max(o['edges'], 1):>13.1f}"
        )
    if owners:  # the tables of owner 0, bytes per slot (owned and ghost slots alike)
        o = owners[0]
        slots = max(o["vertices"] + o["ghosts"], 1)
        big = sorted(o["entries"].items(), key=lambda kv: -kv[1]["bytes"])[:14]
        print(
            "owner 0's largest arrays, bytes per slot: "
            + ", ".join(f"{k} ({e['kind']}) {e['bytes'] / slots:,.0f}" for k, e in big)
        )
    print("RSS after the load by process: " + fmt_gib(out["rss_after_load"]))
    print("peak RSS by process (at the peak of the total): " + fmt_gib(out["peak_rss_by_role"]))
    if out.get("rates"):
        hdr = (
            f"{'offered mut/s':>13} {'achieved':>9} {'vis p50':>8} {'vis p99':>8} {'drain s':>7} {'rounds/s':>8} "
            f"{'round p50':>9} sustained"
        )
        print(hdr)
        print("-" * len(hdr))
        for r in out["rates"]:
            print(
                f"{r['rate_events_per_s']:>13,.0f} {r['achieved_mutations_per_s']:>9,.0f} "
                f"{r['latency_ms_p50']:>6.0f}ms {r['latency_ms_p99']:>6.0f}ms {r['drain_s']:>7.2f} "
                f"{r['rounds_per_s']:>8.1f} {r['round_ms_p50'] or 0:>7.0f}ms {'yes' if r['sustained'] else 'no'}"
            )
        best = max([r["achieved_mutations_per_s"] for r in out["rates"] if r["sustained"]], default=0.0)
        print(f"highest sustained rate: {best:,.0f} edge mutations/s")
    if "max_rel_error_sampled" in out:
        print(f"relative error vs DGL on {a['samples']} sampled vertices: {out['max_rel_error_sampled']:.1e}")
    elif "dgl" in out:
        print(f"DGL reference failed: {out['dgl'].get('dgl_error')}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=21, help="R-MAT scale: 2^scale vertices")
    p.add_argument("--edge-factor", type=int, default=59, help="edges per vertex (ogbn-products: 59)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--features", type=int, default=100, help="input width (seeded random features)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out", type=int, default=47)
    p.add_argument("--rates", default="2000,5000,10000", help="edge mutations/s of the update stream")
    p.add_argument("--seconds", type=float, default=10.0, help="per rate")
    p.add_argument("--batches-per-s", type=int, default=10)
    p.add_argument("--sustain-p99-ms", type=float, default=1000.0)
    p.add_argument("--delete-fraction", type=float, default=0.2)
    p.add_argument("--samples", type=int, default=2000, help="vertices compared against DGL's forward")
    p.add_argument("--no-dgl", action="store_true", help="skip DGL's forward and the exactness check")
    p.add_argument("--vertex-chunk", type=int, default=1 << 16, help="vertices per produce call")
    p.add_argument("--edge-chunk", type=int, default=1 << 20, help="edges per produce call")
    p.add_argument("--max-poll-records", type=int, default=64, help="Kafka records an owner reads per round")
    p.add_argument("--poll-timeout-ms", type=int, default=5)
    p.add_argument("--load-timeout-s", type=float, default=3600.0)
    p.add_argument("--progress-s", type=float, default=10.0)
    p.add_argument("--max-total-rss-gib", type=float, default=21.0, help="stop the run above this total RSS")
    p.add_argument(
        "--collaborative",
        action="store_true",
        help="collaborative serving: the last layer finished at read time, no replica of the final rows",
    )
    p.add_argument(
        "--lean-malloc",
        action="store_true",
        help="glibc malloc settings that return freed memory (LEAN_MALLOC_ENV) for every process of the run: "
        "cluster.owner_malloc = lean for the owners, the environment for the rest; less RSS, slower rounds "
        "(docs/distributed.md)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmpdir", default=None, help="where the stream and the DGL worker's edge file go")
    p.add_argument("--json", default="results/bench_cluster_scale.json")
    p.add_argument("--produce-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--final-edges-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--bootstrap", default=None, help=argparse.SUPPRESS)
    p.add_argument("--topic", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rates = [float(x) for x in args.rates.split(",") if x]
    if args.produce_worker:
        return produce_worker(args)
    if args.final_edges_worker:
        return final_edges_worker(args)
    if args.lean_malloc:  # the owners get it from cluster.owner_malloc; this is for the run's other processes
        from clustergnn.config import LEAN_MALLOC_ENV

        os.environ.update(LEAN_MALLOC_ENV)
    out = run(args)
    report(out)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
