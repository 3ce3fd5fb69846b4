"""Replay pacing (``clustergnn produce --rate``) with an injected clock: no broker, no sleeping."""

from __future__ import annotations

import numpy as np
import pytest

from clustergnn.mutations import MutationBatch
from streams.producer import SendResult
from streams.replay import ReplayReport, replay


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now_s += s


class FakeProducer:
    """Records what was sent and when; every batch 'takes' ``cost_s`` of the fake clock."""

    def __init__(self, clock: FakeClock, cost_s: float = 0.0) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.sent_at: list[tuple[float, int]] = []
        self.flushed = False

    def send_async(self, batch: MutationBatch) -> SendResult:
        self.sent_at.append((self.clock.now_s, len(batch)))
        self.clock.now_s += self.cost_s
        return SendResult(records=1, mutations=len(batch), value_bytes=17 * len(batch))

    def flush(self) -> None:
        self.flushed = True


def batches(n: int, size: int) -> list[MutationBatch]:
    return [MutationBatch.add_edges(np.arange(size), np.arange(size)) for _ in range(n)]


def test_rate_spaces_batches_by_cumulative_count() -> None:
    clock = FakeClock()
    prod = FakeProducer(clock)
    report = replay(prod, batches(5, 100), rate_per_s=1000.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert [t for t, _ in prod.sent_at] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert report.mutations == 500 and report.records == 5 and prod.flushed
    assert isinstance(report, ReplayReport) and report.elapsed_s == pytest.approx(0.4)


def test_slow_sends_are_caught_up_without_extra_sleeping() -> None:
    clock = FakeClock()
    prod = FakeProducer(clock, cost_s=0.15)  # slower than the 0.1 s per batch the rate allows
    replay(prod, batches(4, 100), rate_per_s=1000.0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.sleeps == []


def test_no_rate_never_sleeps_and_rejects_bad_rates() -> None:
    clock = FakeClock()
    replay(FakeProducer(clock), batches(3, 10), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.sleeps == []
    with pytest.raises(ValueError, match="rate_per_s must be > 0, got 0"):
        replay(FakeProducer(clock), batches(1, 1), rate_per_s=0, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
