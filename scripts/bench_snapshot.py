#!/usr/bin/env python
"""Snapshot storage benchmark: what one owner's part costs to write and read, per storage target.

The part is shaped like a partition owner's state (seeded random values, sizes from the flags):
features and three layer caches as float32 (64, 128 and 64 wide by default), two float64 aggregates,
in/out adjacency as int64 CSR (indptr + indices) over ``--edges`` edges, per-vertex versions (uint64)
and an alive mask (bool).  Targets:

* ``memory``: pyarrow's in-memory filesystem: the cost of Arrow IPC encoding + crc32c, no I/O;
* ``local``: a directory (``--dir``, default a temp dir); writes land in the page cache (no fsync);
* ``s3``: a moto S3 server on 127.0.0.1 if ``moto[server]`` is installed (an in-process Python server:
  a lower bound on what a real object store does, not a measure of one).

Columns: part size, write_part seconds and MB/s, commit (manifest + prune) seconds, latest() seconds,
latest(verify=True) seconds (reads every byte), read_part seconds and MB/s (includes the crc32c check
and the copy into writable arrays).  Each figure is the median of ``--repeats`` runs.

    python scripts/bench_snapshot.py                      # 250k vertices, 2.5M edges
    python scripts/bench_snapshot.py --vertices 20000 --edges 200000 --targets memory local

Prints a table and writes results/bench_snapshot.json.  No assertion on any time.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustergnn.snapshot import SnapshotStore  # noqa: E402

T = TypeVar("T")


def owner_state(vertices: int, edges: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def csr() -> tuple[np.ndarray, np.ndarray]:
        deg = rng.multinomial(edges, np.full(vertices, 1.0 / vertices))
        indptr = np.zeros(vertices + 1, np.int64)
        np.cumsum(deg, out=indptr[1:])
        return indptr, rng.integers(0, 1 << 40, edges, dtype=np.int64)

    out_ptr, out_idx = csr()
    in_ptr, in_idx = csr()
    return {
        "features": rng.standard_normal((vertices, 64), dtype=np.float32),
        "h1": rng.standard_normal((vertices, 64), dtype=np.float32),
        "h2": rng.standard_normal((vertices, 128), dtype=np.float32),
        "h3": rng.standard_normal((vertices, 64), dtype=np.float32),
        "agg1": rng.standard_normal((vertices, 64)),
        "agg2": rng.standard_normal((vertices, 128)),
        "out_indptr": out_ptr,
        "out_indices": out_idx,
        "in_indptr": in_ptr,
        "in_indices": in_idx,
        "vertex_ids": rng.integers(0, 1 << 40, vertices, dtype=np.int64),
        "version": rng.integers(0, 1 << 20, vertices, dtype=np.uint64),
        "alive": rng.random(vertices) < 0.99,
    }


@contextmanager
def local_target(directory: str | None) -> Iterator[Callable[[], SnapshotStore]]:
    with tempfile.TemporaryDirectory(dir=directory, prefix="bench-snapshot-") as root:
        n = iter(range(1 << 30))
        yield lambda: SnapshotStore(f"{root}/{next(n)}", retention=1)


@contextmanager
def memory_target() -> Iterator[Callable[[], SnapshotStore]]:
    from pyarrow._fs import (
        _MockFileSystem,  # pyarrow's in-memory filesystem (private, but stable for years)
    )

    fs = _MockFileSystem()
    n = iter(range(1 << 30))
    yield lambda: SnapshotStore(f"mem/{next(n)}", retention=1, filesystem=fs)


@contextmanager
def s3_target() -> Iterator[Callable[[], SnapshotStore]]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key="k",
            secret_key="s",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir("bench")
        n = iter(range(1 << 30))
        yield lambda: SnapshotStore(
            f"s3://k:s@bench/{next(n)}?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1", retention=1
        )
    finally:
        server.stop()


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def one_run(store: SnapshotStore, arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Write, commit, list, verify and read one part on an empty store; seconds per step and the size."""
    t_write, part = timed(partial(store.write_part, 0, 0, arrays, round_id=1, next_offset=12345))
    t_commit, manifest = timed(partial(store.commit, 0, [part], partitions=1, meta={"bench": True}))
    t_latest, _ = timed(store.latest)
    t_verify, _ = timed(partial(store.latest, verify=True))
    t_read, (got, _) = timed(partial(store.read_part, manifest, 0))
    assert all(np.array_equal(got[k], v) for k, v in arrays.items())  # correctness, not timing
    del got
    store.filesystem.delete_dir(store.snapshot_dir(0))  # the S3 server keeps objects in memory
    return {
        "write_s": t_write,
        "commit_s": t_commit,
        "latest_s": t_latest,
        "verify_s": t_verify,
        "read_s": t_read,
        "bytes": part.size_bytes,
    }


def bench(make_store: Callable[[], SnapshotStore], arrays: dict[str, np.ndarray], repeats: int) -> dict[str, float]:
    warm = make_store()  # first-use costs (imports, connections, allocator) are not the snapshot's
    warm.commit(0, [warm.write_part(0, 0, {"w": np.zeros((8, 8))}, round_id=0, next_offset=0)], partitions=1)
    warm.read_part(warm.latest(verify=True), 0)  # type: ignore[arg-type]
    runs = [one_run(make_store(), arrays) for _ in range(repeats)]  # a fresh root each: nothing to prune
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "bytes"}
    mb = runs[0]["bytes"] / 1e6
    return {"mb": mb, **med, "write_mb_s": mb / med["write_s"], "read_mb_s": mb / med["read_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vertices", type=int, default=250_000)
    p.add_argument("--edges", type=int, default=2_500_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--targets", nargs="+", default=["memory", "local", "s3"], choices=["memory", "local", "s3"])
    p.add_argument("--dir", default=None, help="parent directory of the local target (default: the temp dir)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="results/bench_snapshot.json")
    args = p.parse_args()

    arrays = owner_state(args.vertices, args.edges, args.seed)
    raw_mb = sum(a.nbytes for a in arrays.values()) / 1e6
    buf = pa.py_buffer(arrays["h2"])
    t_crc, _ = timed(lambda: crc32c.crc32c(buf))
    print(
        f"part: {args.vertices:,} vertices, {args.edges:,} edges, {len(arrays)} arrays, {raw_mb:.1f} MB in memory; "
        f"crc32c {'hardware' if crc32c.hardware_based else 'software'} {buf.size / 1e6 / t_crc:.0f} MB/s"
    )

    targets = {"memory": memory_target, "local": lambda: local_target(args.dir), "s3": s3_target}
    results: dict[str, dict[str, float] | str] = {}
    for name in args.targets:
        try:
            with targets[name]() as make_store:
                results[name] = bench(make_store, arrays, args.repeats)
        except ImportError as e:
            results[name] = f"skipped: {e}"

    head = (
        f"{'target':<8} {'MB':>8} {'write s':>8} {'MB/s':>7} {'commit s':>9} {'latest s':>9} "
        f"{'verify s':>9} {'read s':>8} {'MB/s':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        if isinstance(r, str):
            print(f"{name:<8} {r}")
            continue
        print(
            f"{name:<8} {r['mb']:>8.1f} {r['write_s']:>8.3f} {r['write_mb_s']:>7.0f} {r['commit_s']:>9.4f} "
            f"{r['latest_s']:>9.4f} {r['verify_s']:>9.3f} {r['read_s']:>8.3f} {r['read_mb_s']:>7.0f}"
        )

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "raw_mb": raw_mb,
                "arrays": {k: [str(v.dtype), list(v.shape)] for k, v in arrays.items()},
                "crc32c_hardware": bool(crc32c.hardware_based),
                "python": platform.python_version(),
                "pyarrow": pa.__version__,
                "machine": platform.machine(),
                "results": results,
            },
            indent=1,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
