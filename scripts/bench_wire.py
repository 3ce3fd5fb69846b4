#!/usr/bin/env python
"""Bytes per mutation on the wire, and encode/decode time, for one tree's code or two trees side by side.

The mixes are the chaos run's (``scripts/chaos.py``, ``Workload``): at its 10k mutations/s the producer
sends 500 mutations every 50 ms, split over 4 partitions, so one Arrow record holds ~125 mutations of
one partition.  Feature width 64 (the default cluster's ``model.in_dim``), initial graph
``facebook-wosn-links`` (the chaos run's default).  Mixes:

* ``steady record``: one partition's record of one tick of the steady mix (45% edge additions, 43% edge
  removals, 10% feature updates, 1% vertex additions and removals) -- the row of the table that was in
  ``docs/wire-format.md`` before schema version 2;
* ``growing record``: the same for the growing mix (60/15/18/5/2);
* ``steady 2 s``: every record of 40 ticks of the steady mix, all partitions (bytes over mutations);
* ``edges record``: one partition's record of 500 edge additions (no feature rows at all).

Each repetition draws the mutations with another seed; every tree encodes exactly the same mutations
(they are drawn once, saved, and each tree's code runs in its own process, ``--code-root``).  Encode
and decode times are the median over ``--timing-repeats`` runs of ``streams.wire.encode_arrow_columns``
and ``decode_arrow`` (single-threaded Python, this machine).  Prints a table; writes JSON.

    python scripts/bench_wire.py                                    # this tree only
    python scripts/bench_wire.py --before /tmp/main-tree --reps 5   # before (that tree) vs after (this one)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
COMPRESSIONS = ("none", "lz4", "zstd")
TICK_MUTATIONS = 500  # chaos: 10k/s in 50 ms ticks
PARTITIONS = 4
DIM = 64


# ------------------------------------------------------------------------------------ drawing the mixes
def _chaos_workload(seed: int, mix: str, verts: list[int]):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("chaos_workload", REPO / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    chaos = sys.modules.get(spec.name)
    if chaos is None:  # a dataclass module must be in sys.modules while it runs
        chaos = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(chaos)
    rng = np.random.default_rng(seed)
    return chaos.Workload(rng, DIM, list(verts), next_id=int(max(verts)) + 1, mix=mix)


def draw(seed: int, path: Path, verts: list[int]) -> None:
    """Save the records (columns per record) of every mix for ``seed`` to ``path`` (npz)."""
    sys.path.insert(0, str(REPO))
    from clustergnn.mutations import MutationBatch
    from clustergnn.partition import HashPartitionMap, split_by_owner

    pm = HashPartitionMap(PARTITIONS)
    mixes: dict[str, list] = {}
    for mix in ("steady", "growing"):
        work = _chaos_workload(seed, mix, verts)
        for _ in range(20):  # past the first ticks, whose edge removals find few streamed edges
            work.batch(TICK_MUTATIONS)
        part = split_by_owner(work.batch(TICK_MUTATIONS), pm)[0]
        mixes[f"{mix} record"] = [part]
        if mix == "steady":
            mixes["steady 2 s"] = [
                p for _ in range(40) for _, p in sorted(split_by_owner(work.batch(TICK_MUTATIONS), pm).items())
            ]
    rng = np.random.default_rng(seed)
    edges = MutationBatch.add_edges(rng.choice(verts, TICK_MUTATIONS), rng.choice(verts, TICK_MUTATIONS))
    mixes["edges record"] = [split_by_owner(edges, pm)[0]]
    arrays = {}
    for name, parts in mixes.items():
        for i, b in enumerate(parts):
            for col, arr in (("kind", b.kind), ("src", b.src), ("dst", b.dst), ("features", b.features.numpy())):
                arrays[f"{name}|{i}|{col}"] = arr
    np.savez(path, **arrays)


# ------------------------------------------------------------------------------------ measuring (one tree)
def measure(npz: Path, repeats: int) -> dict:
    """Encode and decode every mix with the code importable now (``--code-root`` is first on the path)."""
    from streams.wire import DecodeError, decode_arrow, encode_arrow_columns

    data = np.load(npz)
    records: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for key in data.files:
        name, i, col = key.split("|")
        records.setdefault(name, {}).setdefault(int(i), {})[col] = data[key]
    out: dict[str, dict] = {}
    for name, recs in records.items():
        cols = [recs[i] for i in sorted(recs)]
        n = sum(len(c["kind"]) for c in cols)
        reps = max(3, repeats // len(cols))
        for comp in COMPRESSIONS:

            def encode_all(comp: str = comp, cols: list = cols) -> list[bytes]:
                return [encode_arrow_columns(c["kind"], c["src"], c["dst"], c["features"], comp) for c in cols]

            values = encode_all()
            for v in values:
                assert not isinstance(decode_arrow(v), DecodeError), decode_arrow(v)
            enc, dec = [], []
            for _ in range(reps):
                t0 = time.perf_counter()
                encode_all()
                t1 = time.perf_counter()
                for v in values:
                    decode_arrow(v)
                t2 = time.perf_counter()
                enc.append(t1 - t0)
                dec.append(t2 - t1)
            total = sum(len(v) for v in values)
            out[f"{name}|{comp}"] = {
                "mutations": n,
                "records": len(values),
                "bytes": total,
                "bytes_per_mutation": total / n,
                "encode_ms": 1e3 * statistics.median(enc),
                "decode_ms": 1e3 * statistics.median(dec),
            }
    return out


# ------------------------------------------------------------------------------------ driver
def _run_tree(root: Path, npz: Path, repeats: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(npz), "--code-root", str(root)]
    cmd += ["--timing-repeats", str(repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def _span(xs: list[float], fmt: str) -> str:
    lo, hi = min(xs), max(xs)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else f"{format(lo, fmt)}-{format(hi, fmt)}"


def table(results: dict[str, list[dict]]) -> str:
    trees = list(results)
    keys = list(results[trees[0]][0])
    head = ["mix", "compression", "mutations/record"]
    for t in trees:
        head += [f"{t} B/mutation", f"{t} encode ms", f"{t} decode ms"]
    if len(trees) == 2:
        head.append("bytes after/before")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        mix, comp = key.split("|")
        first = [r[key] for r in results[trees[0]]]
        row = [mix, comp, _span([r["mutations"] / r["records"] for r in first], ".0f")]
        for t in trees:
            rs = [r[key] for r in results[t]]
            row += [
                _span([r["bytes_per_mutation"] for r in rs], ".1f"),
                _span([r["encode_ms"] for r in rs], ".2f"),
                _span([r["decode_ms"] for r in rs], ".2f"),
            ]
        if len(trees) == 2:  # paired: the same mutations in each repetition
            pairs = zip(results[trees[0]], results[trees[1]], strict=True)
            row.append(_span([b[key]["bytes"] / a[key]["bytes"] for a, b in pairs], ".3f"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, default=None, help="a tree with the code to compare against")
    ap.add_argument("--reps", type=int, default=5, help="repetitions, each with its own seed")
    ap.add_argument("--timing-repeats", type=int, default=100, help="encode/decode runs per record for timing")
    ap.add_argument("--json", type=Path, default=REPO / "results" / "bench_wire.json")
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--code-root", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure is not None:
        sys.path.insert(0, str(args.code_root or REPO))
        print(json.dumps(measure(args.measure, args.timing_repeats)))
        return 0
    sys.path.insert(0, str(REPO))
    from clustergnn.datasets import load

    verts = load("facebook-wosn-links").initial_vertices.tolist()
    trees = {"before": args.before, "after": REPO} if args.before else {"this tree": REPO}
    results: dict[str, list[dict]] = {t: [] for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            npz = Path(tmp) / f"mixes-{rep}.npz"
            draw(rep, npz, verts)
            order = list(trees.items()) if rep % 2 == 0 else list(reversed(trees.items()))
            for name, root in order:  # alternate which tree runs first
                results[name].append(_run_tree(root, npz, args.timing_repeats))
            print(f"[bench_wire] repetition {rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "results": results}, indent=1))
    print(f"[bench_wire] wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
