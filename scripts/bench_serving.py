#!/usr/bin/env python
"""Serving under write load (issue 12 item 6): one cluster, one configuration, everything at once.

    python scripts/bench_serving.py                    # 20k edge mutations/s + 1k reads/s of 1 id, 30 s
    python scripts/bench_serving.py --busy             # the same with one busy-loop process per core
    python scripts/bench_serving.py --rate 2000 --read-rate 100 --seconds 3 --dataset collegemsg   # a smoke run

It starts the embedded broker and a real ``clustergnn serve`` (a config it writes, or ``--config`` as the
base) with the gateway on 127.0.0.1, then runs in one window of ``--seconds``, each in its own process
(no shared interpreter lock):

* **producer**: the dataset's event stream at ``--rate`` edge mutations/s, 20 paced batches a second,
  straight to Kafka (``MutationProducer``), as ``clustergnn produce`` does;
* **reader**: open-loop ``GetEmbeddings`` of 1 random id at ``--read-rate`` requests/s with
  ``max_staleness_ms = --read-staleness-ms``: request i is due at ``t0 + i / rate`` whatever happened to
  earlier ones, and its latency is measured from that due time (no coordinated omission);
* **marker probe**: 10 times a second a feature update of P dedicated vertices (one per partition, so a
  marker is visible only once every partition has applied it), produced to Kafka; from the producer's ack, a
  read with ``min_offsets`` = the marker's offsets waits until it is visible: that is the visible latency;
* **floor**: a trivial gRPC server (a sync thread-pool ``grpc.server`` whose handler returns a constant, in
  its own otherwise idle process) read by the same open-loop reader code at the same rate in the same
  window, from another process: what this machine gives any Python gRPC server at that moment.

Prints p50/p99/max of each, a PASS/FAIL line per target, writes ``results/bench_serving.json`` and
``results/bench_serving.png`` (latencies over time; ``bench_serving_busy.*`` with ``--busy``).  ``--busy``
starts one ``while True: pass`` process per core just before the window.  Bounded in time and count;
everything binds to 127.0.0.1; it ends exactly the processes it started (by pid), also on Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCHES_PER_S = 20
"""Producer batches per second (as ``bench_cluster``): 1,000 edge mutations per record batch at 20k/s."""
MARKERS_PER_S = 10
WARM_BATCHES = 2
"""Stream batches the producer sends before the window (applied before it; not counted)."""
ECHO_METHOD = "/clustergnn.bench.Echo/Echo"
ECHO_REPLY = bytes(300)
"""About the size of a 1-id answer (64 float32 plus the freshness fields)."""
READY_TIMEOUT_S = 180.0
WARM_TIMEOUT_S = 60.0
"""The deadline of the readers' and the probe's unmeasured warm-up calls (the window's use ``--read-timeout-s``)."""
EXIT_MISSED = 3
"""Exit status when the run completed and a target was missed (1 stays Python's: a crash)."""


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(a: np.ndarray | list, p: float) -> float | None:
    a = np.asarray(a, dtype=float)
    return float(np.percentile(a, p)) if a.size else None


def stats3(a: np.ndarray | list) -> dict[str, float | None]:
    a = np.asarray(a, dtype=float)
    return {"p50": pct(a, 50), "p99": pct(a, 99), "max": float(a.max()) if a.size else None}


def _own_session() -> None:
    """Run as a program of its own: with the kernel's autogroup scheduling (on here) CPU is shared equally
    between sessions first, so load processes sharing our session would share one core's worth between
    them, the busy loops included, instead of competing with the cluster as separate programs do."""
    try:
        os.setsid()
    except OSError:  # already a session leader
        pass


def _wait_go(q: Any, go: Any, start: Any, name: str) -> float:
    q.put(("ready", name))
    if not go.wait(READY_TIMEOUT_S + 60):
        raise TimeoutError(f"{name}: no start signal")
    return float(start.value)


def _sleep_until(t: float) -> None:
    d = t - time.time()
    if d > 0:
        time.sleep(d)


# --------------------------------------------------------------------------------------- processes
def producer_proc(q: Any, go: Any, start: Any, a: dict) -> None:
    """The dataset's stream at ``a['rate']`` edge mutations/s; reports every batch's ack."""
    _own_session()
    from clustergnn.datasets import load
    from clustergnn.mutations import edge_kinds_mask
    from clustergnn.partition import HashPartitionMap
    from streams.producer import MutationProducer

    ds = load(a["dataset"])
    per_event = 1 if ds.directed else 2
    events_per_batch = max(1, round(a["rate"] / per_event / BATCHES_PER_S))
    n_batches = max(1, int(a["seconds"] * BATCHES_PER_S))
    limit = min(ds.num_events, events_per_batch * (n_batches + WARM_BATCHES))
    batches = list(ds.stream_batches(events_per_batch, dim=a["dim"], limit=limit))
    producer = MutationProducer(a["bootstrap"], a["topic"], HashPartitionMap(a["partitions"]))
    # The first real sends cost ~0.2 s of CPU (lazy initialisation) and fetch metadata: ~0.9 s here, and
    # several seconds on a starved machine, which held the window's first seconds back. Send them before it.
    for b in batches[:WARM_BATCHES]:
        producer.send(b)
    batches = batches[WARM_BATCHES:]
    edges = [int(edge_kinds_mask(b.kind).sum()) for b in batches]
    t0 = _wait_go(q, go, start, "producer")
    c0 = time.process_time()
    acks, last = [], {}
    for k, b in enumerate(batches):
        due = t0 + k / BATCHES_PER_S
        _sleep_until(due)
        sent = time.time()
        offsets = producer.send(b)
        ack = time.time()
        for p, o in offsets.items():
            last[p] = max(last.get(p, -1), o)
        acks.append((due - t0, sent - due, ack - sent, len(b), edges[k]))
    cpu_s = time.process_time() - c0
    producer.close()
    q.put(("result", "producer", {"acks": acks, "last_offsets": last, "per_event": per_event, "cpu_s": cpu_s}))


async def _open_loop(a: dict, kind: str) -> dict:
    import grpc

    rate, seconds, timeout_s = a["read_rate"], a["seconds"], a["read_timeout_s"]
    rng = np.random.default_rng(7 if kind == "gateway" else 8)
    async with grpc.aio.insecure_channel(a["target"] if kind == "gateway" else a["echo_target"]) as ch:
        if kind == "gateway":
            from actors.gateway._gen import clustergnn_pb2 as pb
            from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc

            ids = np.load(a["ids_file"])
            stub = pb_grpc.EmbeddingServiceStub(ch).GetEmbeddings
            pool = [
                pb.GetEmbeddingsRequest(
                    vertex_ids=[int(i)], max_staleness_ms=a["read_staleness_ms"], answer_now=a["answer_now"]
                )
                for i in rng.choice(ids, 512)
            ]
        else:
            stub = ch.unary_unary(ECHO_METHOD)
            pool = [b"x" * 8]
        for i in range(100):  # connection and server threads warm; not measured, so a slow first answer
            await stub(pool[i % len(pool)], timeout=WARM_TIMEOUT_S)  # (a cold gateway on a busy box) is fine
        t0 = _wait_go(a["q"], a["go"], a["start"], kind)
        c0 = time.process_time()
        loop = asyncio.get_running_loop()
        t0_loop = loop.time() + (t0 - time.time())
        total = int(rate * seconds)
        lat = np.full(total, np.nan)
        svc = np.full(total, np.nan)
        stale = np.full(total, np.nan)
        unmet = np.zeros(total, dtype=bool)
        codes: dict[str, int] = {}
        sem = asyncio.Semaphore(a["max_in_flight"])

        async def one(i: int, due: float) -> None:
            async with sem:
                sent = loop.time()
                try:
                    resp = await stub(pool[i % len(pool)], timeout=timeout_s)
                except grpc.aio.AioRpcError as e:
                    codes[e.code().name] = codes.get(e.code().name, 0) + 1
                    return
                except Exception as e:  # noqa: BLE001 - counted by type
                    codes[type(e).__name__] = codes.get(type(e).__name__, 0) + 1
                    return
                end = loop.time()
                lat[i], svc[i] = (end - due) * 1000, (end - sent) * 1000
                if kind == "gateway":
                    stale[i], unmet[i] = resp.staleness_ms, not resp.bound_met
                codes["OK"] = codes.get("OK", 0) + 1

        tasks = []
        i = 0
        while i < total:
            now = loop.time()
            if now - t0_loop > seconds * 2 + 5:  # bounded even if this generator cannot keep up
                break
            due = t0_loop + i / rate
            if due > now:
                await asyncio.sleep(due - now)
            while i < total and t0_loop + i / rate <= loop.time():  # fire everything due (catch up in a burst)
                tasks.append(asyncio.ensure_future(one(i, t0_loop + i / rate)))
                i += 1
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s + 10)
            for t in pending:  # waited on the in-flight cap past every deadline: counted, never lost
                t.cancel()
            if pending:
                codes["NO_ANSWER"] = len(pending)
        return {
            "due_s": (np.arange(total) / rate).tolist(),
            "latency_ms": lat.tolist(),
            "service_ms": svc.tolist(),
            "staleness_ms": stale.tolist(),
            "bound_unmet": int(unmet.sum()),
            "codes": codes,
            "sent": i,
            "unsent": total - i,
            "cpu_s": time.process_time() - c0,
        }


def reader_proc(q: Any, go: Any, start: Any, a: dict, kind: str) -> None:
    _own_session()
    res = asyncio.run(_open_loop({**a, "q": q, "go": go, "start": start}, kind))
    q.put(("result", kind, res))


def probe_proc(q: Any, go: Any, start: Any, a: dict) -> None:
    """Markers: a feature update of P dedicated vertices (one per partition) 10 times a second; each is
    read with ``min_offsets`` = its offsets (the read waits until it is visible); latency from the ack."""
    _own_session()
    import threading

    import grpc

    from actors.gateway._gen import clustergnn_pb2 as pb
    from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
    from actors.gateway.client import GatewayClient
    from clustergnn.mutations import MutationBatch
    from clustergnn.partition import HashPartitionMap
    from streams.producer import MutationProducer

    P, dim = a["partitions"], a["dim"]
    ids = [a["marker_base"] + p for p in range(P)]  # consecutive ids: one in each partition of v mod P
    rng = np.random.default_rng(3)
    producer = MutationProducer(a["bootstrap"], a["topic"], HashPartitionMap(P))
    offsets = producer.send(MutationBatch.add_vertices(ids, rng.standard_normal((P, dim), dtype=np.float32)))
    with GatewayClient(a["target"]) as c:
        c.get_embeddings(ids, min_offsets=offsets, timeout_s=120)  # the marker vertices exist
    ch = grpc.insecure_channel(a["target"])
    stub = pb_grpc.EmbeddingServiceStub(ch)
    stub.GetEmbeddings(pb.GetEmbeddingsRequest(vertex_ids=ids), timeout=WARM_TIMEOUT_S)  # this channel connected
    n = int(a["seconds"] * MARKERS_PER_S)
    rows: list[list[float] | None] = [None] * n
    done = threading.Semaphore(0)
    t0 = _wait_go(q, go, start, "probe")
    c0 = time.process_time()
    for k in range(n):
        due = t0 + k / MARKERS_PER_S
        _sleep_until(due)
        sent = time.time()
        offs = producer.send(MutationBatch.update_features(ids, rng.standard_normal((P, dim), dtype=np.float32)))
        ack = time.time()
        req = pb.GetEmbeddingsRequest(vertex_ids=ids)
        req.min_offsets.offsets.update({int(p): int(o) for p, o in offs.items()})
        fut = stub.GetEmbeddings.future(req, timeout=a["probe_timeout_s"])

        def record(f: Any, k: int = k, due: float = due, sent: float = sent, ack: float = ack) -> None:
            end = time.time()
            code = f.code().name if f.code() is not grpc.StatusCode.OK else "OK"
            staleness = f.result().staleness_ms if code == "OK" else float("nan")
            rows[k] = [due - t0, (ack - sent) * 1000, (end - ack) * 1000, staleness, code]
            done.release()

        fut.add_done_callback(record)
    for _ in range(n):
        done.acquire(timeout=a["probe_timeout_s"] + 5)
    producer.close()
    ch.close()
    cpu_s = time.process_time() - c0
    q.put(("result", "probe", {"rows": [r for r in rows if r is not None], "markers": n, "cpu_s": cpu_s}))


def echo_server_proc(q: Any, stop: Any, max_workers: int) -> None:
    """The floor: a sync thread-pool gRPC server (as the gateway is) whose one method returns a constant."""
    _own_session()
    from concurrent import futures

    import grpc

    def echo(_req: bytes, _ctx: Any) -> bytes:
        return ECHO_REPLY

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        "clustergnn.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    q.put(("echo_port", port))
    stop.wait(3600)
    server.stop(0.5)


# --------------------------------------------------------------------------------------- cluster
def write_config(args: argparse.Namespace, bootstrap: str, path: Path) -> dict:
    """The one configuration: ``--config`` (or the defaults) with the embedded broker, the gateway on
    127.0.0.1 (any free port, plaintext: loopback only), and ``--dataset``/``--partitions`` when given."""
    from clustergnn.config import Config, read_file

    data = Config().to_dict()
    for section, values in (read_file(args.config) if args.config else {}).items():
        if section in data and isinstance(values, dict):
            data[section].update(values)
        else:
            data[section] = values
    data["kafka"].update(bootstrap=bootstrap, topic="bench-serving")
    data["gateway"].update(host="127.0.0.1", port=0, insecure_local=True, tls_cert=None, tls_key=None)
    data["gateway"].update(tokens_file=None, tokens=None, metrics_port=None)
    data["cluster"]["ray_address"] = None
    if args.dataset or not args.config:
        data["graph"]["dataset"] = args.dataset or "facebook-wosn-links"
    if args.partitions or not args.config:
        data["cluster"]["partitions"] = args.partitions or 4
    cfg = Config.from_dict(data)  # names what is wrong with it
    if cfg.cluster.partitioner != "hash":
        raise SystemExit("bench_serving produces with v mod P routing: cluster.partitioner must be 'hash'")
    if not cfg.graph.dataset:
        raise SystemExit("bench_serving needs graph.dataset (the initial graph and the stream)")
    path.write_text(json.dumps(cfg.to_dict(), indent=2))
    return cfg.to_dict()


def start_serve(cfg_path: Path, log_path: Path, timeout_s: float) -> tuple[subprocess.Popen, str]:
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "serve", "--config", str(cfg_path)],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop it (SIGTERM: it drains)
            cwd=ROOT,
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        m = re.search(r"clustergnn serving on (\S+)", log_path.read_text(errors="replace"))
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"clustergnn serve did not come up (exit {proc.poll()}); its log ends:\n{tail}")


def stop_serve(proc: subprocess.Popen) -> None:
    from actors.commands import SERVE_DRAIN_BOUND_S, descendants

    if proc.poll() is not None:
        return
    below = descendants(proc.pid)  # Ray's processes, started by this serve: ended if it cannot drain
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SERVE_DRAIN_BOUND_S + 10)
    except subprocess.TimeoutExpired:
        progress(f"serve (pid {proc.pid}) did not drain: killing it and its {len(below)} processes")
        for pid in [proc.pid, *below]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=10)


def proc_cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` so far (from /proc/<pid>/stat; gone processes count 0)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (float(f[11]) + float(f[12])) / tick  # utime, stime: fields 14 and 15
    return total


def read_dead_letters(bootstrap: str, topic: str, expect: int, timeout_s: float = 5.0) -> list[dict]:
    """The dead-letter topic's records (reason, detail, source partition and offset from their headers)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        parts = sorted(c.partitions_for_topic(topic) or [])
        c.assign([TopicPartition(topic, p) for p in parts])
        c.seek_to_beginning()
        got: list[dict] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < expect and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                for r in recs:
                    h = {k: v.decode(errors="replace") for k, v in (r.headers or [])}
                    got.append({k.removeprefix("dlq."): v for k, v in h.items()} | {"value_bytes": len(r.value or b"")})
        return got
    finally:
        c.close()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


# --------------------------------------------------------------------------------------- report
def summarize(res: dict, args: argparse.Namespace, extra: dict) -> dict:
    prod, rd, echo, probe = res["producer"], res["gateway"], res["echo"], res["probe"]
    acks = np.array([r[:5] for r in prod["acks"]], dtype=float).reshape(-1, 5)
    # the window the batches were offered in (n / BATCHES_PER_S), or longer if the last ack came later
    span = max(len(acks) / BATCHES_PER_S, float(acks[-1, 0] + acks[-1, 1] + acks[-1, 2]) if len(acks) else 0.0)
    muts, edges = float(acks[:, 3].sum()), float(acks[:, 4].sum())

    def reads(r: dict) -> dict:
        lat = np.array(r["latency_ms"], dtype=float)
        ok = lat[~np.isnan(lat)]
        total = len(lat)
        errs = {k: v for k, v in r["codes"].items() if k != "OK"}
        nerr = sum(errs.values()) + r["unsent"]
        out = {
            "requests": total,
            "ok": int(ok.size),
            "errors": errs,
            "unsent": r["unsent"],
            "error_rate": nerr / max(total, 1),
            "latency_ms": stats3(ok),
            "service_ms": stats3(np.array(r["service_ms"], dtype=float)[~np.isnan(lat)]),
        }
        st = np.array(r["staleness_ms"], dtype=float)
        if not np.isnan(st).all():
            out["reported_staleness_ms"] = stats3(st[~np.isnan(st)])
            out["bound_unmet"] = r.get("bound_unmet", 0)
        return out

    rows = probe["rows"]
    vis = np.array([r[2] for r in rows if r[4] == "OK"], dtype=float)
    pcodes: dict[str, int] = {}
    for r in rows:
        pcodes[r[4]] = pcodes.get(r[4], 0) + 1
    if probe.get("markers", len(rows)) > len(rows):
        pcodes["NO_ANSWER"] = probe["markers"] - len(rows)
    s = {
        "producer": {
            "offered_edge_mutations_per_s": args.rate,
            "edge_mutations": int(edges),
            "mutations": int(muts),
            "achieved_edge_mutations_per_s": edges / span,
            "achieved_mutations_per_s": muts / span,
            "send_late_ms_max": float(acks[:, 1].max() * 1000) if len(acks) else None,
            "ack_ms": stats3(acks[:, 2] * 1000),
        },
        "reads": reads(rd),
        "floor": reads(echo),
        "visible": {
            "markers": probe.get("markers", len(rows)),
            "visible": int(vis.size),
            "codes": pcodes,
            "latency_ms": stats3(vis),
            "marker_ack_ms": stats3([r[1] for r in rows]),
        },
        **extra,
    }
    return s


def verdicts(s: dict, busy: bool) -> list[tuple[str, bool]]:
    vis_p99 = s["visible"]["latency_ms"]["p99"]
    read_p99 = s["reads"]["latency_ms"]["p99"]
    floor_p99 = s["floor"]["latency_ms"]["p99"]
    vis_bound = 250.0 if busy else 100.0
    all_visible = s["visible"]["visible"] == s["visible"]["markers"] > 0
    out = [
        (
            f"producer kept the offered rate (achieved >= 95% of {s['producer']['offered_edge_mutations_per_s']:,.0f}"
            " edge mutations/s)",
            s["producer"]["achieved_edge_mutations_per_s"] >= 0.95 * s["producer"]["offered_edge_mutations_per_s"],
        ),
        (
            f"visible-latency p99 <= {vis_bound:.0f} ms (every marker visible)",
            all_visible and vis_p99 is not None and vis_p99 <= vis_bound,
        ),
    ]
    if floor_p99 is not None and floor_p99 > 10.0:
        out.append(
            (
                f"read p99 <= 1.2 x the trivial server's p99 ({floor_p99:.1f} ms > 10 ms in this window)",
                read_p99 is not None and read_p99 <= 1.2 * floor_p99,
            )
        )
    else:
        out.append(("read p99 <= 10 ms", read_p99 is not None and read_p99 <= 10.0))
    out.append(("0 valid records dead-lettered", s["cluster"].get("dead_letters", -1) == 0))
    if busy:
        out.append(("no read errors", s["reads"]["error_rate"] == 0))
    else:
        out.append(("read errors < 0.1%", s["reads"]["error_rate"] < 0.001))
    sustained = bool(all_visible and vis_p99 is not None and vis_p99 <= 500)
    out.append((f"sustained (visible p99 <= 500 ms) at this rate, P = {s['partitions']}", sustained))
    return out


def table(s: dict) -> str:
    def f(x: float | None, w: int = 8) -> str:
        return f"{x:>{w}.1f}" if x is not None else f"{'-':>{w}}"

    def errs(r: dict) -> str:
        e = dict(r["errors"])
        if r["unsent"]:
            e["unsent"] = r["unsent"]
        return ", ".join(f"{k} {v}" for k, v in e.items()) or "0"

    hdr = f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  n / errors"
    r, fl, v = s["reads"], s["floor"], s["visible"]
    lines = [
        hdr,
        "-" * len(hdr),
        f"{'read latency (from the due time)':34} {f(r['latency_ms']['p50'])} {f(r['latency_ms']['p99'])} "
        f"{f(r['latency_ms']['max'])}  {r['ok']:,}/{r['requests']:,} ok; errors {errs(r)}",
        f"{'  read service time (from send)':34} {f(r['service_ms']['p50'])} {f(r['service_ms']['p99'])} "
        f"{f(r['service_ms']['max'])}",
        f"{'trivial server (floor), same window':34} {f(fl['latency_ms']['p50'])} {f(fl['latency_ms']['p99'])} "
        f"{f(fl['latency_ms']['max'])}  {fl['ok']:,}/{fl['requests']:,} ok; errors {errs(fl)}",
        f"{'reported staleness of the answers':34} {f(r.get('reported_staleness_ms', {}).get('p50'))} "
        f"{f(r.get('reported_staleness_ms', {}).get('p99'))} {f(r.get('reported_staleness_ms', {}).get('max'))}  "
        f"bound not met in {r.get('bound_unmet', 0):,} answers",
        f"{'visible latency (markers, from ack)':34} {f(v['latency_ms']['p50'])} {f(v['latency_ms']['p99'])} "
        f"{f(v['latency_ms']['max'])}  {v['visible']}/{v['markers']} visible; "
        + ", ".join(f"{k} {n}" for k, n in v["codes"].items()),
    ]
    p = s["producer"]
    lines.append(
        f"\nproducer: {p['achieved_edge_mutations_per_s']:,.0f} edge mutations/s achieved of "
        f"{p['offered_edge_mutations_per_s']:,.0f} offered ({p['edge_mutations']:,} edge mutations, "
        f"{p['mutations']:,} with vertex adds); ack p50/p99 {p['ack_ms']['p50']:.1f}/{p['ack_ms']['p99']:.1f} ms, "
        f"latest send {p['send_late_ms_max']:.0f} ms behind schedule"
    )
    c = s["cluster"]
    lines.append(
        f"cluster: dead letters {c.get('dead_letters', -1):.0f}"
        + "".join(f" ({d.get('reason')}: {d.get('detail', '')[:120]})" for d in c.get("dead_letter_records", [])[:3])
        + f"; read error rate {r['error_rate'] * 100:.3f}%; "
        f"drained {c.get('drain_s', float('nan')):.2f} s after the producer's last ack; "
        f"round p50 {c.get('round_ms_p50', float('nan')):.1f} ms"
        + (
            f"; published to the replica {c['published_bytes_in_window'] / max(c['busy_rounds_in_window'], 1):,.0f}"
            " B per busy round"
            if c.get("published_bytes_in_window") is not None
            else ""
        )
        + "; machine CPU in the window "
        f"{s['machine']['cpu_busy_fraction'] * 100:.0f}% of {s['machine']['cores']} cores, load avg "
        f"{s['machine']['load_avg_1m_after']:.2f}"
    )
    lines.append(
        "CPU in the window (cores): "
        + ", ".join(f"{k} {v:.2f}" for k, v in s["machine"].get("cpu_cores_by_process", {}).items())
    )
    return "\n".join(lines)


def plot(res: dict, s: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for kind, label, color in (("echo", "trivial server (floor)", "tab:grey"), ("gateway", "gateway read", "tab:blue")):
        r = res[kind]
        a1.plot(r["due_s"], r["latency_ms"], ".", ms=1.5, color=color, label=label)
    a1.axhline(10, color="r", ls=":", lw=1, label="10 ms")
    a1.set(yscale="log", ylabel="read latency from due (ms)")
    a1.legend(fontsize=7, loc="upper right")
    rows = [r for r in res["probe"]["rows"] if r[4] == "OK"]
    a2.plot([r[0] for r in rows], [r[2] for r in rows], "o", ms=3, color="tab:red", label="visible latency (marker)")
    rd = res["gateway"]
    a2.plot(rd["due_s"], rd["staleness_ms"], ".", ms=1, color="tab:green", alpha=0.5, label="reported staleness")
    a2.axhline(250 if s["busy"] else 100, color="r", ls=":", lw=1, label="target p99")
    a2.set(yscale="log", ylabel="ms")
    a2.legend(fontsize=7, loc="upper right")
    acks = np.array([r[:5] for r in res["producer"]["acks"]], dtype=float).reshape(-1, 5)
    if len(acks):
        t = acks[:, 0] + acks[:, 1] + acks[:, 2]
        sec = np.floor(t).astype(int)
        per_s = np.bincount(sec, weights=acks[:, 4])
        a3.step(np.arange(len(per_s)) + 1, per_s, where="pre", label="edge mutations acked / s")
    a3.axhline(s["producer"]["offered_edge_mutations_per_s"], color="grey", ls=":", lw=1, label="offered")
    a3.set(xlabel="time in the window (s)", ylabel="edge mutations / s")
    a3.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"bench_serving: {s['dataset']}, P = {s['partitions']}, {s['producer']['offered_edge_mutations_per_s']:,.0f} "
        f"edge mut/s + {s['read_rate']:,.0f} reads/s{' + busy loop per core' if s['busy'] else ''}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> dict:
    import multiprocessing as mp

    from actors.commands import wait_healthy
    from actors.gateway.client import GatewayClient
    from clustergnn.datasets import load
    from streams.broker import EmbeddedBroker

    ctx = mp.get_context("spawn")
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    procs: list[Any] = []
    busy: list[subprocess.Popen] = []
    serve = None
    echo_stop = ctx.Event()
    t_begin = time.time()
    with EmbeddedBroker(port=0) as broker:
        try:
            cfg = write_config(args, broker.bootstrap, work / "config.json")
            P, dataset = cfg["cluster"]["partitions"], cfg["graph"]["dataset"]
            dim = cfg["model"]["in_dim"]
            progress(f"broker {broker.bootstrap}; starting clustergnn serve (P = {P}, {dataset}); log {work}/serve.log")
            serve, target = start_serve(work / "config.json", work / "serve.log", args.startup_timeout_s)
            progress(f"gateway {target} up in {time.time() - t_begin:.0f}s (serve pid {serve.pid})")
            # "serving on" is the gateway's start; reads fail (UNAVAILABLE) until the cluster's start-up replay
            # is over, which on a slow machine can still be running here: wait for healthy, as a readiness probe
            wait_healthy(target, args.startup_timeout_s, serve)
            progress(f"cluster healthy after {time.time() - t_begin:.0f}s")
            ds = load(dataset)
            np.save(work / "ids.npy", ds.initial_vertices)
            q = ctx.Queue()
            go = ctx.Event()
            start = ctx.Value("d", 0.0)
            echo = ctx.Process(target=echo_server_proc, args=(q, echo_stop, args.echo_workers), daemon=True)
            echo.start()
            procs.append(echo)
            msg = q.get(timeout=60)
            echo_target = f"127.0.0.1:{msg[1]}"
            a = {
                "bootstrap": broker.bootstrap,
                "topic": cfg["kafka"]["topic"],
                "partitions": P,
                "dataset": dataset,
                "dim": dim,
                "rate": args.rate,
                "seconds": args.seconds,
                "read_rate": args.read_rate,
                "read_staleness_ms": args.read_staleness_ms,
                "answer_now": not args.wait_reads,
                "read_timeout_s": args.read_timeout_s,
                "max_in_flight": args.max_in_flight,
                "probe_timeout_s": args.probe_timeout_s,
                "target": target,
                "echo_target": echo_target,
                "ids_file": str(work / "ids.npy"),
                "marker_base": int(ds.all_vertex_ids().max()) + 1,
            }
            with GatewayClient(target) as c:
                st0 = c.status(timeout_s=30)
            if args.busy:
                for _ in range(os.cpu_count() or 1):
                    busy.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True))
                progress(f"--busy: {len(busy)} busy-loop processes, pids {[b.pid for b in busy]}")
            loads = [
                ctx.Process(target=producer_proc, args=(q, go, start, a), daemon=True),
                ctx.Process(target=reader_proc, args=(q, go, start, a, "gateway"), daemon=True),
                ctx.Process(target=reader_proc, args=(q, go, start, a, "echo"), daemon=True),
                ctx.Process(target=probe_proc, args=(q, go, start, a), daemon=True),
            ]
            for p in loads:
                p.start()
            procs += loads
            ready: set[str] = set()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while len(ready) < len(loads):
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in loads):
                    raise RuntimeError(f"load processes not ready in time (ready: {sorted(ready)})")
                try:
                    msg = q.get(timeout=1)
                except Exception:  # noqa: BLE001 - queue.Empty
                    continue
                if msg[0] == "ready":
                    ready.add(msg[1])
            from actors.commands import descendants

            groups = {
                "cluster (serve: driver, gateway, Ray, owners)": [serve.pid, *descendants(serve.pid)],
                "broker": [broker.pid],
                "trivial server": [echo.pid],
                "busy loops": [b.pid for b in busy],
            }
            start.value = time.time() + 0.5
            go.set()  # each load process starts its clock at start.value
            _sleep_until(start.value)
            cpu0, pcpu0, t_go = cpu_times(), {k: proc_cpu_s(v) for k, v in groups.items()}, time.time()
            progress(f"window: {args.seconds:.0f}s, {args.rate:,.0f} edge mutations/s + {args.read_rate:,.0f} reads/s")
            res: dict[str, dict] = {}
            cpu1, t_prod_end = None, None
            deadline = time.monotonic() + args.seconds * 2 + args.probe_timeout_s + 60
            while len(res) < len(loads):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"load processes did not finish in time (finished: {sorted(res)})")
                try:
                    msg = q.get(timeout=1)
                except Exception:  # noqa: BLE001 - queue.Empty
                    if any(p.exitcode not in (None, 0) for p in loads):
                        raise RuntimeError("a load process failed (its traceback is above)") from None
                    continue
                if msg[0] == "result":
                    res[msg[1]] = msg[2]
                    if msg[1] == "producer":
                        cpu1, t_prod_end = cpu_times(), time.time()
                        pcpu1 = {k: proc_cpu_s(v) for k, v in groups.items()}
            if cpu1 is None:
                cpu1, t_prod_end = cpu_times(), time.time()
                pcpu1 = {k: proc_cpu_s(v) for k, v in groups.items()}
            window_s = max(t_prod_end - t_go, 1e-9)
            cores = {k: (pcpu1[k] - pcpu0[k]) / window_s for k in groups if groups[k]}
            for k, name in (("producer", "producer"), ("gateway", "gateway reader"), ("echo", "floor reader")):
                cores[name] = res[k]["cpu_s"] / window_s
            cores["marker probe"] = res["probe"]["cpu_s"] / window_s
            for b in busy:
                b.kill()
            progress("window over; waiting for the cluster to apply everything produced")
            with GatewayClient(target) as c:
                try:
                    c.get_embeddings(
                        [a["marker_base"]], min_offsets=res["producer"]["last_offsets"], timeout_s=args.drain_timeout_s
                    )
                    drain_s = time.time() - t_prod_end
                except Exception as exc:  # noqa: BLE001 - reported
                    progress(f"not drained in {args.drain_timeout_s:.0f}s: {exc}")
                    drain_s = float("nan")
                st1 = c.status(timeout_s=30)
            n_dead = int(st1.extra.get("dead_letters", 0))
            dlq = cfg["kafka"]["dead_letter_topic"] or f"{a['topic']}.dlq"
            dead = read_dead_letters(broker.bootstrap, dlq, n_dead) if n_dead > 0 else []
            for d in dead[:5]:
                progress(f"dead letter: {d}")
            extra = {
                "dataset": dataset,
                "partitions": P,
                "read_rate": args.read_rate,
                "busy": bool(args.busy),
                "cluster": {
                    "dead_letters": st1.extra.get("dead_letters", -1.0),
                    "dead_letters_before_window": st0.extra.get("dead_letters", -1.0),
                    "dead_letter_records": dead[:50],
                    "drain_s": drain_s,
                    "round_ms_p50": st1.extra.get("round_ms_p50"),
                    "rounds": st1.extra.get("rounds"),
                    "busy_rounds_in_window": st1.extra.get("busy_rounds", 0.0) - st0.extra.get("busy_rounds", 0.0),
                    # what owners published to the gateway's replica (None: a cluster that does not count it)
                    "published_bytes_in_window": (
                        st1.extra["published_bytes"] - st0.extra["published_bytes"]
                        if "published_bytes" in st1.extra
                        else None
                    ),
                    "healthy": st1.healthy,
                },
                "machine": {
                    "cores": os.cpu_count(),
                    "cpu_busy_fraction": (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1.0),
                    "load_avg_1m_after": os.getloadavg()[0],
                    "busy_processes": len(busy),
                    "window_s": window_s,
                    "cpu_cores_by_process": cores,
                },
                "config": cfg,
            }
            return {"results": res, "summary": summarize(res, args, extra)}
        except Exception:
            log = work / "serve.log"
            if log.exists():  # what the cluster said, beside our traceback: a failed run explains itself
                progress(f"failed; {log} ends:\n{log.read_text(errors='replace')[-4000:]}")
            raise
        finally:
            for b in busy:
                if b.poll() is None:
                    b.kill()
                b.wait()
            echo_stop.set()
            for p in procs:
                p.join(timeout=2)
                if p.is_alive():
                    p.terminate()
                    p.join(timeout=5)
            if serve is not None:
                progress("stopping serve")
                stop_serve(serve)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=20_000, help="edge mutations/s produced (default %(default)s)")
    p.add_argument("--read-rate", type=float, default=1000, help="gRPC reads/s of 1 id (default %(default)s)")
    p.add_argument("--seconds", type=float, default=30, help="the window (default %(default)s)")
    p.add_argument("--partitions", type=int, default=None, help="partition owners (default 4, or --config's)")
    p.add_argument("--dataset", default=None, help="default facebook-wosn-links, or --config's graph.dataset")
    p.add_argument("--config", type=Path, default=None, help="a JSON/YAML config as the base (docs/config.md)")
    p.add_argument("--busy", action="store_true", help="one busy-loop process per core during the window")
    p.add_argument("--read-staleness-ms", type=float, default=1000.0, help="max_staleness_ms of every read")
    p.add_argument(
        "--wait-reads",
        action="store_true",
        help="reads wait for their bound (default: answer_now, the answer says whether the bound held)",
    )
    p.add_argument("--read-timeout-s", type=float, default=2.0, help="gRPC deadline of a read")
    p.add_argument("--max-in-flight", type=int, default=1000, help="reader's outstanding calls cap")
    p.add_argument(
        "--probe-timeout-s",
        type=float,
        default=5.0,
        help="how long a marker may take (gateway.default_deadline_s caps it)",
    )
    p.add_argument("--echo-workers", type=int, default=32, help="the trivial server's threads (the gateway's default)")
    p.add_argument("--startup-timeout-s", type=float, default=600)
    p.add_argument("--drain-timeout-s", type=float, default=60)
    p.add_argument("--json", type=Path, default=None, help="default results/bench_serving[_busy].json")
    args = p.parse_args(argv)
    if args.json is None:
        args.json = ROOT / "results" / ("bench_serving_busy.json" if args.busy else "bench_serving.json")
    if min(args.rate, args.read_rate, args.seconds) <= 0:
        p.error("--rate, --read-rate and --seconds must be > 0")

    def on_term(signum: int, _frame: object) -> None:  # SIGTERM ends us like Ctrl-C: the finally blocks run
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_term)
    out = run(args)
    s = out["summary"]
    print(
        f"\nbench_serving: {s['dataset']}, P = {s['partitions']}, 2-layer GraphSAGE-mean "
        f"{'-'.join(str(s['config']['model'][k]) for k in ('in_dim', 'hidden', 'out_dim'))}; "
        f"{args.rate:,.0f} edge mutations/s + {args.read_rate:,.0f} reads/s of 1 id "
        f"(max_staleness_ms {args.read_staleness_ms:.0f}, {'waiting' if args.wait_reads else 'answer_now'}), "
        f"{args.seconds:.0f} s{'; one busy-loop process per core' if args.busy else ''}\n"
    )
    print(table(s))
    checks = verdicts(s, args.busy)
    s["targets"] = [{"target": t, "met": ok} for t, ok in checks]
    s["pass"] = all(ok for t, ok in checks if not t.startswith("sustained"))
    print()
    for t, ok in checks:
        print(f"  {'ok  ' if ok else 'MISS'} {t}")
    print(f"{'PASS' if s['pass'] else 'FAIL'}: {'busy' if args.busy else 'normal'} targets")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    s["meta"] = {"argv": sys.argv[1:], "python": platform.python_version(), "unix_time": time.time()}
    args.json.write_text(json.dumps({"summary": s, "series": out["results"]}, default=str))
    png = args.json.with_suffix(".png")
    print(f"wrote {args.json}" + (f" and {png}" if plot(out["results"], s, png) else " (no matplotlib: no plot)"))
    return 0 if s["pass"] else EXIT_MISSED


if __name__ == "__main__":
    sys.exit(main())
