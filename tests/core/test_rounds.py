"""The round driver (clustergnn/rounds.py) against recording fake partitions: which steps run, when the
retry runs, the fused next-round ingest, message counts and step times."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from clustergnn.rounds import (
    RoundOptions,
    RoundStats,
    check_isolated,
    deliver,
    local_fan_out,
    needs_retry,
    remote_sources,
    retry_targets,
    run_round,
)

NONE = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Msg:
    sender: int
    nbytes: int = 10
    added: np.ndarray = field(default_factory=lambda: NONE)
    removed: np.ndarray = field(default_factory=lambda: NONE)
    ids: np.ndarray = field(default_factory=lambda: NONE)


@dataclass(frozen=True)
class Report:
    busy: bool
    deferred: int
    struct_out: dict[int, Msg]
    waiting_on: np.ndarray = field(default_factory=lambda: NONE)
    has_ghosts: bool = True


@dataclass
class FakePartition:
    """Sends one message to every other partition per step; ``defer`` mutations wait after ingest, for the
    remote sources ``waiting``; its structure messages list ``adds`` as added; ``ghosts``: it holds some."""

    p: int
    P: int
    busy: bool = True
    defer: int = 0
    waiting: tuple[int, ...] = ()
    adds: tuple[int, ...] = ()
    ghosts: bool = True
    talks_to: tuple[int, ...] = ()  # receivers of its structure and layer messages that carry something
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def _out(self) -> dict[int, Msg]:
        return {q: Msg(self.p, added=np.array(self.adds, dtype=np.int64)) for q in range(self.P) if q != self.p}

    def _layer_out(self) -> dict[int, Msg]:
        ids = {q: np.arange(1 if q in self.talks_to else 0) for q in range(self.P)}
        return {q: Msg(self.p, ids=ids[q]) for q in range(self.P) if q != self.p}

    def _report(self) -> Report:
        waiting = np.array(self.waiting if self.defer else (), dtype=np.int64)
        return Report(self.busy, self.defer, self._out() if self.busy else {}, waiting, self.ghosts)

    def ingest(self, round_id: int, max_records: int | None, *extra: Any) -> Report:
        self.calls.append(("ingest", round_id, *extra))
        return self._report()

    def retry(self, inbox: list[Msg]) -> Report:
        self.calls.append(("retry", sorted(m.sender for m in inbox)))
        self.defer = 0
        return self._report()

    def structure(self, round_id: int, inbox: list[Msg]) -> dict[int, Msg]:
        self.calls.append(("structure", len(inbox)))
        return self._layer_out()

    def layer(self, li: int, inbox: list[Msg]) -> dict[int, Msg]:
        self.calls.append((f"layer{li}", len(inbox)))
        return self._layer_out()

    def finish_round(self, inbox: list[Msg]) -> str:
        self.calls.append(("finish", len(inbox)))
        return f"summary{self.p}"

    def finish_round_then_ingest(
        self, inbox: list[Msg], next_round: int, max_records: int | None, *extra: Any
    ) -> tuple[str, Report]:
        return self.finish_round(inbox), self.ingest(next_round, max_records, *extra)

    def complete_round(self, round_id: int, inbox: list[Msg]) -> str:
        self.calls.append(("complete", round_id, len(inbox)))
        return f"summary{self.p}"

    def complete_round_then_ingest(
        self, inbox: list[Msg], next_round: int, max_records: int | None, *extra: Any
    ) -> tuple[str, Report]:
        return self.complete_round(next_round - 1, inbox), self.ingest(next_round, max_records, *extra)


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


def test_retry_runs_once_on_the_partitions_whose_waiting_sources_another_one_added() -> None:
    ps = parts(3)
    ps[1].defer, ps[1].waiting = 4, (100, 7)
    ps[2].adds = (100,)  # partition 2 adds vertex 100 this round
    ps[0].defer, ps[0].waiting = 2, (55,)  # nobody adds 55: a retry would defer the same again
    stats = RoundStats()
    out = run_round(local_fan_out(ps), 1, RoundOptions(3, 1), stats)
    # only partition 1 retries, with the others' first structure messages
    assert [c for c in ps[1].calls if c[0] == "retry"] == [("retry", [0, 2])]
    assert [c[0] for c in ps[1].calls] == ["ingest", "retry", "structure", "finish"]
    assert [c[0] for c in ps[0].calls] == [c[0] for c in ps[2].calls] == ["ingest", "structure", "finish"]
    # structure sees the first messages of both others, and partition 1's retry messages
    assert ("structure", 3) in ps[2].calls and ("structure", 3) in ps[0].calls and ("structure", 2) in ps[1].calls
    assert "retry" in stats.step_ms
    assert out.messages == 3 * 2 + 2 + 3 * 2  # first + partition 1's retry struct messages, then structure's
    # the reports after the retry where it ran, the ingest's elsewhere
    assert out.reports[1].deferred == 0 and out.reports[0].deferred == 2


def test_a_removed_waiting_source_triggers_the_retry_too() -> None:
    reps = [
        Report(True, 1, {1: Msg(0)}, np.array([5], dtype=np.int64)),
        Report(True, 0, {0: Msg(1, removed=np.array([5], dtype=np.int64))}),
    ]
    assert retry_targets(reps, 2) == [0]
    reps[1] = Report(True, 0, {0: Msg(1, added=np.array([6], dtype=np.int64))})
    assert retry_targets(reps, 2) == []


def test_no_retry_without_deferrals_or_with_one_partition_or_when_nothing_waited_for_came() -> None:
    for ps, P in ((parts(3), 3), (parts(1, defer=2, waiting=(4,), adds=(4,)), 1), (parts(2, defer=2, waiting=(9,)), 2)):
        run_round(local_fan_out(ps), 1, RoundOptions(P, 1), RoundStats())
        assert not any(c[0] == "retry" for p in ps for c in p.calls)
    assert needs_retry([Report(True, 1, {})], 2) and not needs_retry([Report(True, 0, {})] * 2, 2)
    # the gate holds as before: no partition with deferred mutations, no retry (a transaction's part alone
    # waits for its decision, not for the retry)
    only_txn = [
        Report(True, 0, {1: Msg(0)}, np.array([3], dtype=np.int64)),
        Report(True, 0, {0: Msg(1, added=np.array([3], dtype=np.int64))}),
    ]
    assert retry_targets(only_txn, 2) == []


def test_an_isolated_round_is_one_call_per_partition() -> None:
    """No partition holds a ghost: no layer message can flow, the round is one fan-out (two without fusion)."""
    ps = parts(3, ghosts=False)
    stats = RoundStats(clock=FakeClock())
    out = run_round(local_fan_out(ps), 4, RoundOptions(3, 3), stats)
    assert out.busy and out.finished == ["summary0", "summary1", "summary2"]
    assert ps[1].calls == [("ingest", 4), ("complete", 4, 2)]
    assert out.messages == 3 * 2 and sorted(stats.step_ms) == ["complete", "ingest"]
    ps = parts(2, ghosts=False)
    opts = RoundOptions(2, 2, max_records=10, fuse_next_ingest=True)
    out = run_round(local_fan_out(ps), 1, opts, RoundStats(), ingest_extra=[("d0",), ("d1",)])
    assert ps[0].calls == [("ingest", 1, "d0"), ("complete", 1, 1), ("ingest", 2)]
    out = run_round(local_fan_out(ps), 2, opts, RoundStats(), prefetched=out.next_reports, ingest_extra=[("e0",)] * 2)
    assert ps[0].calls[3:] == [("complete", 2, 1), ("ingest", 3, "e0")] and out.ingested
    # one partition with a ghost: the round runs step by step
    ps = parts(2, ghosts=False)
    ps[1].ghosts = True
    run_round(local_fan_out(ps), 1, RoundOptions(2, 2), RoundStats())
    assert [c[0] for c in ps[0].calls] == ["ingest", "structure", "layer0", "finish"]


def test_partitions_with_nothing_to_do_are_left_out_of_the_structure_and_layer_steps() -> None:
    """Partition 1 ingests nothing and receives nothing: called for its ingest and the last step only
    (where the next ingest rides, and which closes nothing there); partition 2 ingests nothing but gets a
    layer message from partition 0's structure step, so it joins at layer 0."""
    ps = parts(3)
    ps[1].busy = ps[2].busy = False
    ps[0].talks_to = (2,)
    stats = RoundStats()
    out = run_round(local_fan_out(ps), 1, RoundOptions(3, 3), stats)
    assert [c[0] for c in ps[0].calls] == ["ingest", "structure", "layer0", "layer1", "finish"]
    assert [c[0] for c in ps[1].calls] == ["ingest", "finish"]
    assert [c[0] for c in ps[2].calls] == ["ingest", "layer0", "layer1", "finish"]
    assert out.finished == ["summary0", "summary1", "summary2"]
    # the messages sent: 0's struct outbox (2), then 0's structure + layer0 + layer1 outboxes and 2's layer0
    # and layer1 outboxes (2 each)
    assert out.messages == 2 + 3 * 2 + 2 * 2


def test_an_isolated_rounds_outbox_must_be_empty() -> None:
    from clustergnn.partitioned import LayerMsg

    empty = np.zeros((0, 4), dtype=np.float32)
    check_isolated({1: LayerMsg(0, 0, NONE, empty)}, 0, "layer 0")
    with pytest.raises(RuntimeError, match="isolated round"):
        check_isolated({1: LayerMsg(0, 0, np.array([3]), np.zeros((1, 4), np.float32))}, 0, "layer 0")


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


def test_waiting_on_lists_the_remote_sources_of_edges_only() -> None:
    from clustergnn.mutations import MutationKind
    from clustergnn.partition import HashPartitionMap

    pm = HashPartitionMap(2)  # even ids on partition 0
    kind = np.array(
        [MutationKind.ADD_EDGE, MutationKind.REMOVE_EDGE, MutationKind.ADD_EDGE, MutationKind.REMOVE_VERTEX],
        dtype=np.int8,
    )
    src = np.array([3, 5, 4, 7], dtype=np.int64)
    assert remote_sources(kind, src, 0, pm.owner).tolist() == [3, 5]  # 4 is local, 7 no edge's source
    assert remote_sources(kind[:0], src[:0], 0, pm.owner).tolist() == []
