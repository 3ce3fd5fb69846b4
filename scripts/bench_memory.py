#!/usr/bin/env python
"""The machine's random-access memory: what the update paths' cold rows cost before any of our code.

Two measurements, each with ordinary pages and with 2 MB pages (``madvise(MADV_HUGEPAGE)`` on an
``mmap``, for machines where transparent huge pages are ``madvise`` only; ``AnonHugePages`` in
``/proc/meminfo`` is printed so a run says whether it got them):

* **latency**: a dependent load (``i = nxt[i]`` over a random cyclic permutation) per array size;
* **rows**: read, modify and write ``--rows`` random rows of a ``(--table-rows, --width)`` float32
  table plus one float32 per row beside it (an aggregate and its drift budget, as the sum kernels
  touch them), on all cores, prefetching ``--ahead`` rows ahead, after 64 MB of other data flushed the
  caches; the median of ``--repeats``.

    python scripts/bench_memory.py                  # ~30 s, ~2.5 GiB
    python scripts/bench_memory.py --rows 3463,35000 --table-rows 2097152 --width 47

Prints a table, writes results/bench_memory.json.  docs/engine.md ("B = 1 on this machine") uses it to
tell the machine's share of an update from the code's.
"""

from __future__ import annotations

import argparse
import json
import mmap
import platform
import time
from pathlib import Path

import numba
import numpy as np

from clustergnn.cpu_kernels import prefetch_row, prefetch_span


def anon_huge_kib() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def empty(shape: tuple[int, ...], dtype: type, huge: bool) -> np.ndarray:
    """An uninitialised array; with ``huge``, in an anonymous mapping advised for 2 MB pages and
    aligned to them (the mapping lives as long as the array)."""
    if not huge:
        return np.empty(shape, dtype=dtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    m = mmap.mmap(-1, nbytes + (4 << 20), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    base = np.frombuffer(m, dtype=np.uint8)
    off = (-base.ctypes.data) % (2 << 20)
    return base[off : off + nbytes].view(dtype).reshape(shape)


@numba.njit(nogil=True)
def chase(nxt, steps):  # pragma: no cover - jitted
    i = 0
    for _ in range(steps):
        i = nxt[i]
    return i


@numba.njit(nogil=True, parallel=True, boundscheck=False)
def touch_rows(table, side, rows, ahead):  # pragma: no cover - jitted
    n = rows.shape[0]
    per = 64
    for ch in numba.prange((n + per - 1) // per):
        for i in range(ch * per, min(n, (ch + 1) * per)):
            if ahead > 0 and i + ahead < n:
                prefetch_row(table, rows[i + ahead])
                prefetch_span(side, rows[i + ahead], 1)
            r = rows[i]
            s = np.float32(0.0)
            for k in range(table.shape[1]):
                s += table[r, k]
                table[r, k] = table[r, k] * np.float32(1.0000001)
            side[r] += s * np.float32(1e-9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", default="1,8,64,512", help="array sizes of the latency chase")
    ap.add_argument("--steps", type=int, default=2_000_000)
    ap.add_argument("--rows", default="3463,35000", help="random rows touched per measurement")
    ap.add_argument("--table-rows", type=int, default=1 << 21)
    ap.add_argument("--width", type=int, default=47)
    ap.add_argument("--ahead", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="results/bench_memory.json")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    flush = np.ones(64 << 20, dtype=np.uint8)
    out: dict = {"machine": platform.processor() or platform.machine(), "latency": [], "rows": []}

    print(f"{'array':>8} {'pages':>6} {'ns per dependent load':>22} {'AnonHugePages':>14}")
    for mb in (int(x) for x in args.sizes_mb.split(",")):
        for huge in (False, True):
            n = (mb << 20) // 8
            perm = rng.permutation(n)
            nxt = empty((n,), np.int64, huge)
            nxt[perm[:-1]] = perm[1:]
            nxt[perm[-1]] = perm[0]
            chase(nxt, 1000)
            t = time.perf_counter()
            chase(nxt, args.steps)
            ns = (time.perf_counter() - t) / args.steps * 1e9
            kib = anon_huge_kib()
            print(f"{mb:>6}MB {'2 MB' if huge else '4 KB':>6} {ns:>22.1f} {kib / 1024:>11.0f} MB")
            out["latency"].append({"mb": mb, "huge": huge, "ns": ns, "anon_huge_kib": kib})
            del nxt, perm

    head = f"{'rows':>8} {'pages':>6} {'ahead':>6} {'median us':>10} {'ns per row':>11}"
    print(f"\n{head}   table {args.table_rows:,} x {args.width} float32")
    for huge in (False, True):
        table = empty((args.table_rows, args.width), np.float32, huge)
        table[:] = 1.0
        side = empty((args.table_rows,), np.float32, huge)
        side[:] = 0.0
        for k in (int(x) for x in args.rows.split(",")):
            rows = np.unique(rng.integers(0, args.table_rows, k)).astype(np.int64)
            for ahead in (0, args.ahead):
                touch_rows(table, side, rows, ahead)
                ts = []
                for _ in range(args.repeats):
                    flush.sum()
                    t = time.perf_counter()
                    touch_rows(table, side, rows, ahead)
                    ts.append(time.perf_counter() - t)
                us = float(np.median(ts)) * 1e6
                pages = "2 MB" if huge else "4 KB"
                print(f"{len(rows):>8} {pages:>6} {ahead:>6} {us:>10.0f} {us * 1e3 / len(rows):>11.1f}")
                out["rows"].append({"rows": len(rows), "huge": huge, "ahead": ahead, "median_us": us})
        del table, side
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
