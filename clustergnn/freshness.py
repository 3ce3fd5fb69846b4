"""Freshness: watermarks, visible time, staleness and read bounds (DESIGN.md promise 2), as plain state.

A mutation's identity is ``(Kafka partition, offset)`` and its time is its Kafka record timestamp.  After
every round each partition *reports* (:meth:`Freshness.report`):

* its **watermark**: the next offset not yet applied, i.e. every offset below it is applied through
  every layer on every partition;
* its **visible time**: the Kafka timestamp of its oldest record still waiting (pending) if there is one,
  else the moment the fetch was sent whose answer's high watermark it has read up to (every record
  produced before that moment has been read); a report with neither keeps the previous value, and a
  caught-up report never moves it back.  :meth:`Freshness.confirm` raises it from a probe of the log's
  end (every partition applied what the broker had when it answered fetches sent at that moment).

The cluster's visible time is the minimum over partitions, unknown until every partition has reported
one; ``staleness_ms = now - visible time`` (never negative).  A read with ``max_staleness_ms = S`` is
answerable once ``staleness_ms <= S`` and, with ``min_offsets = {p: o}``, once ``watermark[p] > o``
(:meth:`Freshness.check`).  :meth:`Freshness.wait` is the waiting loop around that check; the shell
brings the lock and the way to wait (a ``threading.Condition``'s ``wait``), so this module does no I/O
and reads time only through its injected :class:`Clock`.  A read that asked to be answered at once
(``answer_now``) is judged once (``wait`` with ``timeout_s=0``); :func:`settle` then says, for both kinds of
read, whether its answer meets the bound or raises :class:`~clustergnn.serving.StalenessDeadlineError`.

    clock = FakeClock()
    f = Freshness(partitions=2, clock=clock)
    f.report(0, next_offset=5, caught_up_at_ms=clock.now_ms())
    f.report(1, next_offset=3, oldest_pending_ts_ms=clock.now_ms() - 40)
    clock.advance(10)
    assert f.staleness_ms() == 50 and f.check(max_staleness_ms=60, min_offsets={0: 4}).met

Not thread-safe on its own: the shell (``actors/cluster.py``, or the gateway tests' fake) holds its own
lock around every call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from clustergnn.serving import InvalidReadError, Offsets, StalenessDeadlineError


class Clock(Protocol):
    """Where freshness reads time."""

    def now_ms(self) -> float:
        """Wall-clock milliseconds since the Unix epoch: comparable with Kafka record timestamps."""
        ...

    def monotonic_ms(self) -> float:
        """Milliseconds of a clock that never goes back, for deadlines."""
        ...


class SystemClock:
    """The real clocks: ``time.time`` and ``time.monotonic``."""

    def now_ms(self) -> float:
        return time.time() * 1000.0

    def monotonic_ms(self) -> float:
        return time.monotonic() * 1000.0


class FakeClock:
    """A clock that moves only when told (:meth:`advance`); wall and monotonic time move together."""

    def __init__(self, start_ms: float = 1_700_000_000_000.0) -> None:
        self._now_ms = float(start_ms)
        self._mono_ms = 0.0

    def now_ms(self) -> float:
        return self._now_ms

    def monotonic_ms(self) -> float:
        return self._mono_ms

    def advance(self, ms: float) -> None:
        if not ms >= 0:
            raise ValueError(f"a clock only moves forward: ms must be >= 0, got {ms}")
        self._now_ms += ms
        self._mono_ms += ms


@dataclass(frozen=True)
class Verdict:
    """Whether a read's bound is met, and the state it was judged on (a snapshot: safe to keep)."""

    met: bool
    """Both the staleness bound and ``min_offsets`` are met."""
    staleness_ms: float | None
    """``now - visible_ms`` (>= 0) at the check; None while the visible time is unknown."""
    visible_ms: float | None
    """The cluster's visible time at the check."""
    watermark: dict[int, int]
    """Kafka partition -> next offset not yet applied, at the check."""
    max_staleness_ms: float | None
    """The bound that was asked (None: any staleness)."""
    min_offsets: dict[int, int]
    """The offsets that were asked to be reflected (empty: none)."""

    def timeout_message(self, timeout_s: float) -> str:
        """Why the read failed at its deadline: what was asked and what the cluster had."""
        stale = "unknown" if self.staleness_ms is None else f"{self.staleness_ms:.0f} ms"
        return (
            f"bound not met within {timeout_s * 1000:.0f} ms: staleness {stale} "
            f"(max_staleness_ms={self.max_staleness_ms}), watermark {self.watermark} "
            f"(min_offsets={self.min_offsets})"
        )


class Freshness:
    """Per-partition watermarks and visible times of ``partitions`` Kafka partitions; see the module doc."""

    def __init__(self, partitions: int, clock: Clock | None = None) -> None:
        if not partitions >= 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.partitions = int(partitions)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._watermark = [0] * self.partitions
        self._visible_p: list[float | None] = [None] * self.partitions

    # ------------------------------------------------------------------ reports
    def report(
        self,
        partition: int,
        next_offset: int,
        *,
        oldest_pending_ts_ms: float | None = None,
        caught_up_at_ms: float | None = None,
    ) -> None:
        """What partition ``partition`` reached in the round that just ended.

        Args:
            next_offset: every offset below is applied (or dead-lettered) through every layer.
            oldest_pending_ts_ms: Kafka timestamp of its oldest record read but not applied yet.
            caught_up_at_ms: the start of a poll after which every record produced before it was read.
        """
        p = self._partition(partition)
        self._watermark[p] = int(next_offset)
        if oldest_pending_ts_ms is not None:
            self._visible_p[p] = float(oldest_pending_ts_ms)
        elif caught_up_at_ms is not None:  # never back: a later confirm() may have proven more
            self._visible_p[p] = max(float(caught_up_at_ms), self._visible_p[p] or -math.inf)

    def confirm(self, high_watermarks: Mapping[int, int], sent_ms: float) -> bool:
        """A probe of the log: fetches sent at ``sent_ms`` were answered with ``high_watermarks``.  If every
        partition has applied up to them, every record produced before ``sent_ms`` is applied: each
        partition's visible time becomes at least ``sent_ms`` (True).  Else nothing changes (False)."""
        if set(high_watermarks) != set(range(self.partitions)):
            raise ValueError(f"a probe must cover partitions 0..{self.partitions - 1}, got {sorted(high_watermarks)}")
        if any(self._watermark[int(p)] < int(hw) for p, hw in high_watermarks.items()):
            return False
        self._visible_p = [max(float(sent_ms), v if v is not None else -math.inf) for v in self._visible_p]
        return True

    # ------------------------------------------------------------------ state
    @property
    def watermark(self) -> dict[int, int]:
        """Kafka partition -> next offset not yet applied (a copy)."""
        return dict(enumerate(self._watermark))

    def partition_visible_ms(self, partition: int) -> float | None:
        return self._visible_p[self._partition(partition)]

    @property
    def visible_ms(self) -> float | None:
        """The moment before which every produced record is applied: min over partitions, None until
        every partition has reported one."""
        vs = self._visible_p
        return None if any(v is None for v in vs) else min(v for v in vs if v is not None)

    def staleness_ms(self, now_ms: float | None = None) -> float | None:
        """``now - visible_ms``, never negative; None while the visible time is unknown."""
        return self.staleness_at(self.visible_ms, now_ms)

    def staleness_at(self, visible_ms: float | None, now_ms: float | None = None) -> float | None:
        """Staleness of an answer whose state had visible time ``visible_ms`` (e.g. a verdict's)."""
        if visible_ms is None:
            return None
        now = self.clock.now_ms() if now_ms is None else now_ms
        return max(0.0, now - visible_ms)

    def reflects(self, min_offsets: Offsets | None) -> bool:
        """Every ``(partition, offset)`` in ``min_offsets`` is applied (``watermark[p] > offset``)."""
        wm = self._watermark
        return all(0 <= int(p) < self.partitions and wm[int(p)] > int(o) for p, o in (min_offsets or {}).items())

    # ------------------------------------------------------------------ bounds
    def validate(self, max_staleness_ms: float | None, min_offsets: Offsets | None) -> None:
        """Raise :class:`InvalidReadError` for a bound no state could ever meet."""
        if max_staleness_ms is not None and not max_staleness_ms >= 0:
            raise InvalidReadError(f"max_staleness_ms must be >= 0, got {max_staleness_ms}")
        for p, o in (min_offsets or {}).items():
            if not 0 <= int(p) < self.partitions:
                raise InvalidReadError(f"min_offsets names partition {p}; partitions are 0..{self.partitions - 1}")
            if int(o) < 0:
                raise InvalidReadError(f"min_offsets[{p}] must be >= 0, got {o}")

    def check(
        self, max_staleness_ms: float | None = None, min_offsets: Offsets | None = None, *, now_ms: float | None = None
    ) -> Verdict:
        """Is a read with these bounds answerable at ``now_ms`` (default: the clock's now)?  A staleness
        bound needs a known visible time."""
        visible = self.visible_ms
        stale = self.staleness_at(visible, now_ms)
        fresh = max_staleness_ms is None or (stale is not None and stale <= max_staleness_ms)
        return Verdict(
            fresh and self.reflects(min_offsets),
            stale,
            visible,
            self.watermark,
            max_staleness_ms,
            _offsets(min_offsets),
        )

    def wait(
        self,
        max_staleness_ms: float | None,
        min_offsets: Offsets | None,
        *,
        timeout_s: float,
        sleep: Callable[[float], object],
        poll_s: float = 0.05,
        before_check: Callable[[float], object] | None = None,
    ) -> Verdict:
        """Check until the bound is met or ``timeout_s`` has passed on the clock; the last verdict.

        ``sleep(s)`` waits at most ``s`` seconds for news (a ``Condition.wait`` whose lock the caller
        holds, so reports land in between); ``before_check(now_ms)`` runs before every check, with the
        instant the check will judge (to raise when the cluster is down, or to let a simulation catch up
        to that instant).  A verdict with ``met=False`` means the
        deadline passed: the caller raises with :meth:`Verdict.timeout_message` (:func:`settle`).
        ``timeout_s=0`` checks exactly once and never sleeps (an ``answer_now`` read).
        """
        if not (math.isfinite(poll_s) and poll_s > 0):
            raise ValueError(f"poll_s must be a finite number > 0, got {poll_s}")
        deadline_ms = self.clock.monotonic_ms() + timeout_s * 1000.0
        while True:
            now_ms = self.clock.now_ms()
            if before_check is not None:
                before_check(now_ms)
            verdict = self.check(max_staleness_ms, min_offsets, now_ms=now_ms)
            if verdict.met:
                return verdict
            left_ms = deadline_ms - self.clock.monotonic_ms()
            if left_ms <= 0:
                return verdict
            sleep(min(left_ms / 1000.0, poll_s))

    def _partition(self, partition: int) -> int:
        p = int(partition)
        if not 0 <= p < self.partitions:
            raise ValueError(f"partition must be in 0..{self.partitions - 1}, got {partition}")
        return p


def settle(verdict: Verdict, *, answer_now: bool, timeout_s: float, staleness_ms: float | None = None) -> bool:
    """The end of a read's wait, one rule for every backend: whether the answer built on ``verdict``'s state
    meets the read's bound (its ``bound_met``), or :class:`StalenessDeadlineError` for a read that waited.

    ``staleness_ms``: the staleness the answer is served with when the backend measured it again after
    the check (the state was read later); None = the verdict's own.  A read without ``answer_now`` answers
    only when its bound holds, so this returns True or raises (naming what was asked and what the cluster
    had, :meth:`Verdict.timeout_message`); an ``answer_now`` read is answered either way and gets False
    when the bound does not hold (its answer's staleness and watermark say how far off it is).

        f = Freshness(partitions=1, clock=FakeClock())
        f.report(0, next_offset=3, caught_up_at_ms=f.clock.now_ms())
        verdict = f.wait(None, {0: 10**9}, timeout_s=0.0, sleep=lambda s: None)  # judged once
        assert settle(verdict, answer_now=True, timeout_s=0.0) is False  # answered, marked
        settle(verdict, answer_now=False, timeout_s=0.0)  # raises StalenessDeadlineError
    """
    stale = verdict.staleness_ms if staleness_ms is None else staleness_ms
    bound = verdict.max_staleness_ms
    met = verdict.met and (bound is None or (stale is not None and stale <= bound))
    if met or answer_now:
        return met
    if verdict.met:  # the check held but the state read afterwards is older than the bound allows
        raise StalenessDeadlineError(f"answer would be {stale:.0f} ms stale > {bound} ms")
    raise StalenessDeadlineError(verdict.timeout_message(timeout_s))


def _offsets(offsets: Mapping[int, int] | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in (offsets or {}).items()}
