"""``clustergnn produce`` and ``clustergnn broker`` (filled in by the Kafka stream work)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    return None
