#!/usr/bin/env python
"""Engine benchmark: incremental vs khop (naive incremental) vs full recompute vs DGL's own forward.

For each model and batch size, the next batches of the dataset's stream are applied by one engine per
mode, all started from the same initial graph; every mode applies every batch, so the graphs stay
identical (the full-mode engine times only its first few batches and applies the rest in one untimed
call: its cost does not depend on the batch).  Each engine runs its batches back to back, as a
deployed engine would.  DGL's full forward is timed on the same graph next to the engines' runs:
three times right before and three right after the incremental engine's batches, and once after
each timed full-mode batch; its median is the "DGL fwd" column.  (Interleaving DGL's forward between
incremental batches would evict the engine's caches and time DGL's memory traffic, not the engine.)
Exactness: the incremental engine is compared against DGL's forward after each batch size and at the
end of the stream.

    python scripts/bench_engine.py --dataset facebook-wosn-links            # the issue's table
    python scripts/bench_engine.py --dataset rmat --rmat-scale 20 --models sage
    python scripts/bench_engine.py --quick                                   # a 1-2 minute look

Prints a table and writes results/bench_engine.json.  Features are deterministic seeded random
(the datasets have none), which every table says.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustergnn import Engine, MutationBatch, steptimes  # noqa: E402
from clustergnn._dgl import dglnn  # noqa: E402
from clustergnn.datasets import load  # noqa: E402
from clustergnn.reference import dgl_forward  # noqa: E402

BATCHES = {1: 200, 16: 150, 256: 60, 4096: 12, 65536: 3}
FULL_TIMED = 5  # full-mode batches timed per size
DGL_AROUND = 3  # DGL forwards timed right before and right after the incremental engine's run


def model(name: str, f_in: int, hidden: int, f_out: int, seed: int = 0) -> list[torch.nn.Module]:
    torch.manual_seed(seed)
    if name == "sage":
        layers = [dglnn.SAGEConv(f_in, hidden, "mean"), dglnn.SAGEConv(hidden, f_out, "mean")]
    elif name == "gcn":
        layers = [
            dglnn.GraphConv(f_in, hidden, allow_zero_in_degree=True),
            dglnn.GraphConv(hidden, f_out, allow_zero_in_degree=True),
        ]
    elif name == "gat":
        heads = 4
        layers = [
            dglnn.GATConv(f_in, hidden // heads, heads, allow_zero_in_degree=True),
            dglnn.GATConv(hidden, f_out, 1, allow_zero_in_degree=True),
        ]
    else:
        raise SystemExit(f"unknown model {name!r}; choose from sage, gcn, gat")
    for layer in layers:
        layer.eval()
    return layers


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def check_exact(eng: Engine, layers) -> float:
    g, x, ids = eng.to_dgl()
    ref = dgl_forward(layers, g, x)[-1]
    return rel_error(eng.embeddings(ids).cpu(), ref)


def time_dgl(eng: Engine, layers, repeats: int = 1) -> list[float]:
    """DGL's own full forward on the engine's current graph, formats prebuilt (outside the timed region)."""
    g, x, _ = eng.to_dgl()
    g.in_degrees()
    g.create_formats_()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dgl_forward(layers, g, x)
        times.append(time.perf_counter() - t)
    return times


def time_reads(eng: Engine, rng, repeats: int = 30) -> dict[str, float]:
    """p50 of reading 1 and 64 random vertices' final embeddings (collaborative: finished on read)."""
    ids = eng.vertex_ids()
    out = {}
    for n in (1, 64):
        ts = []
        for _ in range(repeats):
            q = rng.choice(ids, n)
            t = time.perf_counter()
            eng.embeddings(q)
            ts.append(time.perf_counter() - t)
        out[f"read{n}_p50_ms"] = float(np.median(ts) * 1e3)
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_model(ds, name: str, args) -> list[dict]:
    layers = model(name, args.features, args.hidden, args.out)
    init = ds.initial_batch(dim=args.features, seed=args.seed)
    engines = {}
    for mode in args.modes:
        t = time.perf_counter()
        eng = Engine.from_layers(
            layers,
            args.features,
            device=args.device,
            mode=mode.split("+")[0],
            capacity=len(ds.all_vertex_ids()) + 16,
            collaborative=mode.endswith("collab"),
        )
        eng.bulk_load(init)
        engines[mode] = eng
        progress(
            f"{name}: {mode} engine loaded {eng.num_vertices:,} vertices / {eng.num_edges:,} edges "
            f"in {time.perf_counter() - t:.1f}s"
        )
    inc = engines["incremental"]
    stream_pos = 0
    rows = []
    for bsz in args.batch_sizes:
        n_batches = max(1, int(BATCHES.get(bsz, 5) * args.scale_batches))
        batches = list(
            ds.stream_batches(
                bsz, dim=args.features, seed=args.seed, start=stream_pos, limit=stream_pos + bsz * n_batches
            )
        )
        if not batches:
            progress(f"{name}: stream exhausted before batch size {bsz}")
            break
        stream_pos += bsz * len(batches)
        times: dict[str, list[float]] = {m: [] for m in engines}
        affected = []
        dgl_times: list[float] = []
        t_budget = time.perf_counter()
        # Each engine takes the whole run of batches back to back, as a deployed engine takes its own
        # stream (interleaving five engines batch by batch would evict each one's working set from the
        # CPU caches between its batches).  Every engine sees the same batches on the same graph.
        for mode, eng in engines.items():
            if mode == "incremental":  # DGL's forward right before the incremental run (and after it)
                dgl_times += time_dgl(eng, layers, DGL_AROUND)
            steptimes.enable(args.step_times and mode == "incremental")
            steptimes.reset()
            for i, b in enumerate(batches):
                if mode == "full" and i >= FULL_TIMED:
                    break
                t = time.perf_counter()
                res = eng.apply(b)
                times[mode].append(time.perf_counter() - t)
                if mode == "full":  # and after each timed full-mode batch, on the same graph
                    dgl_times += time_dgl(eng, layers)
                if mode == "incremental":
                    affected.append(res.affected_per_layer)
                if time.perf_counter() - t_budget > 2:
                    progress(f"{name} B={bsz} {mode}: {i + 1}/{len(batches)} batches")
                    t_budget = time.perf_counter()
            if mode == "incremental":
                step_ms = {k: v * 1e3 / len(batches) for k, v in steptimes.totals().items()}
                dgl_times += time_dgl(eng, layers, DGL_AROUND)
            steptimes.enable(False)
        if len(batches) > FULL_TIMED:
            engines["full"].apply(MutationBatch.concat(batches[FULL_TIMED:]))
        err = check_exact(inc, layers)
        collab = "incremental+collab" in engines and "khop+collab" in engines
        err_collab = check_exact(engines["incremental+collab"], layers) if collab else None
        read_ms = time_reads(engines["incremental+collab"], np.random.default_rng(0)) if collab else None
        dgl_s = float(np.median(dgl_times))
        n_mut = float(np.mean([len(b) for b in batches]))
        p50 = {m: float(np.percentile(v, 50)) for m, v in times.items()}
        p99 = {m: float(np.percentile(v, 99)) for m, v in times.items()}
        mem = inc.memory_bytes()
        row = {
            "model": name,
            "batch_events": bsz,
            "mutations_per_batch": n_mut,
            "batches": len(batches),
            "vertices": inc.num_vertices,
            "edges": inc.num_edges,
            "inc_p50_ms": p50["incremental"] * 1e3,
            "inc_p99_ms": p99["incremental"] * 1e3,
            "khop_p50_ms": p50["khop"] * 1e3,
            "full_p50_ms": p50["full"] * 1e3,
            "dgl_full_ms": dgl_s * 1e3,
            "inc_mutations_per_s": n_mut / p50["incremental"],
            "speedup_vs_dgl": dgl_s / p50["incremental"],
            **({"inc_step_ms": step_ms} if args.step_times else {}),
            "speedup_vs_full": p50["full"] / p50["incremental"],
            "speedup_vs_khop": p50["khop"] / p50["incremental"],
            "full_vs_dgl": dgl_s / p50["full"],
            "affected_per_layer": [float(x) for x in np.mean(affected, axis=0)],
            **(
                {
                    "collab_p50_ms": p50["incremental+collab"] * 1e3,
                    "collab_p99_ms": p99["incremental+collab"] * 1e3,
                    "khop_collab_p50_ms": p50["khop+collab"] * 1e3,
                    "collab_speedup_vs_dgl": dgl_s / p50["incremental+collab"],
                    "collab_speedup_vs_khop": p50["khop+collab"] / p50["incremental+collab"],
                    "collab_read_ms": read_ms,
                    "max_rel_error_collab": err_collab,
                }
                if collab
                else {}
            ),
            "max_rel_error": err,
            "structure_bytes_per_edge": mem["structure"] / max(inc.num_edges, 1),
            "peak_rss_mib": peak_rss_mib(),
        }
        rows.append(row)
        progress(
            f"{name} B={bsz}: inc p50 {row['inc_p50_ms']:.2f} ms, x{row['speedup_vs_dgl']:.0f} vs DGL, "
            f"x{row['speedup_vs_khop']:.1f} vs khop, err {err:.1e}"
        )
    if args.to_end:
        t = time.perf_counter()
        n = 0
        for b in ds.stream_batches(65536, dim=args.features, seed=args.seed, start=stream_pos):
            inc.apply(b)
            n += len(b)
            progress(f"{name}: rest of stream, {n:,} mutations applied")
        err = check_exact(inc, layers)
        rows.append(
            {
                "model": name,
                "batch_events": "end-of-stream",
                "mutations": n,
                "seconds": time.perf_counter() - t,
                "vertices": inc.num_vertices,
                "edges": inc.num_edges,
                "max_rel_error": err,
                "structure_bytes_per_edge": inc.memory_bytes()["structure"] / max(inc.num_edges, 1),
            }
        )
        progress(f"{name}: end of stream: {inc.num_edges:,} edges, relative error vs DGL {err:.2e}")
    for eng in engines.values():
        del eng
    return rows


def print_table(rows: list[dict], meta: dict) -> None:
    print(
        f"\nclustergnn engine benchmark: {meta['dataset']} ({meta['features']}), device {meta['device']}, "
        f"{meta['cpu']}; layers {meta['features_in']}->{meta['hidden']}->{meta['out']}"
    )
    hdr = (
        f"{'model':6} {'B(events)':>9} {'mut/b':>7} {'inc p50':>9} {'inc p99':>9} {'khop p50':>9} {'full p50':>9} "
        f"{'DGL fwd':>9} {'mut/s':>10} {'xDGL':>7} {'xfull':>7} {'xkhop':>6} {'full/DGL':>8} {'affected L1/L2':>15} "
        f"{'rel err':>8} {'B/edge':>6}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r["batch_events"] == "end-of-stream":
            print(
                f"{r['model']:6} {'end':>9} {r['mutations']:>7} applied in {r['seconds']:.1f}s; "
                f"{r['vertices']:,} vertices, {r['edges']:,} edges; rel err vs DGL {r['max_rel_error']:.1e}; "
                f"{r['structure_bytes_per_edge']:.1f} B/edge"
            )
            continue
        aff = "/".join(f"{a:.0f}" for a in r["affected_per_layer"])
        print(
            f"{r['model']:6} {r['batch_events']:>9} {r['mutations_per_batch']:>7.0f} {r['inc_p50_ms']:>8.2f}ms "
            f"{r['inc_p99_ms']:>8.2f}ms {r['khop_p50_ms']:>8.2f}ms {r['full_p50_ms']:>8.1f}ms "
            f"{r['dgl_full_ms']:>8.1f}ms "
            f"{r['inc_mutations_per_s']:>10.0f} {r['speedup_vs_dgl']:>7.1f} {r['speedup_vs_full']:>7.1f} "
            f"{r['speedup_vs_khop']:>6.1f} {r['full_vs_dgl']:>8.2f} {aff:>15} {r['max_rel_error']:>8.1e} "
            f"{r['structure_bytes_per_edge']:>6.1f}"
        )


def print_step_times(rows: list[dict]) -> None:
    """With ``--step-times``: the incremental engine's ms per batch by step (l<i> = layer i)."""
    rows = [r for r in rows if "inc_step_ms" in r]
    if not rows:
        return
    print("\nincremental engine, ms per batch by step of the update path (--step-times; l<i> = layer i):")
    for r in rows:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["inc_step_ms"].items())
        print(f"{r['model']:6} B={r['batch_events']}: total {sum(r['inc_step_ms'].values()):.3f}: {parts}")


def print_collab_table(rows: list[dict]) -> None:
    print("\nSTAG collaborative mode (last layer finished at read time; same batches, same graph):")
    hdr = (
        f"{'model':6} {'B(events)':>9} {'collab p50':>10} {'collab p99':>10} {'khop+c p50':>10} "
        f"{'xDGL':>7} {'xkhop':>6} "
        f"{'read 1 id':>9} {'read 64':>8} {'rel err':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        if r["batch_events"] == "end-of-stream" or "collab_p50_ms" not in r:
            continue
        print(
            f"{r['model']:6} {r['batch_events']:>9} {r['collab_p50_ms']:>8.2f}ms {r['collab_p99_ms']:>8.2f}ms "
            f"{r['khop_collab_p50_ms']:>8.2f}ms {r['collab_speedup_vs_dgl']:>7.1f} {r['collab_speedup_vs_khop']:>6.1f} "
            f"{r['collab_read_ms']['read1_p50_ms']:>7.2f}ms {r['collab_read_ms']['read64_p50_ms']:>6.2f}ms "
            f"{r['max_rel_error_collab']:>8.1e}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="facebook-wosn-links")
    p.add_argument("--rmat-scale", type=int, default=20)
    p.add_argument("--models", default="sage,gcn,gat", help="comma list of sage, gcn, gat")
    p.add_argument("--batch-sizes", default="1,16,256,4096,65536")
    p.add_argument("--features", type=int, default=64, help="input width (seeded random features)")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale-batches", type=float, default=1.0, help="multiply the number of batches per size")
    p.add_argument("--to-end", action="store_true", help="apply the rest of the stream and check exactness at the end")
    p.add_argument("--quick", action="store_true", help="sage only, fewer batches, sizes 1,16,256,4096")
    p.add_argument(
        "--modes",
        default="incremental,khop,full,incremental+collab,khop+collab",
        help="engines to run (incremental, khop and full are required; the +collab ones optional)",
    )
    p.add_argument("--step-times", action="store_true", help="time each step of the incremental engine, per layer")
    p.add_argument("--json", default="results/bench_engine.json")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.scale_batches, args.batch_sizes = "sage", 0.3, "1,16,256,4096"
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    if not {"incremental", "khop", "full"} <= set(args.modes):
        raise SystemExit(f"--modes must include incremental, khop and full, got {args.modes}")
    torch.set_grad_enabled(False)
    progress(f"loading dataset {args.dataset}")
    ds = load(args.dataset, scale=args.rmat_scale) if args.dataset == "rmat" else load(args.dataset)
    if ds.native_features is None:
        progress(f"{args.dataset} has no features: seeded random features of width {args.features}")
    progress(f"{ds!r}")
    rows = []
    for name in args.models.split(","):
        rows += bench_model(ds, name.strip(), args)
    meta = {
        "dataset": args.dataset,
        "features": "seeded random features" if ds.native_features is None else "native features",
        "features_in": args.features,
        "hidden": args.hidden,
        "out": args.out,
        "device": args.device,
        "cpu": f"{platform.machine()} x{torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print_table(rows, meta)
    print_step_times(rows)
    print_collab_table(rows)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
