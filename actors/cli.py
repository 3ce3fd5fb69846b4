"""The ``clustergnn`` command line.  Each layer contributes its sub-commands through ``add_commands``."""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clustergnn", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    from streams import cli as streams_cli

    streams_cli.add_commands(sub)
    from actors.gateway import cli as gateway_cli

    gateway_cli.add_commands(sub)
    from actors import commands, demo

    commands.add_commands(sub)
    demo.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
