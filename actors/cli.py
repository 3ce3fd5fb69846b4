"""The ``clustergnn`` command line.  Each layer contributes its sub-commands through ``add_commands``."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clustergnn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and the libraries' INFO logs")
    sub = parser.add_subparsers(dest="command", required=True)
    from streams import cli as streams_cli

    streams_cli.add_commands(sub)
    from actors.gateway import cli as gateway_cli

    gateway_cli.add_commands(sub)
    from actors import commands, demo

    commands.add_commands(sub)
    demo.add_commands(sub)
    return parser


OWN_LOGGERS = ("clustergnn", "actors", "streams")
"""Our own loggers: INFO in ``serve`` (its log is an operator's), WARNING elsewhere unless ``-v``.  Every
library (kafka-python's connection chatter, Ray, gRPC, urllib3, numba) stays at WARNING unless ``-v``."""


def configure_logging(command: str, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose and command == "serve":
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    if verbose:  # -v: our DEBUG lines, and the libraries' INFO (not their DEBUG floods)
        for name in ("kafka", "ray", "grpc", "urllib3", "numba", "matplotlib", "asyncio", "botocore"):
            logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.command, args.verbose)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
