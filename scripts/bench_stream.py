#!/usr/bin/env python
"""Mutation-stream throughput: produce -> broker -> consume -> decode into MutationBatch tensors.

For each case (format x mutations per record) it produces ``--mutations`` mutations to a fresh
one-partition topic, then one consumer reads them back from offset 0 and decodes them.  Reported:
produce rate (encode + send + ack), consume rate (fetch + decode into tensors, the owner's ingest
path), and decode-only rate (the same records decoded in memory, no Kafka).  Workloads: ``edges``
(ADD_EDGE only, the target: >= 1M mutations/s decoded by one consumer with Arrow records) and
``features`` (UPDATE_FEATURES with seeded-random float32 features of width ``--feature-dim``).

Starts its own embedded broker unless ``--bootstrap`` is given.  Prints a table and writes JSON to
``results/bench_stream.json``.

    .venv/bin/python scripts/bench_stream.py                   # full sweep
    .venv/bin/python scripts/bench_stream.py --mutations 200000 --sizes 1024,65536
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clustergnn.codec import columns_to_batch  # noqa: E402
from clustergnn.mutations import MutationBatch  # noqa: E402
from clustergnn.partition import HashPartitionMap  # noqa: E402
from streams.broker import EmbeddedBroker  # noqa: E402
from streams.consumer import MutationConsumer  # noqa: E402
from streams.producer import MutationProducer  # noqa: E402
from streams.topics import ensure_topics  # noqa: E402
from streams.wire import decode_record, encode_arrow, encode_json  # noqa: E402

MAX_RECORD_BYTES = 15 << 20  # topics are created with max.message.bytes = 16 MiB


@dataclass(frozen=True)
class Row:
    workload: str
    format: str
    mutations_per_record: int
    mutations: int
    records: int
    value_mb: float
    produce_mut_per_s: float
    consume_mut_per_s: float
    consume_mb_per_s: float
    decode_only_mut_per_s: float


def make_batch(workload: str, n: int, dim: int, seed: int = 0) -> MutationBatch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1 << 40, n)
    if workload == "edges":
        return MutationBatch.add_edges(rng.integers(0, 1 << 40, n), ids)
    return MutationBatch.update_features(ids, rng.standard_normal((n, dim), dtype=np.float32))


def run_case(bootstrap: str, workload: str, fmt: str, per_record: int, n: int, dim: int, chunk: int) -> Row:
    pm = HashPartitionMap(1)
    topic = f"bench-{workload}-{fmt}-{per_record}-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, topic, 1)
    source = make_batch(workload, chunk, dim)
    # produce: chunks of `chunk` mutations, encoded and sent as the producer would in production
    t0 = time.perf_counter()
    sent = records = value_bytes = 0
    with MutationProducer(
        bootstrap,
        topic,
        pm,
        fmt,
        max_mutations_per_record=per_record,
        max_record_bytes=MAX_RECORD_BYTES,  # type: ignore[arg-type]
    ) as prod:
        pending = []
        while sent < n:
            b = source if n - sent >= chunk else source.slice(0, n - sent)
            r = prod.send_async(b)
            pending.append(r)
            sent += r.mutations
            records += r.records
            value_bytes += r.value_bytes
            if len(pending) > 4:
                pending.pop(0).get()
        prod.flush()
        last = 0
        for r in pending:
            last = max(last, r.get().get(0, last))
    produce_s = time.perf_counter() - t0
    # consume + decode, one consumer, from offset 0 to the known end (never the broker's end offsets)
    with MutationConsumer(
        bootstrap, topic, [0], pm, start_offsets={0: 0}, feature_dim=dim if workload == "features" else None
    ) as c:
        got = 0
        raw: list[tuple[bytes | None, bytes]] = []
        t0 = time.perf_counter()
        while (c.position(0) or 0) < last + 1:
            for pb in c.poll(timeout_ms=500):
                got += len(pb.batch)
                torch.from_numpy(pb.batch.src), torch.from_numpy(pb.batch.dst)  # noqa: B018 -- the tensors an owner uses
        consume_s = time.perf_counter() - t0
    assert got == n, f"consumed {got} of {n} mutations"
    # decode only: the same kind of records, in memory
    if fmt == "arrow":
        one = source.slice(0, min(per_record, len(source)))
        values = [(None, encode_arrow(one))] * max(1, min(200, n // len(one)))
    else:
        values = encode_json(source.slice(0, min(20_000, len(source))))
    raw = values
    t0 = time.perf_counter()
    decoded = [decode_record(v, k, 0, pm, dim if workload == "features" else None) for k, v in raw]
    columns_to_batch(decoded)  # type: ignore[arg-type]
    decode_s = time.perf_counter() - t0
    decode_n = sum(len(d) for d in decoded)  # type: ignore[arg-type]
    return Row(
        workload,
        fmt,
        per_record if fmt == "arrow" else 1,
        n,
        records,
        value_bytes / 1e6,
        n / produce_s,
        n / consume_s,
        value_bytes / 1e6 / consume_s,
        decode_n / decode_s,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bootstrap", default=None, help="HOST:PORT of a broker (default: start an embedded one)")
    ap.add_argument("--mutations", type=int, default=2_000_000, help="edge mutations per Arrow case")
    ap.add_argument("--json-mutations", type=int, default=100_000, help="mutations per JSON case (one record each)")
    ap.add_argument("--feature-mutations", type=int, default=200_000, help="mutations per feature-update case")
    ap.add_argument("--sizes", default="1024,4096,16384,65536", help="Arrow mutations per record")
    ap.add_argument("--feature-dim", type=int, default=64)
    ap.add_argument("--out", default=str(REPO / "results" / "bench_stream.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    cases = [("edges", "arrow", s, args.mutations) for s in sizes]
    cases += [("features", "arrow", s, args.feature_mutations) for s in sizes if s <= 16384]
    cases += [("edges", "json", 1, args.json_mutations), ("features", "json", 1, args.json_mutations // 4)]

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker()
        bootstrap = broker.start()
    rows: list[Row] = []
    try:
        for i, (workload, fmt, per_record, n) in enumerate(cases, 1):
            print(
                f"[{i}/{len(cases)}] {workload} {fmt} {per_record}/record, {n} mutations ...",
                file=sys.stderr,
                flush=True,
            )
            chunk = max(per_record, 65_536) if fmt == "arrow" else 10_000
            rows.append(run_case(bootstrap, workload, fmt, per_record, n, args.feature_dim, chunk))
    finally:
        if broker is not None:
            broker.stop()

    head = (
        f"{'workload':9} {'format':6} {'mut/rec':>7} {'mutations':>10} {'records':>8} {'MB':>8} "
        f"{'produce mut/s':>14} {'consume mut/s':>14} {'consume MB/s':>12} {'decode-only mut/s':>17}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r.workload:9} {r.format:6} {r.mutations_per_record:>7} {r.mutations:>10} {r.records:>8} "
            f"{r.value_mb:>8.1f} "
            f"{r.produce_mut_per_s:>14,.0f} {r.consume_mut_per_s:>14,.0f} {r.consume_mb_per_s:>12.1f} "
            f"{r.decode_only_mut_per_s:>17,.0f}"
        )
    print(
        f"features: seeded-random float32, width {args.feature_dim}; "
        f"broker: {'embedded tansu' if broker else bootstrap}; "
        f"consume = fetch + decode into MutationBatch (numpy/torch) by one consumer"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": __import__("os").cpu_count(),
        "broker": "embedded tansu" if broker else bootstrap,
        "feature_dim": args.feature_dim,
    }
    out.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
