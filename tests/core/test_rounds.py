"""The round driver (clustergnn/rounds.py) against recording fake partitions: which steps run, when the
retry runs, the fused next-round ingest, message counts and step times."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from clustergnn.rounds import RoundOptions, RoundStats, deliver, local_fan_out, needs_retry, run_round


@dataclass(frozen=True)
class Msg:
    sender: int
    nbytes: int = 10


@dataclass(frozen=True)
class Report:
    busy: bool
    deferred: int
    struct_out: dict[int, Msg]


@dataclass
class FakePartition:
    """Sends one message to every other partition per step; ``defer`` mutations wait after ingest."""

    p: int
    P: int
    busy: bool = True
    defer: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def _out(self) -> dict[int, Msg]:
        return {q: Msg(self.p) for q in range(self.P) if q != self.p}

    def _report(self) -> Report:
        return Report(self.busy, self.defer, self._out() if self.busy else {})

    def ingest(self, round_id: int, max_records: int | None, *extra: Any) -> Report:
        self.calls.append(("ingest", round_id, *extra))
        return self._report()

    def retry(self, inbox: list[Msg]) -> Report:
        self.calls.append(("retry", sorted(m.sender for m in inbox)))
        self.defer = 0
        return self._report()

    def structure(self, round_id: int, inbox: list[Msg]) -> dict[int, Msg]:
        self.calls.append(("structure", len(inbox)))
        return self._out()

    def layer(self, li: int, inbox: list[Msg]) -> dict[int, Msg]:
        self.calls.append((f"layer{li}", len(inbox)))
        return self._out()

    def finish_round(self, inbox: list[Msg]) -> str:
        self.calls.append(("finish", len(inbox)))
        return f"summary{self.p}"

    def finish_round_then_ingest(
        self, inbox: list[Msg], next_round: int, max_records: int | None, *extra: Any
    ) -> tuple[str, Report]:
        return self.finish_round(inbox), self.ingest(next_round, max_records, *extra)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 0.001  # every reading is 1 ms later
        return self.t


def parts(P: int, **kw: Any) -> list[FakePartition]:
    return [FakePartition(p, P, **kw) for p in range(P)]


def test_idle_round_stops_after_ingest() -> None:
    ps = parts(3, busy=False)
    out = run_round(local_fan_out(ps), 1, RoundOptions(3, 2), RoundStats())
    assert not out.busy and out.finished == [] and out.messages == 0
    assert [c for p in ps for c in p.calls] == [("ingest", 1)] * 3


def test_busy_round_runs_every_step_and_counts_each_message_once() -> None:
    ps = parts(3)
    stats = RoundStats(clock=FakeClock())
    out = run_round(local_fan_out(ps), 7, RoundOptions(3, 2), stats)
    assert out.busy and out.finished == ["summary0", "summary1", "summary2"] and out.next_reports is None
    assert ps[0].calls == [("ingest", 7), ("structure", 2), ("layer0", 2), ("finish", 2)]
    # struct + structure + layer0 outboxes: 3 steps x 3 senders x 2 receivers
    assert out.messages == stats.messages == 18 and out.message_bytes == 180
    assert stats.busy_rounds == 1 and sorted(stats.step_ms) == ["ingest", "layer0", "layer1", "structure"]
    assert all(list(v) == [pytest.approx(1.0)] for v in stats.step_ms.values())  # 1 ms per fake clock tick


def test_retry_runs_once_when_something_was_deferred_on_more_than_one_partition() -> None:
    ps = parts(3)
    ps[1].defer = 4
    stats = RoundStats()
    out = run_round(local_fan_out(ps), 1, RoundOptions(3, 1), stats)
    # every partition retries with the others' first structure messages
    assert [c for c in ps[0].calls if c[0] == "retry"] == [("retry", [1, 2])]
    assert [c[0] for c in ps[1].calls] == ["ingest", "retry", "structure", "finish"]
    # structure sees the first and the retry's messages: 2 senders x 2 outboxes
    assert ("structure", 4) in ps[2].calls and "retry" in stats.step_ms
    assert out.messages == 3 * 2 * 2 + 3 * 2  # first + retry struct messages, then structure's outboxes
    assert out.reports[1].deferred == 0  # the reports after the retry


def test_no_retry_without_deferrals_or_with_one_partition() -> None:
    for ps, P in ((parts(3), 3), (parts(1, defer=2), 1)):
        run_round(local_fan_out(ps), 1, RoundOptions(P, 1), RoundStats())
        assert not any(c[0] == "retry" for p in ps for c in p.calls)
    assert needs_retry([Report(True, 1, {})], 2) and not needs_retry([Report(True, 0, {})] * 2, 2)


def test_fused_last_step_prefetches_the_next_rounds_ingest() -> None:
    ps = parts(2)
    opts = RoundOptions(2, 2, max_records=100, fuse_next_ingest=True)
    first = run_round(local_fan_out(ps), 1, opts, RoundStats())
    assert first.next_reports is not None and len(first.next_reports) == 2
    assert ps[0].calls[-2:] == [("finish", 1), ("ingest", 2)]
    second = run_round(local_fan_out(ps), 2, opts, RoundStats(), prefetched=first.next_reports)
    assert second.busy and [c for c in ps[0].calls if c[0] == "ingest"] == [("ingest", 1), ("ingest", 2), ("ingest", 3)]


def test_deliver_keeps_sender_order_per_receiver() -> None:
    inbox, n, nbytes = deliver([{1: Msg(0)}, {0: Msg(1)}, {0: Msg(2, 5), 1: Msg(2, 5)}], 3)
    assert [[m.sender for m in i] for i in inbox] == [[1, 2], [0, 2], []] and (n, nbytes) == (4, 30)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="got 0, 2"):
        RoundOptions(0, 2)


def test_ingest_extra_goes_to_the_first_ingest_of_a_call_only() -> None:
    """The coordinator's transaction decisions ride on it: delivered twice, an owner would keep the second
    copy of a decision it already applied (for ever)."""
    ps = parts(2)
    opts = RoundOptions(2, 2, max_records=100, fuse_next_ingest=True)
    extra = [("d0",), ("d1",)]
    first = run_round(local_fan_out(ps), 1, opts, RoundStats(), ingest_extra=extra)
    assert first.ingested
    assert [c for c in ps[1].calls if c[0] == "ingest"] == [("ingest", 1, "d1"), ("ingest", 2)]
    second = run_round(local_fan_out(ps), 2, opts, RoundStats(), prefetched=first.next_reports, ingest_extra=extra)
    assert second.ingested and [c for c in ps[1].calls if c[0] == "ingest"][-1] == ("ingest", 3, "d1")
    idle = parts(2, busy=False)
    out = run_round(
        local_fan_out(idle), 1, opts, RoundStats(), prefetched=[p._report() for p in idle], ingest_extra=extra
    )
    assert not out.ingested and not any(c[0] == "ingest" for c in idle[0].calls)
