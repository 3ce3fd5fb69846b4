"""``clustergnn query`` and ``clustergnn status``: talk to a running gateway.

Connection options (both commands): ``--target`` (default ``$CLUSTERGNN_GATEWAY`` or
127.0.0.1:50051), ``--token``/``--token-file`` (default ``$CLUSTERGNN_TOKEN``), ``--root-cert`` (CA
PEM; turns TLS on) or ``--tls`` (system roots).  Without either TLS option the connection is
plaintext, which the client only allows with a token towards a loopback target.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from actors.gateway.client import GatewayClient
from actors.gateway.env import client_defaults, parse_tokens
from clustergnn.errors import ClusterGNNError
from clustergnn.serving import ClusterStatus, ReadResult

DEFAULT_TARGET = "127.0.0.1:50051"


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--name",
        default=None,
        help="a local cluster `clustergnn up` started: its gateway, token and certificate (see `clustergnn clusters`)",
    )
    p.add_argument(
        "--target",
        default=None,
        help=f"gateway host:port (default: $CLUSTERGNN_GATEWAY, local cluster 'default' if up, or {DEFAULT_TARGET})",
    )
    p.add_argument("--token", default=None, help="bearer token (default: $CLUSTERGNN_TOKEN)")
    p.add_argument("--token-file", type=Path, default=None, help="file whose first token is used")
    p.add_argument("--root-cert", type=Path, default=None, help="CA certificate (PEM) of the gateway; enables TLS")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--timeout-s", type=float, default=5.0, help="call deadline in seconds (default: %(default)s)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="print embeddings of vertices, with their freshness")
    q.add_argument("ids", nargs="+", type=int, metavar="ID", help="vertex ids")
    q.add_argument(
        "--layer", type=int, default=None, help="layer: 0..L-1 (layer i's output) or -1 = the last (default)"
    )
    q.add_argument("--input-features", action="store_true", help="print the stored input features instead")
    q.add_argument("--max-staleness-ms", type=float, default=None, help="freshness bound in ms (default: none)")
    q.add_argument(
        "--answer-now",
        action="store_true",
        help="with --max-staleness-ms: answer at once, saying whether the bound held, instead of waiting for it",
    )
    q.add_argument("--values", type=int, default=4, help="embedding values shown per vertex (default: %(default)s)")
    _connection_args(q)
    q.set_defaults(func=cmd_query)
    s = sub.add_parser("status", help="print partitions, watermarks, lag and rates")
    _connection_args(s)
    s.set_defaults(func=cmd_status)


def _client(args: argparse.Namespace) -> GatewayClient:
    from actors.commands import DEFAULT_NAME, credentials, load_state

    env_target, _ = client_defaults()
    if args.name is not None or (args.target is None and env_target is None):
        state = load_state(args.name or DEFAULT_NAME)
        if state is None and args.name is not None:
            raise ValueError(f"no local cluster named {args.name!r} (`clustergnn clusters` lists them)")
        if state is not None:
            creds = credentials(state)
            token = args.token or creds.get("token")
            root = args.root_cert or creds.get("root_cert")
            return GatewayClient(args.target or state["target"], token=token, root_cert=root, tls=args.tls or None)
    args.target = args.target or env_target or DEFAULT_TARGET
    token = args.token
    if token is None and args.token_file is not None:
        tokens = parse_tokens(args.token_file.read_text())
        token = tokens[0] if tokens else None
    if token is None:
        token = client_defaults()[1]
    return GatewayClient(args.target, token=token, root_cert=args.root_cert, tls=args.tls or None)


def abbreviate(row: np.ndarray, shown: int) -> str:
    """``[0.1234, -0.5, ..., 0.9]`` with at most ``shown`` values (half from each end)."""
    vals = [f"{v:.4f}" for v in row.tolist()]
    if len(vals) > shown:
        head = max(1, math.ceil(shown / 2))
        vals = [*vals[:head], "...", *vals[len(vals) - (shown - head) :]] if shown > head else [*vals[:head], "..."]
    return "[" + ", ".join(vals) + "]"


def format_read(ids: list[int], res: ReadResult, shown: int = 4, *, show_bound: bool = False) -> str:
    """The answer as lines; ``show_bound`` adds whether the bound held (an ``answer_now`` read's ``bound_met``)."""
    wm = ", ".join(f"{p}:{o}" for p, o in sorted(res.watermark.items()))
    what = "input features" if res.layer < 0 else f"layer {res.layer}"
    lines = [
        f"{what}  staleness {res.staleness_ms:.1f} ms  watermark {{{wm}}}  dim {res.embeddings.shape[1]}"
        + (f"  model {res.model_digest[:12]}" if res.model_digest else "")
        + (("  bound met" if res.bound_met else "  bound NOT met") if show_bound else "")
    ]
    width = max(len(str(v)) for v in ids)
    for v, ver, row in zip(ids, res.versions.tolist(), res.embeddings):
        lines.append(f"  {v:>{width}}  v{ver:<4} {abbreviate(row, shown)}")
    return "\n".join(lines)


def _mb(n: int | None) -> str:
    """Bytes as MB for the status table; "-" when unknown."""
    return "-" if n is None else f"{n / 1e6:.1f}"


def format_status(st: ClusterStatus) -> str:
    wm = ", ".join(f"{p}:{o}" for p, o in sorted(st.watermark.items()))
    lines = [
        f"{'healthy' if st.healthy else 'UNHEALTHY'}  layers {st.num_layers} dims {st.embedding_dims}"
        f"  watermark {{{wm}}}",
        *([f"  model: {st.model.describe()}"] if st.model is not None else []),
        f"  {'part':>4} {'alive':>5} {'vertices':>9} {'lag':>8} {'applied':>10} {'mut/s':>9} "
        f"{'cache MB':>9} {'struct MB':>9} {'RSS MB':>8}  watermark",
    ]
    for p in st.partitions:
        pwm = ", ".join(f"{k}:{o}" for k, o in sorted(p.watermark.items()))
        mem = p.memory_bytes
        lines.append(
            f"  {p.partition:>4} {'yes' if p.alive else 'NO':>5} {p.num_vertices:>9} {p.lag:>8} "
            f"{p.applied_mutations:>10} {p.mutations_per_s:>9.1f} {_mb(mem.get('cache')):>9} "
            f"{_mb(mem.get('structure')):>9} {_mb(p.rss_bytes or None):>8}  {{{pwm}}}"
        )
    lines += durability_lines(st.extra)
    for k, v in sorted(st.extra.items()):
        lines.append(f"  {k}: {v:g}")
    return "\n".join(lines)


def durability_lines(x: dict[str, float]) -> list[str]:
    """What an operator looks at first: recovery in progress, the last snapshot, the broker, the replay."""
    out = []
    if x.get("recovering"):
        out.append(
            f"RECOVERING: {x.get('recovering_partitions', 0):.0f} owner(s) re-created, every owner replaying from "
            f"the last snapshot for {x.get('recovery_elapsed_s', 0):.1f}s (final-layer reads served at the old "
            "watermark meanwhile)"
        )
    elif x.get("replaying"):
        out.append("REPLAYING the log after a start: serving once every partition has caught up")
    if x.get("broker_silent_s", 0) >= 5:
        out.append(f"BROKER SILENT for {x['broker_silent_s']:.0f}s: serving what is applied, staleness growing")
    if "snapshot_last_id" in x:
        if x["snapshot_last_id"] >= 0:
            out.append(
                f"last snapshot {x['snapshot_last_id']:.0f}: round {x['snapshot_last_round']:.0f}, "
                f"{x['snapshot_age_s']:.1f}s ago, {x['snapshot_size_bytes'] / 1e6:.1f} MB, "
                f"took {x['snapshot_duration_s']:.2f}s (stalled rounds {x['snapshot_stall_ms']:.0f} ms); "
                f"{x['snapshots_committed']:.0f} taken, {x['snapshot_failures']:.0f} failed"
            )
        else:
            out.append(f"no snapshot taken yet ({x.get('snapshot_failures', 0):.0f} failed)")
    if x.get("recoveries"):
        out.append(
            f"recoveries {x['recoveries']:.0f} (owners re-created {x.get('owner_restarts', 0):.0f}), "
            f"last {x['recovery_last_s']:.1f}s, max {x['recovery_max_s']:.1f}s"
        )
    return ["  " + line for line in out]


def _fail(e: Exception, out: TextIO) -> int:
    code = getattr(e, "code", None)
    name = code().name if callable(code) else type(e).__name__
    details = e.details() if callable(getattr(e, "details", None)) else str(e)
    print(f"error: {name}: {details}", file=out)
    return 1


def cmd_query(args: argparse.Namespace) -> int:
    import grpc

    try:
        with _client(args) as c:
            res = c.get_embeddings(
                args.ids,
                layer=args.layer,
                max_staleness_ms=args.max_staleness_ms,
                timeout_s=args.timeout_s,
                input_features=args.input_features,
                answer_now=args.answer_now,
            )
    except (ClusterGNNError, grpc.RpcError, ValueError, OSError) as e:
        return _fail(e, sys.stderr)
    print(format_read(args.ids, res, args.values, show_bound=args.answer_now))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    try:
        with _client(args) as c:
            st = c.status(timeout_s=args.timeout_s)
    except (ClusterGNNError, grpc.RpcError, ValueError, OSError) as e:
        return _fail(e, sys.stderr)
    print(format_status(st))
    return 0
