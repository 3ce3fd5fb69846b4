#!/usr/bin/env python3
"""Kubernetes exec probe for the clustergnn gateway: one ``grpc.health.v1.Health/Check`` over TLS.

Installed in the image as ``clustergnn-healthcheck`` (k8s/Dockerfile).  It exists because the
kubelet's native ``grpc:`` probe speaks plaintext only (Kubernetes 1.37 adds ``grpc.mode: TLS``),
while the gateway refuses to bind a non-loopback host without TLS (docs/gateway.md, Security).

The gateway's Health service needs no bearer token.  The certificate is verified against the first
``--root-cert`` file that exists (``ca.crt`` of the TLS Secret when the issuer provides one, else
the self-signed ``tls.crt`` itself), for the name ``--server-name`` (the Service's DNS name, which
the certificate must carry for in-cluster clients anyway).

Exit status: 0 healthy (SERVING; any answer with ``--any-status``), 1 answered but not SERVING,
2 no answer (not listening yet, TLS failure, timeout).

    clustergnn-healthcheck --service clustergnn.v1.EmbeddingService \
        --root-cert /etc/clustergnn/tls/ca.crt --root-cert /etc/clustergnn/tls/tls.crt \
        --server-name clustergnn-gateway.clustergnn.svc

The head's readiness asks ``clustergnn.v1.EmbeddingService`` (SERVING only while every partition owner
is alive and caught up: NOT_SERVING during a recovery), its startup and liveness probes
``clustergnn.v1.AdminService`` (SERVING while the gateway runs), so a recovery makes the pod not ready
and never restarts it (k8s/README.md, "Health, readiness, probes").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1
EXIT_UNREACHABLE = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clustergnn-healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--address", default="127.0.0.1:50051", help="gateway host:port (default %(default)s)")
    p.add_argument("--service", default="", help="health service name; '' = the whole server (default)")
    p.add_argument(
        "--root-cert",
        action="append",
        default=[],
        metavar="PEM",
        help="trusted certificate(s); the first existing file is used (repeatable)",
    )
    p.add_argument("--server-name", default=None, help="name to verify the certificate against")
    p.add_argument("--plaintext", action="store_true", help="no TLS (only for a gateway with insecure_local)")
    p.add_argument("--any-status", action="store_true", help="healthy if the server answers at all (liveness)")
    p.add_argument("--timeout-s", type=float, default=3.0, help="deadline of the whole check (default %(default)s)")
    return p


def _channel(args: argparse.Namespace):  # -> grpc.Channel
    import grpc

    if args.plaintext:
        return grpc.insecure_channel(args.address)
    existing = [Path(p) for p in args.root_cert if Path(p).is_file()]
    if args.root_cert and not existing:
        raise FileNotFoundError(f"none of the --root-cert files exist: {args.root_cert}")
    roots = existing[0].read_bytes() if existing else None  # None: the system roots
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, grpc.ssl_channel_credentials(root_certificates=roots), options=options)


def check(args: argparse.Namespace) -> tuple[int, str]:
    """(exit status, one line saying why)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        channel = _channel(args)
    except OSError as e:
        return EXIT_UNREACHABLE, f"unhealthy: {e}"
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s
            )
        except grpc.RpcError as e:
            return EXIT_UNREACHABLE, f"unhealthy: {e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status == health_pb2.HealthCheckResponse.SERVING or args.any_status:
        return EXIT_SERVING, f"healthy: {status}"
    return EXIT_NOT_SERVING, f"unhealthy: {status}"


def main(argv: list[str] | None = None) -> int:
    code, line = check(build_parser().parse_args(argv))
    print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
