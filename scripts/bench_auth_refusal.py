#!/usr/bin/env python
"""How an unauthenticated 60 MiB ``Apply`` is refused: time until UNAUTHENTICATED and the process's memory
growth, with today's refusing handler (never reads the body) against the previous one (a unary handler:
gRPC receives and parses the whole body first), in one run.  A gateway over the test fake on 127.0.0.1;
client and server share this process, so RSS covers both (the request is built before measuring).

    python scripts/bench_auth_refusal.py [--rounds 3]

Prints a table and writes results/bench_auth_refusal.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from actors.gateway import auth, convert  # noqa: E402
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc  # noqa: E402
from actors.gateway.server import GatewayServer  # noqa: E402
from clustergnn import MutationBatch  # noqa: E402
from clustergnn.config import GatewayConfig  # noqa: E402
from tests.gateway.fakes import FakeBackend  # noqa: E402

LIMIT = 128 * 2**20


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def unary_refusal(handler, reason):  # noqa: ANN001 - the handler before this change, for the baseline
    def deny(_request, context):  # noqa: ANN001
        context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    return grpc.unary_unary_rpc_method_handler(
        deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


def measure(req, label: str) -> list[dict]:  # noqa: ANN001
    cfg = GatewayConfig(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        tokens=("tok-0123456789abcdef",),
        insecure_local=True,  # tokens without TLS, on loopback
        max_message_bytes=LIMIT,
    )
    gw = GatewayServer(FakeBackend(num_vertices=16, in_dim=64), cfg).start()
    out = []
    with grpc.insecure_channel(gw.target, options=[("grpc.max_send_message_length", LIMIT)]) as ch:
        stub = pb_grpc.MutationServiceStub(ch)
        for who, md in (("no token", ()), ("wrong token", (("authorization", "Bearer nope"),))):
            base, t = rss_mb(), time.perf_counter()
            code = "OK"
            try:
                stub.Apply(req, timeout=30, metadata=md)
            except grpc.RpcError as e:
                code = e.code().name
            out.append(
                {
                    "handler": label,
                    "call": who,
                    "code": code,
                    "ms": (time.perf_counter() - t) * 1000,
                    "rss_growth_mb": rss_mb() - base,
                }
            )
    gw.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    n = 230_000  # update_features of width 64: ~60 MiB of Arrow
    req = convert.batch_to_request(MutationBatch.update_features(np.arange(n) % 16, torch.ones(n, 64)))
    print(f"request: {len(req.arrow_ipc) / 2**20:.0f} MiB", flush=True)
    rows: list[dict] = []
    current = auth._denying_handler
    for r in range(args.rounds):
        auth._denying_handler = current
        rows += measure(req, "refuse before reading (now)")
        auth._denying_handler = unary_refusal
        rows += measure(req, "read, parse, refuse (before)")
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    auth._denying_handler = current
    print(f"\n{'handler':<30} {'call':<12} {'code':<16} {'ms':>7} {'RSS +MB':>8}")
    for x in rows:
        print(f"{x['handler']:<30} {x['call']:<12} {x['code']:<16} {x['ms']:>7.0f} {x['rss_growth_mb']:>8.0f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_auth_refusal.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'bench_auth_refusal.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
