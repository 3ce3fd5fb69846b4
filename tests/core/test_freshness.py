"""The freshness rules (clustergnn/freshness.py) in one process, on a fake clock: no Ray, no sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn.freshness import FakeClock, Freshness, SystemClock, settle
from clustergnn.serving import InvalidReadError, StalenessDeadlineError


def test_visible_time_is_unknown_until_every_partition_reported() -> None:
    clock = FakeClock()
    f = Freshness(3, clock)
    t0 = clock.now_ms()
    f.report(0, 4, caught_up_at_ms=t0)
    f.report(1, 2, caught_up_at_ms=t0 - 30)
    f.report(2, 9)  # read records but caught up with nothing: no visible time yet
    assert f.visible_ms is None and f.staleness_ms() is None
    assert f.watermark == {0: 4, 1: 2, 2: 9}
    verdict = f.check(max_staleness_ms=1e12)
    assert not verdict.met and verdict.staleness_ms is None  # a staleness bound needs a known visible time
    assert f.check().met  # no bound: answerable, however stale
    f.report(2, 9, caught_up_at_ms=t0 - 10)
    assert f.visible_ms == t0 - 30  # the minimum over partitions
    clock.advance(5)
    assert f.staleness_ms() == 35


def test_pending_record_holds_visible_time_at_its_timestamp() -> None:
    clock = FakeClock()
    f = Freshness(1, clock)
    t0 = clock.now_ms()
    f.report(0, 10, oldest_pending_ts_ms=t0 - 100, caught_up_at_ms=t0)  # pending wins over caught up
    assert f.visible_ms == t0 - 100
    clock.advance(1000)
    f.report(0, 10)  # neither: the previous visible time stays
    assert f.partition_visible_ms(0) == t0 - 100 and f.staleness_ms() == 1100
    f.report(0, 12, caught_up_at_ms=clock.now_ms() - 2)
    assert f.staleness_ms() == 2


def test_staleness_is_never_negative() -> None:
    clock = FakeClock()
    f = Freshness(2, clock)
    f.report(0, 0, caught_up_at_ms=clock.now_ms() + 50)  # a poll stamped by a clock slightly ahead
    f.report(1, 0, caught_up_at_ms=clock.now_ms() + 20)
    assert f.staleness_ms() == 0.0
    assert f.check(max_staleness_ms=0).met
    assert f.staleness_at(clock.now_ms() + 1) == 0.0 and f.staleness_at(None) is None


def test_min_offsets_are_reflected_when_the_watermark_passes_them() -> None:
    f = Freshness(2, FakeClock())
    assert not f.reflects({0: 0})  # nothing applied yet
    f.report(0, 5)
    f.report(1, 1)
    assert f.reflects({0: 4, 1: 0}) and f.reflects({}) and f.reflects(None)
    assert not f.reflects({0: 5}) and not f.reflects({1: 1})
    verdict = f.check(min_offsets={0: 5})
    assert not verdict.met and verdict.min_offsets == {0: 5} and verdict.watermark == {0: 5, 1: 1}
    message = verdict.timeout_message(0.2)
    assert "min_offsets={0: 5}" in message and "bound not met within 200 ms" in message


def test_bounds_are_validated_naming_the_value() -> None:
    f = Freshness(2, FakeClock())
    with pytest.raises(InvalidReadError, match="max_staleness_ms must be >= 0, got -5"):
        f.validate(-5, None)
    with pytest.raises(InvalidReadError, match="max_staleness_ms must be >= 0, got nan"):
        f.validate(float("nan"), None)
    with pytest.raises(InvalidReadError, match=r"names partition 2; partitions are 0..1"):
        f.validate(None, {2: 0})
    with pytest.raises(InvalidReadError, match=r"min_offsets\[1\] must be >= 0, got -1"):
        f.validate(None, {1: -1})
    f.validate(0, {0: 0, 1: 7})
    with pytest.raises(ValueError, match="partition must be in 0..1, got 2"):
        f.report(2, 0)
    with pytest.raises(ValueError, match="partitions must be >= 1, got 0"):
        Freshness(0)


def test_wait_returns_once_met_and_gives_up_at_the_deadline_on_the_clock() -> None:
    clock = FakeClock()
    f = Freshness(1, clock)
    f.report(0, 0, oldest_pending_ts_ms=clock.now_ms())
    waits: list[float] = []

    def sleep(s: float) -> None:  # the owner reports while the reader waits
        waits.append(s)
        clock.advance(s * 1000)
        if len(waits) == 3:
            f.report(0, 1, caught_up_at_ms=clock.now_ms())

    seen: list[float] = []
    verdict = f.wait(10, {0: 0}, timeout_s=1.0, sleep=sleep, poll_s=0.05, before_check=seen.append)
    assert verdict.met and verdict.staleness_ms == 0.0 and waits == [0.05] * 3
    assert seen[-1] == clock.now_ms()  # before_check gets the instant the check judges

    waits.clear()
    verdict = f.wait(None, {0: 1}, timeout_s=0.12, sleep=lambda s: (waits.append(s), clock.advance(s * 1000)))
    assert not verdict.met and waits == pytest.approx([0.05, 0.05, 0.02])
    assert f.wait(None, {0: 1}, timeout_s=0.0, sleep=lambda s: pytest.fail("no time to wait")).met is False


def test_answer_now_is_judged_once_and_answered_with_whether_the_bound_held() -> None:
    clock = FakeClock()
    f = Freshness(2, clock)
    f.report(0, 5, oldest_pending_ts_ms=clock.now_ms() - 30)  # record 5 of partition 0 waits since 30 ms
    f.report(1, 2, caught_up_at_ms=clock.now_ms())
    checks: list[float] = []

    def once(max_staleness_ms: float | None, min_offsets: dict[int, int] | None):  # an answer_now read's wait
        return f.wait(
            max_staleness_ms,
            min_offsets,
            timeout_s=0.0,
            sleep=lambda s: pytest.fail("answer_now never waits"),
            before_check=checks.append,
        )

    for bound, offsets, met in [
        (50, {0: 4, 1: 1}, True),  # both hold
        (10, None, False),  # 30 ms stale > 10
        (None, {0: 5}, False),  # record 5 is not visible yet
        (None, None, True),  # no bound: always met
    ]:
        checks.clear()
        verdict = once(bound, offsets)
        assert len(checks) == 1  # judged exactly once
        assert settle(verdict, answer_now=True, timeout_s=1.0) is met
        # the answer's own figures say how far off it is: what the cluster has, not what was asked
        assert verdict.staleness_ms == 30 and verdict.watermark == {0: 5, 1: 2}
        if met:
            assert settle(verdict, answer_now=False, timeout_s=1.0) is True
        else:  # the same verdict at a waiting read's deadline: the error names what was asked and what was had
            with pytest.raises(StalenessDeadlineError, match="watermark"):
                settle(verdict, answer_now=False, timeout_s=1.0)


def test_settle_judges_the_staleness_the_answer_is_served_with() -> None:
    clock = FakeClock()
    f = Freshness(1, clock)
    f.report(0, 1, oldest_pending_ts_ms=clock.now_ms())
    verdict = f.check(max_staleness_ms=20)
    assert verdict.met and settle(verdict, answer_now=False, timeout_s=1.0)
    # the state was read later and the answer is 25 ms stale: over the bound
    assert settle(verdict, answer_now=True, timeout_s=1.0, staleness_ms=25.0) is False
    with pytest.raises(StalenessDeadlineError, match="25 ms stale > 20"):
        settle(verdict, answer_now=False, timeout_s=1.0, staleness_ms=25.0)
    assert settle(f.check(), answer_now=True, timeout_s=1.0, staleness_ms=1e9) is True  # no bound
    unknown = Freshness(1, clock).check(max_staleness_ms=1e12)  # no visible time yet: a bound cannot hold
    assert settle(unknown, answer_now=True, timeout_s=1.0) is False


def test_system_clock_is_wall_and_monotonic_time() -> None:
    import time

    c = SystemClock()
    assert abs(c.now_ms() - time.time() * 1000) < 1000
    assert c.monotonic_ms() <= c.monotonic_ms()
    with pytest.raises(ValueError, match="got -1"):
        FakeClock().advance(-1)


# ---------------------------------------------------------------------------------------------- property
@dataclass
class _Owner:
    """A model of one partition owner's reports (actors/owner.py): it reads a prefix of its log per poll,
    may leave records pending (waiting for a remote vertex), and says it caught up only when every record
    produced before its previous poll started has been read."""

    log_ts: list[float] = field(default_factory=list)  # Kafka timestamps, non-decreasing in offset order
    read: int = 0  # records read
    pending: set[int] = field(default_factory=set)  # read, not applied
    prev_poll_ms: float | None = None

    def applied(self, offset: int) -> bool:
        return offset < self.read and offset not in self.pending


_steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # partition
        st.floats(0, 50),  # ms that pass before records are produced
        st.integers(0, 3),  # records produced (on every partition)
        st.floats(0, 50),  # ms that pass before the poll
        st.integers(0, 4),  # records read by the poll
        st.lists(st.booleans(), max_size=4),  # per read record: left pending?
        st.booleans(),  # apply every pending record
        st.booleans(),  # the consumer knows it caught up (when it may)
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_reported_staleness_never_understates_the_oldest_unapplied_record(steps: list) -> None:
    clock = FakeClock()
    P = 3
    f = Freshness(P, clock)
    owners = [_Owner() for _ in range(P)]
    for p, dt, produced, dt_poll, n_read, defer, drain_pending, knows in steps:
        clock.advance(dt)
        for o in owners:  # producers write to every partition as time passes
            o.log_ts.extend([clock.now_ms()] * produced)
        clock.advance(dt_poll)
        o = owners[p]
        poll_ms = clock.now_ms()
        if drain_pending:
            o.pending.clear()
        start, o.read = o.read, min(len(o.log_ts), o.read + n_read)
        for i, off in enumerate(range(start, o.read)):
            if i < len(defer) and defer[i]:
                o.pending.add(off)
        prev = o.prev_poll_ms
        may_say = prev is not None and all(off < o.read for off, ts in enumerate(o.log_ts) if ts < prev)
        o.prev_poll_ms = poll_ms
        f.report(
            p,
            min(o.pending, default=o.read),
            oldest_pending_ts_ms=min((o.log_ts[x] for x in o.pending), default=None),
            caught_up_at_ms=prev if may_say and knows else None,
        )
        clock.advance(dt / 2)
        stale = f.staleness_ms()
        unapplied = [ts for q in owners for off, ts in enumerate(q.log_ts) if not q.applied(off)]
        if stale is not None and unapplied:
            assert stale >= clock.now_ms() - min(unapplied)
        if stale is not None:
            assert stale >= 0
        for q, owner in enumerate(owners):  # per partition too: its visible time precedes its unapplied records
            vis = f.partition_visible_ms(q)
            assert vis is None or all(ts >= vis for off, ts in enumerate(owner.log_ts) if not owner.applied(off))
        # the watermark never claims a record that is not applied
        for q, (part, wm) in zip(owners, sorted(f.watermark.items())):
            assert all(q.applied(off) for off in range(wm)), part


def test_a_probe_confirms_freshness_only_when_every_partition_applied_the_log_end() -> None:
    clock = FakeClock()
    f = Freshness(partitions=2, clock=clock)
    f.report(0, next_offset=5, caught_up_at_ms=clock.now_ms() - 60)
    f.report(1, next_offset=3, caught_up_at_ms=clock.now_ms() - 40)
    assert f.staleness_ms() == 60
    assert not f.confirm({0: 5, 1: 4}, clock.now_ms())  # partition 1 has not applied offset 3
    assert f.staleness_ms() == 60
    assert f.confirm({0: 5, 1: 3}, clock.now_ms())
    assert f.staleness_ms() == 0 and f.check(max_staleness_ms=0).met
    f.report(0, next_offset=5, caught_up_at_ms=clock.now_ms() - 30)  # an older report does not undo it
    assert f.staleness_ms() == 0
    f.report(1, next_offset=3, oldest_pending_ts_ms=clock.now_ms() - 5)  # a pending record does
    assert f.staleness_ms() == 5
    with pytest.raises(ValueError, match="must cover partitions"):
        f.confirm({0: 1}, clock.now_ms())
