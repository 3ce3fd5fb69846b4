#!/usr/bin/env python
"""Scale benchmark: build time and memory of one engine on a large R-MAT graph, then exact updates.

Per model, on an R-MAT graph (Graph500 parameters; ``--scale``, ``--edge-factor``; ogbn-products'
shape by default: 2^21 vertices, edge factor 59, SAGE-mean 100 -> 128 -> 47):

* **build**: ``Engine.from_layers`` + ``bulk_load`` of the initial graph (every vertex with seeded random
  features, then every edge), wall time and peak RSS.  The peak is the kernel's high-water mark
  (``VmHWM``) reset (``/proc/self/clear_refs``) right before the build, so it covers the build only; it
  still includes what the process held before (the initial batch, the model): that is ``rss before``,
  reported next to it.  Numba's kernels are warmed up on a small engine first (a start-up cost, not a
  build cost).
* **steady state**: bytes per live vertex of every cache table and per-slot array, bytes per edge of
  the structure, straight from ``Engine.memory_report()`` (the arrays' allocated bytes).
* **updates**: the rest of the R-MAT stream (edge insertions mixed with 20% deletions of initial
  edges) in batches of 1, 100, 1,000 and 10,000 events, back to back; per size p50/p99 latency and
  updates/s (``B / p50`` and events over the whole run's time).
* **DGL**: DGL's own forward (``clustergnn.reference.dgl_forward``) on the final graph (the initial
  graph plus the stream applied), in a **subprocess** so its peak RSS is its own: the graph's edges go
  through a temporary ``.npy`` file, the features are regenerated from the same seed, and the worker
  reports the forward's time (median of ``--dgl-repeats``), its peak RSS (high-water mark reset after
  the graph is built: it includes the graph and the features, as the engine's includes its input) and
  the final rows of ``--samples`` random vertices, against which the engine's are compared (relative
  error ``max|ours - DGL| / max(1, max|DGL|)``; the contract is <= 1e-5).

``--rss-trace`` also samples the build's RSS every 5 ms with its stages marked (structure edits,
per-layer message / aggregate / finish), to show where the build's peak comes from.

    python scripts/bench_scale.py                                # products-shaped: scale 21, ef 59
    python scripts/bench_scale.py --scale 19 --edge-factor 59 --models sage-mean,gcn
    python scripts/bench_scale.py --quick                        # scale 16, ~1 minute

Prints tables, progress on stderr, writes results/bench_scale.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustergnn import Engine, steptimes  # noqa: E402
from clustergnn._dgl import dgl  # noqa: E402
from clustergnn.datasets import hashed_features, rmat  # noqa: E402
from clustergnn.memory import total_bytes  # noqa: E402
from clustergnn.models import builtin_layers  # noqa: E402
from clustergnn.reference import dgl_forward  # noqa: E402

MODELS = ("sage-mean", "gcn", "gin", "gat")
BATCHES = {1: 200, 100: 50, 1000: 15, 10000: 4}  # batches timed per size
READS = {1: 200, 100: 50, 1000: 20}  # reads of the final layer timed per number of ids
GIB = 1 << 30


# ---------------------------------------------------------------------------- measuring
def rss_bytes(field: str = "VmRSS") -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_since_reset(reset_ok: bool) -> int:
    return rss_bytes("VmHWM") if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class RssTrace:
    """RSS sampled every ``interval_s`` in a thread, with stage markers (for ``--rss-trace``)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.samples: list[tuple[float, int]] = []
        self.marks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), rss_bytes()))
            time.sleep(self._interval_s)

    def __enter__(self) -> RssTrace:
        self.mark("start")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.mark("end")
        self._stop.set()
        self._thread.join()

    def mark(self, label: str) -> None:
        self.marks.append((time.perf_counter(), label))
        self.samples.append((time.perf_counter(), rss_bytes()))

    def wrap(self, obj: object, name: str, label: str) -> None:
        """Mark the start and the end of every call of ``obj.name`` (an instance attribute shadows it)."""
        fn = getattr(obj, name)

        def traced(*a, **kw):
            self.mark(f"{label} >")
            try:
                return fn(*a, **kw)
            finally:
                self.mark(f"{label} <")

        setattr(obj, name, traced)

    def stages(self) -> list[dict]:
        """Per interval between consecutive marks: its label, duration, RSS at its start and its peak."""
        ts = np.array([t for t, _ in self.samples])
        rs = np.array([r for _, r in self.samples])
        out = []
        for (t0, l0), (t1, _) in zip(self.marks, self.marks[1:]):
            sel = (ts >= t0) & (ts <= t1)
            peak = int(rs[sel].max()) if sel.any() else 0
            start = int(rs[np.searchsorted(ts, t0)]) if len(ts) else 0
            stage = f"in {l0[:-2]}" if l0.endswith(" >") else f"after {l0[:-2]}" if l0.endswith(" <") else l0
            out.append({"stage": stage, "seconds": t1 - t0, "rss_start_gib": start / GIB, "rss_peak_gib": peak / GIB})
        return out


# ---------------------------------------------------------------------------- models and data
def model(name: str, f_in: int, hidden: int, f_out: int, seed: int = 0) -> list[torch.nn.Module]:
    """Two layers ``f_in -> hidden -> f_out``, deterministic from ``seed`` (the DGL worker rebuilds them):
    the cluster's seeded builtin models (``clustergnn.models.builtin_layers``; GAT with 4 heads inside)."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return builtin_layers("sage" if name == "sage-mean" else name, [f_in, hidden, f_out], seed)


def stream_needed(batch_counts: dict[int, int]) -> int:
    return sum(b * n for b, n in batch_counts.items())


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


# ---------------------------------------------------------------------------- DGL in a subprocess
def export_edges(eng: Engine, path: Path) -> int:
    """The engine's current edges as external ids, ``(2, E)`` int32/int64 ``.npy``, written in chunks."""
    g = eng.graph
    slots = g.alive_slots()
    ids = g.ext_of
    dtype = np.int32 if len(ids) == 0 or int(ids.max()) < 2**31 else np.int64
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(2, eng.num_edges))
    pos = 0
    for start in range(0, len(slots), 1 << 16):
        owners = slots[start : start + (1 << 16)]
        indptr, src = g.inn.gather_csr(owners)
        n = len(src)
        out[0, pos : pos + n] = ids[src]
        out[1, pos : pos + n] = np.repeat(ids[owners], np.diff(indptr))
        pos += n
    out.flush()
    del out
    return pos


def dgl_worker(args) -> int:
    """``--dgl-worker DIR``: DGL's forward on the graph in DIR; writes DIR/dgl_out.npz and prints JSON."""
    work = Path(args.dgl_worker)
    torch.set_grad_enabled(False)
    layers = model(args.models, args.features, args.hidden, args.out, args.seed)
    edges = np.load(work / "edges.npy", mmap_mode="r")
    sample = np.load(work / "sample.npy")
    n = int(np.load(work / "num_nodes.npy"))
    g = dgl.graph(
        (
            torch.from_numpy(np.asarray(edges[0], dtype=np.int64)),
            torch.from_numpy(np.asarray(edges[1], dtype=np.int64)),
        ),
        num_nodes=n,
    )
    del edges
    x = torch.from_numpy(hashed_features(np.arange(n), args.features, args.seed))
    g.in_degrees()
    g.create_formats_()
    gc.collect()
    rss_before = rss_bytes()
    reset_ok = reset_peak_rss()
    times = []
    out = None
    for _ in range(args.dgl_repeats):
        out = None
        gc.collect()
        t = time.perf_counter()
        out = dgl_forward(layers, g, x)[-1]
        times.append(time.perf_counter() - t)
    peak = peak_since_reset(reset_ok)
    np.savez(work / "dgl_out.npz", rows=out[torch.from_numpy(sample)].numpy())
    print(
        json.dumps(
            {
                "dgl_forward_s": float(np.median(times)),
                "dgl_forward_times_s": times,
                "dgl_rss_before_forward_gib": rss_before / GIB,
                "dgl_peak_rss_gib": peak / GIB,
                "dgl_peak_exact": reset_ok,
            }
        )
    )
    return 0


def run_dgl(eng: Engine, name: str, args, rng: np.random.Generator) -> tuple[dict, float]:
    """DGL's forward on ``eng``'s graph in a subprocess; its numbers and the engine's error on samples."""
    with tempfile.TemporaryDirectory(prefix="bench_scale_", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        ne = export_edges(eng, work / "edges.npy")
        ids = eng.vertex_ids()
        sample = np.sort(rng.choice(ids, min(args.samples, len(ids)), replace=False))
        np.save(work / "sample.npy", sample)
        np.save(work / "num_nodes.npy", np.int64(int(ids.max()) + 1))
        progress(
            f"{name}: exported {ne:,} edges for DGL in {time.perf_counter() - t:.1f}s; DGL forward in a subprocess"
        )
        cmd = [sys.executable, __file__, "--dgl-worker", str(work), "--models", name]
        cmd += ["--features", str(args.features), "--hidden", str(args.hidden), "--out", str(args.out)]
        cmd += ["--seed", str(args.seed), "--dgl-repeats", str(args.dgl_repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            progress(f"{name}: DGL worker failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
            return {"dgl_error": f"rc {proc.returncode}: {proc.stderr[-500:]}"}, float("nan")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        ref = torch.from_numpy(np.load(work / "dgl_out.npz")["rows"])
        err = rel_error(eng.embeddings(sample).cpu(), ref)
    return res, err


# ---------------------------------------------------------------------------- one model
def warm_up(name: str, args) -> None:
    """Numba's kernels compile (or load from their disk cache) once per process: not a build cost."""
    layers = model(name, args.features, args.hidden, args.out, args.seed)
    ds = rmat(scale=8, edge_factor=8, seed=1)
    eng = Engine.from_layers(layers, args.features, capacity=512)
    eng.bulk_load(ds.initial_batch(dim=args.features))
    for b in ds.stream_batches(64, dim=args.features):
        eng.apply(b)


def traced_stages(eng: Engine) -> list[tuple[object, str, str]]:
    """The build's stages ``--rss-trace`` marks: (object, method, label)."""
    g = eng.graph
    out = [
        (eng, "apply_structure", "structure edits"),
        (g, "lookup", "id lookup"),
        (g, "lookup32", "id lookup (int32)"),
        (g, "lookup_counted32", "id lookup + count (int32)"),
        (g, "add_edges_in_range", "count + appends (ids in range)"),
        (g, "add_vertices", "vertex adds"),
        (g, "add_edges_slots", "adjacency appends"),
        (eng, "_in_edge_index", "in-edge CSR"),
    ]
    for li, rule in enumerate(eng.rules):
        out += [(rule, fn, f"L{li} {fn}") for fn in ("message_and_self", "aggregate", "finish")]
    return out


def bench_model(name: str, args) -> dict:
    warm_up(name, args)
    counts = {b: max(1, int(BATCHES.get(b, 5) * args.scale_batches)) for b in args.batch_sizes}
    total = args.edge_factor << args.scale
    need = stream_needed(counts)
    # stream events = insertions + deletions; deletions are delete_fraction of them
    init_frac = 1.0 - need * (1.0 - args.delete_fraction) / total
    if init_frac <= 0.5:
        raise SystemExit(f"the stream ({need:,} events) needs more than half of the {total:,} R-MAT edges")
    t = time.perf_counter()
    ds = rmat(
        args.scale, args.edge_factor, initial_fraction=init_frac, delete_fraction=args.delete_fraction, seed=args.seed
    )
    progress(f"{name}: generated {ds!r} in {time.perf_counter() - t:.1f}s")
    init = ds.initial_batch(dim=args.features, seed=args.seed)
    batches: dict[int, list] = {}
    pos = 0
    for b, n in counts.items():
        batches[b] = list(ds.stream_batches(b, dim=args.features, seed=args.seed, start=pos, limit=pos + b * n))
        pos += b * n
    n_vertices = len(ds.initial_vertices)
    del ds
    gc.collect()
    layers = model(name, args.features, args.hidden, args.out, args.seed)

    # ---- build
    rss_before = rss_bytes()
    reset_ok = reset_peak_rss()
    trace = RssTrace() if args.rss_trace else None
    t = time.perf_counter()
    if trace is not None:
        trace.__enter__()
    eng = Engine.from_layers(layers, args.features, capacity=n_vertices + 16, collaborative=args.collaborative)
    if trace is not None:
        trace.mark("engine constructed (empty tables)")
        for obj, fn, label in traced_stages(eng):
            trace.wrap(obj, fn, label)
    eng.bulk_load(init)
    build_s = time.perf_counter() - t
    if trace is not None:
        trace.__exit__(None, None, None)
        for obj, fn, _ in traced_stages(eng):  # unwrap: the traced methods were instance attributes
            vars(obj).pop(fn, None)
    build_peak = peak_since_reset(reset_ok)
    del init
    gc.collect()
    rss_after = rss_bytes()
    progress(
        f"{name}: built {eng.num_vertices:,} vertices / {eng.num_edges:,} edges in {build_s:.1f}s, "
        f"peak RSS {build_peak / GIB:.2f} GiB (before {rss_before / GIB:.2f})"
    )
    report = eng.memory_report()
    nv, ne = eng.num_vertices, eng.num_edges
    mem = {
        "entries": {
            k: {
                "kind": e.kind,
                "dtype": e.dtype,
                "shape": list(e.shape),
                "bytes": e.nbytes,
                "per_vertex": e.nbytes / nv,
            }
            for k, e in report.items()
        },
        "cache_bytes_per_vertex": total_bytes(report, "cache") / nv,
        "per_slot_bytes_per_vertex": total_bytes(report, "per_slot") / nv,
        "structure_bytes_per_edge": total_bytes(report, "structure") / ne,
        "scratch_bytes": total_bytes(report, "scratch"),
        "cache_gib": total_bytes(report, "cache") / GIB,
        "structure_gib": total_bytes(report, "structure") / GIB,
        "total_gib": total_bytes(report) / GIB,
    }

    # ---- updates
    updates = []
    for b, bl in batches.items():
        times = []
        steptimes.reset()
        t_run = time.perf_counter()
        t_prog = t_run
        for i, batch in enumerate(bl):
            t = time.perf_counter()
            eng.apply(batch)
            times.append(time.perf_counter() - t)
            if time.perf_counter() - t_prog > 5:
                progress(f"{name} B={b}: {i + 1}/{len(bl)} batches")
                t_prog = time.perf_counter()
        run_s = time.perf_counter() - t_run
        events = sum(len(x) for x in bl)
        p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
        row = {
            "batch_events": b,
            "batches": len(bl),
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "updates_per_s_p50": b / p50,
            "updates_per_s_run": events / run_s,
        }
        if steptimes.ON:  # --step-times: milliseconds per batch in each step of the update path
            row["step_ms"] = {k: v * 1e3 / len(bl) for k, v in steptimes.totals().items()}
            row["step_counts"] = {k: v / len(bl) for k, v in steptimes.counts().items()}
        updates.append(row)
        progress(
            f"{name} B={b}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
            f"{row['updates_per_s_run']:,.0f} updates/s"
        )

    # ---- reads of the final layer (a gather; collaborative: the last layer finished for the asked rows)
    reads = []
    rng = np.random.default_rng(args.seed + 1)
    live = eng.vertex_ids()
    for k, n in READS.items():
        times = []
        for _ in range(n):
            ids = rng.choice(live, k, replace=False)
            t = time.perf_counter()
            eng.embeddings(ids)
            times.append(time.perf_counter() - t)
        reads.append(
            {"ids": k, "reads": n, "p50_ms": np.percentile(times, 50) * 1e3, "p99_ms": np.percentile(times, 99) * 1e3}
        )
    del live
    progress(f"{name}: reads " + ", ".join(f"{r['ids']} ids p50 {r['p50_ms']:.2f} ms" for r in reads))

    # ---- DGL and exactness
    dgl_res, err = ({}, float("nan"))
    if not args.no_dgl:
        dgl_res, err = run_dgl(eng, name, args, np.random.default_rng(args.seed))
        if "dgl_forward_s" in dgl_res:
            progress(
                f"{name}: DGL forward {dgl_res['dgl_forward_s']:.2f}s, peak {dgl_res['dgl_peak_rss_gib']:.2f} GiB; "
                f"engine's relative error on {args.samples} vertices {err:.1e}"
            )
    result = {
        "model": name,
        "vertices": nv,
        "edges": ne,
        "build_s": build_s,
        "build_peak_rss_gib": build_peak / GIB,
        "build_peak_exact": reset_ok,
        "rss_before_build_gib": rss_before / GIB,
        "rss_after_build_gib": rss_after / GIB,
        "memory": mem,
        "updates": updates,
        "serving": "collaborative" if args.collaborative else "eager",
        "reads": reads,
        **dgl_res,
        "build_vs_dgl_forward": build_s / dgl_res["dgl_forward_s"] if "dgl_forward_s" in dgl_res else None,
        "max_rel_error_sampled": err,
        "samples": args.samples,
        "final_vertices": eng.num_vertices,
        "final_edges": eng.num_edges,
    }
    if trace is not None:
        result["build_rss_trace"] = trace.stages()
    del eng
    gc.collect()
    return result


# ---------------------------------------------------------------------------- output
def print_tables(results: list[dict], meta: dict) -> None:
    print(
        f"\nclustergnn scale benchmark: R-MAT scale {meta['scale']} (2^{meta['scale']} vertices), edge factor "
        f"{meta['edge_factor']}, {meta['delete_fraction']:.0%} of stream events deletions; layers "
        f"{meta['features']}->{meta['hidden']}->{meta['out']}, seeded random features; {meta['cpu']}"
    )
    hdr = (
        f"{'model':9} {'vertices':>10} {'edges':>12} {'build':>8} {'build peak':>10} {'rss before':>10} "
        f"{'caches':>9} {'B/vertex':>8} {'struct':>8} {'B/edge':>6} {'DGL fwd':>8} {'DGL peak':>8} "
        f"{'build/DGL':>9} {'rel err':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        m = r["memory"]
        dgl_s = r.get("dgl_forward_s")
        print(
            f"{r['model']:9} {r['vertices']:>10,} {r['edges']:>12,} {r['build_s']:>7.1f}s "
            f"{r['build_peak_rss_gib']:>7.2f}GiB {r['rss_before_build_gib']:>7.2f}GiB "
            f"{m['cache_gib']:>6.2f}GiB {m['cache_bytes_per_vertex']:>8.0f} {m['structure_gib']:>5.2f}GiB "
            f"{m['structure_bytes_per_edge']:>6.1f} "
            + (
                f"{dgl_s:>7.2f}s {r['dgl_peak_rss_gib']:>5.2f}GiB {r['build_vs_dgl_forward']:>9.1f} "
                if dgl_s is not None
                else f"{'-':>8} {'-':>8} {'-':>9} "
            )
            + f"{r['max_rel_error_sampled']:>8.1e}"
        )
    print("\nupdates (R-MAT stream: insertions and deletions, batches back to back):")
    hdr = f"{'model':9} {'B':>6} {'batches':>7} {'p50':>10} {'p99':>10} {'upd/s (B/p50)':>14} {'upd/s (run)':>12}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for u in r["updates"]:
            print(
                f"{r['model']:9} {u['batch_events']:>6} {u['batches']:>7} {u['p50_ms']:>8.2f}ms {u['p99_ms']:>8.2f}ms "
                f"{u['updates_per_s_p50']:>14,.0f} {u['updates_per_s_run']:>12,.0f}"
            )
    print(
        "\nreads of the final layer (random live ids; collaborative: the last layer finished on read from the"
        " in-edges):"
    )
    hdr = f"{'model':9} {'serving':>13} {'ids':>6} {'reads':>6} {'p50':>10} {'p99':>10}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for x in r.get("reads", []):
            print(
                f"{r['model']:9} {r['serving']:>13} {x['ids']:>6} {x['reads']:>6} {x['p50_ms']:>8.3f}ms "
                f"{x['p99_ms']:>8.3f}ms"
            )
    print_step_times(results)
    for r in results:
        print(f"\n{r['model']}: bytes per live vertex ({r['vertices']:,}) by array, and structure per edge:")
        print(f"{'array':24} {'kind':9} {'dtype':8} {'shape':>18} {'MiB':>9} {'B/vertex':>9} {'B/edge':>7}")
        for k, e in sorted(r["memory"]["entries"].items(), key=lambda kv: -kv[1]["bytes"]):
            if e["bytes"] < 1 << 16:
                continue
            print(
                f"{k:24} {e['kind']:9} {e['dtype']:8} {str(tuple(e['shape'])):>18} {e['bytes'] / 2**20:>9.1f} "
                f"{e['per_vertex']:>9.1f} {e['bytes'] / r['edges']:>7.2f}"
            )
        if "build_rss_trace" in r:
            print(f"\n{r['model']}: the build's RSS by stage (sampled every 5 ms):")
            print(f"{'stage':34} {'seconds':>8} {'RSS start':>10} {'RSS peak':>9}")
            for s in r["build_rss_trace"]:
                if s["seconds"] < 0.05 and s["rss_peak_gib"] - s["rss_start_gib"] < 0.05:
                    continue
                print(
                    f"{s['stage']:34} {s['seconds']:>8.2f} {s['rss_start_gib']:>7.2f}GiB {s['rss_peak_gib']:>6.2f}GiB"
                )


def print_step_times(results: list[dict]) -> None:
    """With ``--step-times``: ms per batch in each step (rows) for each batch size (columns)."""
    for r in results:
        ups = [u for u in r["updates"] if "step_ms" in u]
        if not ups:
            continue
        steps = list(dict.fromkeys(k for u in ups for k in u["step_ms"]))
        print(f"\n{r['model']}: ms per batch by step of the update path (--step-times; l<i> = layer i):")
        print(f"{'step':24}" + "".join(f"{'B=' + str(u['batch_events']):>11}" for u in ups))
        for k in steps:
            print(f"{k:24}" + "".join(f"{u['step_ms'].get(k, 0.0):>11.3f}" for u in ups))
        print(f"{'total':24}" + "".join(f"{sum(u['step_ms'].values()):>11.3f}" for u in ups))
        print("per batch, mean:")
        for k in dict.fromkeys(k for u in ups for k in u.get("step_counts", {})):
            print(f"{k:24}" + "".join(f"{u['step_counts'].get(k, 0):>11,.0f}" for u in ups))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, default=21, help="R-MAT scale: 2^scale vertices")
    p.add_argument("--edge-factor", type=int, default=59, help="edges per vertex (ogbn-products: 59)")
    p.add_argument("--models", default="sage-mean", help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--features", type=int, default=100, help="input width (seeded random features)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out", type=int, default=47)
    p.add_argument("--batch-sizes", default="1,100,1000,10000")
    p.add_argument("--scale-batches", type=float, default=1.0, help="multiply the number of batches per size")
    p.add_argument("--delete-fraction", type=float, default=0.2, help="fraction of stream events that are deletions")
    p.add_argument("--samples", type=int, default=2000, help="vertices compared against DGL's forward")
    p.add_argument("--dgl-repeats", type=int, default=2, help="DGL forwards timed (median)")
    p.add_argument("--no-dgl", action="store_true", help="skip DGL's forward and the exactness check")
    p.add_argument("--rss-trace", action="store_true", help="sample the build's RSS by stage")
    p.add_argument("--quick", action="store_true", help="scale 16, sage-mean, fewer batches (about a minute)")
    p.add_argument("--step-times", action="store_true", help="time each step of the update path, per layer")
    p.add_argument(
        "--collaborative",
        action="store_true",
        help="STAG collaborative serving: updates stop below the last layer, reads finish it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmpdir", default=None, help="where the DGL worker's edge file goes (default: $TMPDIR)")
    p.add_argument("--json", default="results/bench_scale.json")
    p.add_argument("--dgl-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.step_times:
        steptimes.enable()
    if args.dgl_worker:
        return dgl_worker(args)
    if args.quick:
        args.scale, args.scale_batches = 16, 0.3
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    models = [m.strip() for m in args.models.split(",")]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    meta = {
        "scale": args.scale,
        "edge_factor": args.edge_factor,
        "delete_fraction": args.delete_fraction,
        "features": args.features,
        "hidden": args.hidden,
        "out": args.out,
        "cpu": f"{platform.machine()} x{torch.get_num_threads()} threads, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "peak_rss_method": "VmHWM after writing 5 to /proc/self/clear_refs (DGL: in a subprocess)",
        "serving": "collaborative" if args.collaborative else "eager",
    }
    results = []
    for name in models:
        progress(f"{name}: R-MAT scale {args.scale}, edge factor {args.edge_factor}")
        results.append(bench_model(name, args))
    print_tables(results, meta)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
