#!/usr/bin/env python
"""Engine state benchmark: what an exact snapshot of a real engine costs, end to end.

facebook-wosn-links (its initial graph plus ``--batches`` stream batches of ``--batch-size`` events, so
the caches hold incrementally updated values, not only a bulk load), SAGE mean ``F-H-O`` (64-128-64 by default, seeded
random weights and features), one single engine and one ``LocalCluster`` of ``--partitions`` partitions
(hash map).  For each, per step (median of ``--repeats``):

* ``export``: ``export_state()`` of every engine (numpy copies of the live rows, CSR of the blocks);
* ``write``: ``SnapshotStore.write_part`` of every part plus ``commit`` (Arrow IPC + crc32c, a local
  directory: the page cache, no fsync);
* ``read``: ``latest(verify=False)`` + ``read_part`` of every part (sizes and crc32c checked, copied);
* ``restore``: ``from_state`` of every engine (checks, including the in/out mirror sort, and the copy
  into fresh tables);

plus the bytes written, and whether the restored engines' final embeddings equal the original's bit
for bit (``torch.equal``, per external id).

    python scripts/bench_state.py                 # the table in docs/snapshots.md
    python scripts/bench_state.py --batches 2 --repeats 1 --partitions 2

Prints a table and writes results/bench_state.json.  No assertion on any time.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clustergnn import Engine  # noqa: E402
from clustergnn._dgl import dglnn  # noqa: E402
from clustergnn.datasets import load  # noqa: E402
from clustergnn.partition import HashPartitionMap  # noqa: E402
from clustergnn.partitioned import LocalCluster, PartitionEngine  # noqa: E402
from clustergnn.rules import rules_from_dgl  # noqa: E402
from clustergnn.snapshot import SnapshotStore  # noqa: E402


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def layers_for(args: argparse.Namespace) -> list[torch.nn.Module]:
    torch.manual_seed(args.seed)
    layers = [dglnn.SAGEConv(args.features, args.hidden, "mean"), dglnn.SAGEConv(args.hidden, args.out, "mean")]
    for layer in layers:
        layer.eval()
    return layers


def final_by_id(engines: list[Engine]) -> tuple[np.ndarray, torch.Tensor]:
    ids, rows = [], []
    for e in engines:
        own = e.owned_ids() if isinstance(e, PartitionEngine) else e.vertex_ids()
        ids.append(own)
        rows.append(e.embeddings(own))
    ids_a = np.concatenate(ids)
    order = np.argsort(ids_a)
    return ids_a[order], torch.cat(rows)[torch.from_numpy(order)]


def measure(engines: list[Engine], layers, args, root: Path, pmap=None) -> dict:
    """Export, write + commit, read, restore every engine ``args.repeats`` times; medians."""
    times: dict[str, list[float]] = {"export_s": [], "write_s": [], "read_s": [], "restore_s": []}
    nbytes = 0
    identical = True
    round_id = max(e.round for e in engines)
    for rep in range(args.repeats):
        store = SnapshotStore(root / f"rep{rep}", retention=1)
        t = time.perf_counter()
        states = [e.export_state() for e in engines]
        times["export_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sid = store.next_id()
        infos = [
            store.write_part(sid, p, a, round_id=round_id, next_offset=e.stats["mutations"], meta=m)
            for p, ((a, m), e) in enumerate(zip(states, engines))
        ]
        manifest = store.commit(sid, infos, partitions=len(engines))
        times["write_s"].append(time.perf_counter() - t)
        nbytes = manifest.size_bytes
        del states
        t = time.perf_counter()
        found = store.latest()
        parts = [store.read_part(found, p) for p in range(len(engines))]
        times["read_s"].append(time.perf_counter() - t)
        t = time.perf_counter()
        restored: list[Engine] = []
        for p, (arrays, info) in enumerate(parts):
            rules = rules_from_dgl(layers, args.features)
            if pmap is None:
                restored.append(Engine.from_state(rules, arrays, info.meta))
            else:
                restored.append(PartitionEngine.from_state(rules, arrays, info.meta, partition=p, partition_map=pmap))
        times["restore_s"].append(time.perf_counter() - t)
        del parts
        (ia, ra), (ib, rb) = final_by_id(engines), final_by_id(restored)
        identical &= bool(np.array_equal(ia, ib) and torch.equal(ra, rb))
        del restored
    out = {k: statistics.median(v) for k, v in times.items()}
    out["total_s"] = sum(out.values())
    out["bytes"] = int(nbytes)
    out["identical"] = identical
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="facebook-wosn-links")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--out", type=int, default=64)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", type=Path, default=None, help="snapshot root (default: a temp dir)")
    p.add_argument("--json", type=Path, default=Path("results/bench_state.json"))
    args = p.parse_args()

    ds = load(args.dataset)
    layers = layers_for(args)
    init = ds.initial_batch(dim=args.features, seed=args.seed)
    stream = list(
        ds.stream_batches(args.batch_size, dim=args.features, seed=args.seed, limit=args.batches * args.batch_size)
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        t = time.perf_counter()
        single = Engine.from_layers(layers, args.features)
        single.bulk_load(init)
        for b in stream:
            single.apply(b)
        progress(
            f"single engine: {single.num_vertices:,} vertices, {single.num_edges:,} edges "
            f"({time.perf_counter() - t:.0f}s)"
        )
        r = measure([single], layers, args, root / "single")
        rows.append({"setup": "single engine", "vertices": single.num_vertices, "edges": single.num_edges, **r})
        del single
        pmap = HashPartitionMap(args.partitions)
        t = time.perf_counter()
        cluster = LocalCluster.from_layers(layers, args.features, pmap)
        cluster.apply(init)
        for b in stream:
            cluster.apply(b)
        nv = sum(e.num_vertices for e in cluster.engines)
        ne = sum(e.num_edges for e in cluster.engines)
        progress(
            f"cluster P={args.partitions}: {nv:,} vertices incl. ghosts, {ne:,} edges ({time.perf_counter() - t:.0f}s)"
        )
        r = measure(cluster.engines, layers, args, root / "cluster", pmap)
        rows.append({"setup": f"LocalCluster P={args.partitions}", "vertices": nv, "edges": ne, **r})

    head = ["setup", "vertices", "edges", "MB", "export s", "write s", "read s", "restore s", "total s", "identical"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = [
            r["setup"],
            f"{r['vertices']:,}",
            f"{r['edges']:,}",
            f"{r['bytes'] / 1e6:.1f}",
            *(f"{r[k]:.3f}" for k in ("export_s", "write_s", "read_s", "restore_s", "total_s")),
            "yes" if r["identical"] else "NO",
        ]
        print("| " + " | ".join(cells) + " |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"args": meta, "machine": platform.platform(), "torch_threads": torch.get_num_threads(), "rows": rows}
    args.json.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
