"""Replay a stream of mutation batches into Kafka at a target rate (``clustergnn produce``).

The clock and sleep are injected, so tests of the pacing never sleep.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clustergnn.mutations import MutationBatch
from streams.producer import MutationProducer, SendResult

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT_BATCHES = 4


@dataclass(frozen=True)
class ReplayReport:
    """What a replay wrote: counts, offset range per partition ``(first, last)``, achieved rate."""

    mutations: int
    records: int
    value_bytes: int
    elapsed_s: float
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def mutations_per_s(self) -> float:
        return self.mutations / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def lines(self) -> list[str]:
        out = [
            f"produced {self.mutations} mutations in {self.records} records ({self.value_bytes / 1e6:.2f} MB) "
            f"in {self.elapsed_s:.2f} s: {self.mutations_per_s:,.0f} mutations/s, "
            f"{self.value_bytes / 1e6 / max(self.elapsed_s, 1e-9):.1f} MB/s"
        ]
        for p, (first, last) in sorted(self.offsets.items()):
            out.append(f"  partition {p}: offsets {first}..{last} ({last - first + 1} records)")
        return out


class Progress:
    """A minimal progress line on stderr (tqdm when installed)."""

    def __init__(self, total: int | None, unit: str = "mutations", enabled: bool = True) -> None:
        self._bar = None
        self._enabled = enabled
        self._done = 0
        self._total = total
        self._last_print_s = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=f" {unit}", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            self._bar = None

    def update(self, n: int) -> None:
        self._done += n
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last_print_s >= 1.0:
            self._last_print_s = now
            total = f"/{self._total}" if self._total else ""
            print(f"\r{self._done}{total} mutations", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._enabled:
            print(file=sys.stderr)


def replay(
    producer: MutationProducer,
    batches: Iterable[MutationBatch],
    *,
    rate_per_s: float | None = None,
    progress: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReplayReport:
    """Send ``batches`` in order; with ``rate_per_s``, no faster than that many mutations per second.

    Pacing is by cumulative count (batch ``i`` leaves no earlier than ``sent / rate`` after the
    start), so short stalls are caught up without bursts above the average.  Up to
    :data:`MAX_IN_FLIGHT_BATCHES` batches are in flight at once; order within a partition holds
    regardless (the producer is idempotent).
    """
    if rate_per_s is not None and rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    start = clock()
    sent = records = value_bytes = 0
    offsets: dict[int, tuple[int, int]] = {}
    pending: deque[SendResult] = deque()

    def settle(result: SendResult) -> None:
        for p, (first, last) in result.ranges().items():
            old = offsets.get(p)
            offsets[p] = (first if old is None else min(old[0], first), last if old is None else max(old[1], last))

    for batch in batches:
        if rate_per_s is not None:
            due = start + sent / rate_per_s
            now = clock()
            if due > now:
                sleep(due - now)
        result = producer.send_async(batch)
        pending.append(result)
        sent += result.mutations
        records += result.records
        value_bytes += result.value_bytes
        if len(pending) > MAX_IN_FLIGHT_BATCHES:
            settle(pending.popleft())
        if progress is not None:
            progress(result.mutations)
    producer.flush()
    while pending:
        settle(pending.popleft())
    return ReplayReport(sent, records, value_bytes, clock() - start, offsets)
