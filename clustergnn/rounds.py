"""The round driver: one bulk-synchronous round over P partitions, wherever the partitions run.

A round (the engine side of each step is in ``clustergnn/partitioned.py``):

1. ``ingest`` on every partition: apply what it has (a queued batch, or a Kafka poll), defer edges from
   remote vertices its directory does not know; it reports ``busy`` and its structure outbox.  If no
   partition is busy, the round ends here.
2. ``retry`` on every partition, *only when the retry trigger holds* (below): each partition learns the
   other partitions' additions of this round (their first structure outboxes) and re-ingests its
   deferred mutations once; the retry's outboxes add to the first ones.
3. ``structure`` with every structure message of the round, then ``layer`` for each GNN layer but
   the last; ``finish_round`` runs the last layer and closes the round.  With ``fuse_next_ingest`` the
   last call is ``finish_round_then_ingest``: it also runs the next round's ingest, whose reports the
   caller hands back as ``prefetched`` (one fan-out less per round).

Between steps the driver routes outboxes (``{receiver: message}`` per sender) into inboxes, one message
per (sender, receiver) per step, and counts messages and bytes.

**Retry trigger.**  Deferred mutations get their one in-round retry iff ``P > 1`` and some partition's
ingest report says it holds deferred mutations (``deferred > 0``: mutations this round's ingest
deferred and that still wait; an owner that dead-letters a mutation after its timeout does not count
it).  A retry can only help an edge whose remote source another partition added in this same round,
so nothing deferred means nothing to retry, and with one partition no edge is remote.  (A retry that
learns no new addition defers the same mutations again: harmless, only a step spent.)

The driver knows nothing of where partitions run: it calls a :class:`FanOut`, "run step X on every
partition with these per-partition arguments, return the results in partition order".  The Ray
coordinator (``actors/cluster.py``) implements it with ``.remote()`` and ``ray.get``;
:func:`local_fan_out` with a loop, over :class:`EnginePartition` (an engine in this process, what
``LocalCluster`` uses) or any object with the :class:`RoundPartition` steps.

    parts = [EnginePartition(e) for e in engines]
    parts[0].feed(batch_for_partition_0)
    out = run_round(local_fan_out(parts), round_id=1, options=RoundOptions(len(parts), num_layers=2),
                    stats=RoundStats())
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from clustergnn.mutations import MutationBatch

if TYPE_CHECKING:
    from clustergnn.partitioned import PartitionEngine, RoundSummary

Step = Literal["ingest", "retry", "structure", "layer", "finish_round", "finish_round_then_ingest"]


class Message(Protocol):
    """What partitions send each other (``StructMsg``, ``LayerMsg``): the driver only counts bytes."""

    @property
    def nbytes(self) -> int: ...


Outbox = Mapping[int, Message]  # receiver partition -> message


class IngestReport(Protocol):
    """What the driver reads from an ``ingest``/``retry`` result (owners report more, for freshness)."""

    @property
    def busy(self) -> bool:
        """Anything applied or still deferred: the round must run its propagation steps."""
        ...

    @property
    def deferred(self) -> int:
        """Mutations deferred by this round's ingest that still wait (the retry trigger)."""
        ...

    @property
    def struct_out(self) -> Outbox: ...


class RoundPartition(Protocol):
    """The steps a partition answers (``actors/owner.py::PartitionOwner``, :class:`EnginePartition`)."""

    def ingest(self, round_id: int, max_records: int | None) -> IngestReport: ...

    def retry(self, inbox: list[Message]) -> IngestReport: ...

    def structure(self, round_id: int, inbox: list[Message]) -> Outbox: ...

    def layer(self, li: int, inbox: list[Message]) -> Outbox: ...

    def finish_round(self, inbox: list[Message]) -> Any: ...

    def finish_round_then_ingest(
        self, inbox: list[Message], next_round: int, max_records: int | None
    ) -> tuple[Any, IngestReport]: ...


class FanOut(Protocol):
    """Run ``step`` on every partition ``p`` with arguments ``args[p]``; the results in partition order."""

    def __call__(self, step: Step, args: Sequence[tuple[Any, ...]]) -> list[Any]: ...


def local_fan_out(parts: Sequence[RoundPartition]) -> FanOut:
    """A :class:`FanOut` over partitions in this process: a loop."""

    def call(step: Step, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return [getattr(p, step)(*a) for p, a in zip(parts, args, strict=True)]

    return call


def deliver(outboxes: Sequence[Outbox], num_partitions: int) -> tuple[list[list[Message]], int, int]:
    """Route outboxes into one inbox per partition (senders in order); also the message count and bytes."""
    inbox: list[list[Message]] = [[] for _ in range(num_partitions)]
    n = nbytes = 0
    for out in outboxes:
        for q, msg in out.items():
            inbox[q].append(msg)
            n += 1
            nbytes += msg.nbytes
    return inbox, n, nbytes


def needs_retry(reports: Sequence[IngestReport], num_partitions: int) -> bool:
    """The retry trigger (module docstring): more than one partition, and something deferred."""
    return num_partitions > 1 and any(r.deferred > 0 for r in reports)


@dataclass
class RoundStats:
    """Counters of a cluster's rounds; the driver adds busy rounds, messages and per-step times."""

    rounds: int = 0
    busy_rounds: int = 0
    mutations: int = 0
    messages: int = 0
    message_bytes: int = 0
    dead_letters: int = 0
    round_ms: deque = field(default_factory=lambda: deque(maxlen=512))
    step_ms: dict = field(default_factory=dict)  # step name -> recent durations (busy rounds)
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False)  # seconds

    def step(self, name: str, t0: float) -> float:
        """Record step ``name`` as lasting from ``t0`` until now; returns now (the next step's start)."""
        now = self.clock()
        self.step_ms.setdefault(name, deque(maxlen=512)).append((now - t0) * 1000)
        return now


@dataclass(frozen=True)
class RoundOptions:
    num_partitions: int
    num_layers: int
    max_records: int | None = None  # passed to ``ingest`` (a Kafka poll's limit)
    fuse_next_ingest: bool = False  # the last step also runs the next round's ingest

    def __post_init__(self) -> None:
        if self.num_partitions < 1 or self.num_layers < 1:
            raise ValueError(
                f"num_partitions and num_layers must be >= 1, got {self.num_partitions}, {self.num_layers}"
            )


@dataclass(frozen=True)
class RoundOutcome:
    busy: bool
    reports: list[Any]  # the last ingest reports of this round (the retry's, if there was one)
    finished: list[Any]  # ``finish_round``'s result per partition; empty in an idle round
    next_reports: list[Any] | None  # the next round's ingest (fused into this round's last step)
    messages: int
    message_bytes: int
    ingested: bool = False  # an ingest ran in this call (with ``ingest_extra``): not only a prefetched one


def run_round(
    fan_out: FanOut,
    round_id: int,
    options: RoundOptions,
    stats: RoundStats,
    prefetched: Sequence[Any] | None = None,
    ingest_extra: Sequence[tuple[Any, ...]] | None = None,
) -> RoundOutcome:
    """Run round ``round_id``; ``prefetched`` are its ingest reports when the previous round fused them;
    ``ingest_extra[p]`` is appended to partition ``p``'s arguments of the first ingest this call runs, and
    of that one only (the Ray owners take the coordinator's transaction decisions so, once;
    ``RoundOutcome.ingested`` says whether one ran).

    Adds busy rounds, messages, bytes and step times to ``stats`` (the caller counts rounds, mutations).
    """
    P, L = options.num_partitions, options.num_layers
    t0 = stats.clock()
    extra = list(ingest_extra) if ingest_extra is not None else [()] * P
    ingested = prefetched is None
    if prefetched is not None:
        reports = list(prefetched)
    else:
        reports = fan_out("ingest", [(round_id, options.max_records, *extra[p]) for p in range(P)])
    if not any(r.busy for r in reports):
        return RoundOutcome(False, reports, [], None, 0, 0, ingested)
    t = stats.step("ingest", t0)
    struct = [r.struct_out for r in reports]
    if needs_retry(reports, P):
        first, _, _ = deliver(struct, P)  # counted once, with the round's other structure messages below
        reports = fan_out("retry", [(first[p],) for p in range(P)])
        struct += [r.struct_out for r in reports]
        t = stats.step("retry", t)
    inbox, n, nbytes = deliver(struct, P)
    outs = fan_out("structure", [(round_id, inbox[p]) for p in range(P)])
    t = stats.step("structure", t)
    finished: list[Any] = []
    next_reports: list[Any] | None = None
    for li in range(L):
        inbox, n2, b2 = deliver(outs, P)
        n, nbytes = n + n2, nbytes + b2
        if li < L - 1:
            outs = fan_out("layer", [(li, inbox[p]) for p in range(P)])
        elif options.fuse_next_ingest:
            # ``ingest_extra`` goes to one ingest per call: the plain one above if it ran, else this one
            more = [()] * P if ingested else extra
            args = [(inbox[p], round_id + 1, options.max_records, *more[p]) for p in range(P)]
            ingested = True
            both = fan_out("finish_round_then_ingest", args)
            finished, next_reports = [x[0] for x in both], [x[1] for x in both]
        else:
            finished = fan_out("finish_round", [(inbox[p],) for p in range(P)])
        t = stats.step(f"layer{li}", t)
    stats.busy_rounds += 1
    stats.messages += n
    stats.message_bytes += nbytes
    return RoundOutcome(True, reports, finished, next_reports, n, nbytes, ingested)


# ----------------------------------------------------------------------------- in-process partitions


@dataclass(frozen=True)
class EngineReport:
    """:class:`IngestReport` of an :class:`EnginePartition`."""

    partition: int
    busy: bool
    deferred: int
    struct_out: Outbox


class EnginePartition:
    """A :class:`~clustergnn.partitioned.PartitionEngine` answering the round steps in this process.

    ``ingest`` applies the batch given to :meth:`feed` (whole: ``max_records`` limits Kafka polls, not
    this); what the engine defers is left in :attr:`deferred` for the caller to feed next round.
    ``MutationError`` from the engine propagates (the batch was not applied).
    """

    def __init__(self, engine: PartitionEngine) -> None:
        self.engine = engine
        self.deferred = MutationBatch.empty()
        self._todo: MutationBatch | None = None
        self._open = False

    def feed(self, batch: MutationBatch) -> None:
        """The batch the next ``ingest`` applies."""
        self._todo = batch

    def _begin(self, round_id: int) -> None:
        if not self._open:
            self.engine.begin_round(round_id)
            self._open = True

    def _report(self) -> EngineReport:
        out = self.engine.structure_outbox() if self._open else {}
        return EngineReport(self.engine.partition, self._open, len(self.deferred), out)

    def ingest(self, round_id: int, max_records: int | None = None) -> EngineReport:
        todo, self._todo = self._todo, None
        self.deferred = MutationBatch.empty()
        if todo is not None and len(todo):
            self._begin(round_id)
            self.deferred = self.engine.ingest(todo)
        return self._report()

    def retry(self, inbox: list[Message]) -> EngineReport:
        if self._open:
            self.engine.begin_retry(inbox)
            if len(self.deferred):
                self.deferred = self.engine.ingest(self.deferred)
        return self._report()

    def structure(self, round_id: int, inbox: list[Message]) -> Outbox:
        """Opens the round here if this partition had nothing to ingest."""
        if not self._open:
            self._begin(round_id)
            self.engine.structure_outbox()
        return self.engine.structure(inbox)

    def layer(self, li: int, inbox: list[Message]) -> Outbox:
        return self.engine.layer(li, inbox)

    def finish_round(self, inbox: list[Message]) -> RoundSummary:
        self.engine.layer(self.engine.num_layers - 1, inbox)
        self._open = False
        return self.engine.end_round()

    def finish_round_then_ingest(
        self, inbox: list[Message], next_round: int, max_records: int | None = None
    ) -> tuple[RoundSummary, EngineReport]:
        summary = self.finish_round(inbox)
        return summary, self.ingest(next_round, max_records)
