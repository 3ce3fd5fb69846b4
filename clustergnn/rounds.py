"""The round driver: one bulk-synchronous round over P partitions, wherever the partitions run.

A round (the engine side of each step is in ``clustergnn/partitioned.py``):

1. ``ingest`` on every partition: apply what it has (a queued batch, or a Kafka poll), defer edges from
   remote vertices its directory does not know; it reports ``busy``, its structure outbox, the remote
   sources its waiting mutations name (``waiting_on``) and whether it holds ghosts.  If no partition is
   busy, the round ends here.
2. ``retry``, *only on the partitions the retry trigger names* (below): each learns the other partitions'
   additions of this round (their first structure outboxes) and re-ingests its deferred mutations once;
   the retry's outboxes add to the first ones.  The other partitions are not called.
3. ``structure`` with every structure message of the round, then ``layer`` for each GNN layer but
   the last; ``finish_round`` runs the last layer and closes the round.  With ``fuse_next_ingest`` the
   last call is ``finish_round_then_ingest``: it also runs the next round's ingest, whose reports the
   caller hands back as ``prefetched`` (one fan-out less per round).
   **Partitions with nothing to do**: a partition with no round open (it ingested nothing) is left out of
   the structure and layer steps while its inbox carries nothing (:func:`carries`): it would change
   nothing and send nothing.  When a message does come it is called and joins the round there, running the
   steps it missed with empty inboxes first (they must send nothing).  Every partition is called for the
   last step (the next ingest rides on it); an owner that never joined closes nothing there (None), an
   :class:`EnginePartition` runs an empty round (``LocalCluster`` keeps one summary per partition).
   **Isolated rounds**: when no partition holds a ghost after steps 1-2 (always with one partition), no
   layer message can flow between partitions in this round, so step 3 is one call per partition,
   ``complete_round`` (``complete_round_then_ingest`` with ``fuse_next_ingest``): the structure step and
   every layer with empty layer inboxes (one fan-out per round instead of ``L + 1``).

Between steps the driver routes outboxes (``{receiver: message}`` per sender) into inboxes, one message
per (sender, receiver) per step, and counts messages and bytes.

**Retry trigger.**  Deferred mutations get their one in-round retry iff ``P > 1`` and some partition's
ingest report says it holds deferred mutations (``deferred > 0``: mutations this round's ingest
deferred and that still wait; an owner that dead-letters a mutation after its timeout does not count
it).  Only the partitions for which it can change anything are called: those with a remote source in
``waiting_on`` that another partition's first structure outbox to it lists as added or removed this
round.  A retry's outcome depends on the directory only through the states of those sources (whether
an edge is deferred, dropped with its removed source, or judged in a transaction's vote), so a partition
whose sources nobody added or removed would defer the same mutations again and send nothing new: not
calling it changes nothing but the step it would spend.  With one partition no edge is remote.

**Isolated rounds, why exact.**  A partition receives layer messages only for its ghosts, and a vertex
has readers in another partition only while that partition holds a ghost of it with edges (reader
counts follow ghost edges; ghosts are made only by ``ingest``/``retry`` and removed only by
``structure`` and ``end_round``).  So if no partition reports a ghost after its last ingest step, no
partition had one at the end of the previous round either, every reader count is zero and stays zero,
and every layer outbox of the round would be empty; the fused call checks that they are (a
``RuntimeError`` if not).

The driver knows nothing of where partitions run: it calls a :class:`FanOut`, "run step X on the
partitions with these per-partition arguments, return the results in partition order" (an argument of
``None``: that partition is not called, its result is ``None``).  The Ray coordinator
(``actors/cluster.py``) implements it with ``.remote()`` and ``ray.get``; :func:`local_fan_out` with a
loop, over :class:`EnginePartition` (an engine in this process, what ``LocalCluster`` uses) or any object
with the :class:`RoundPartition` steps.

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

import numpy as np

from clustergnn.mutations import MutationBatch, edge_kinds_mask

if TYPE_CHECKING:
    from clustergnn.partitioned import PartitionEngine, RoundSummary

Step = Literal[
    "ingest",
    "retry",
    "structure",
    "layer",
    "finish_round",
    "finish_round_then_ingest",
    "complete_round",
    "complete_round_then_ingest",
]


class Message(Protocol):
    """What partitions send each other (``StructMsg``, ``LayerMsg``): the driver only counts bytes."""

    @property
    def nbytes(self) -> int: ...


Outbox = Mapping[int, Message]  # receiver partition -> message


class StructMessage(Message, Protocol):
    """What the driver reads from a structure message (``StructMsg``): the retry trigger's additions."""

    @property
    def added(self) -> np.ndarray: ...

    @property
    def removed(self) -> np.ndarray: ...


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
    def waiting_on(self) -> np.ndarray:
        """The remote sources of the edges in this partition's waiting mutations (deferred ones, and
        transaction parts with what waits behind them): the only ids whose directory state a retry's
        outcome depends on (the retry trigger)."""
        ...

    @property
    def has_ghosts(self) -> bool:
        """This partition holds a ghost (it may receive layer messages): isolated rounds need none anywhere."""
        ...

    @property
    def struct_out(self) -> Mapping[int, StructMessage]: ...


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

    def complete_round(self, round_id: int, inbox: list[Message]) -> Any:
        """``structure(round_id, inbox)``, every layer with empty inboxes and ``finish_round([])``, in one
        call (an isolated round); ``RuntimeError`` if a layer outbox is not empty."""
        ...

    def complete_round_then_ingest(
        self, inbox: list[Message], next_round: int, max_records: int | None
    ) -> tuple[Any, IngestReport]: ...


class FanOut(Protocol):
    """Run ``step`` on every partition ``p`` whose ``args[p]`` is not None, with those arguments; the
    results in partition order (None for a partition not called)."""

    def __call__(self, step: Step, args: Sequence[tuple[Any, ...] | None]) -> list[Any]: ...


def local_fan_out(parts: Sequence[RoundPartition]) -> FanOut:
    """A :class:`FanOut` over partitions in this process: a loop."""

    def call(step: Step, args: Sequence[tuple[Any, ...] | None]) -> list[Any]:
        return [None if a is None else getattr(p, step)(*a) for p, a in zip(parts, args, strict=True)]

    return call


def carries(msg: Message) -> bool:
    """``msg`` carries something: layer messages (``ids``), or vertices added or removed, or reader deltas.
    A message without these fields counts as carrying something."""
    fields = [getattr(msg, name, None) for name in ("ids", "added", "removed", "reader_ids")]
    return all(a is None for a in fields) or any(a is not None and len(a) for a in fields)


def empty_outbox(out: Outbox) -> bool:
    """No message of ``out`` carries anything."""
    return not any(carries(m) for m in out.values())


def check_isolated(outbox: Outbox, partition: int, step: str) -> None:
    """An isolated round's outbox must carry nothing (module docstring): raise if it does."""
    if not empty_outbox(outbox):
        raise RuntimeError(
            f"partition {partition}: {step} of an isolated round (no partition holds a ghost) has a message "
            "to send: the reader counts and the ghosts disagree"
        )


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
    """The retry trigger's gate (module docstring): more than one partition, and something deferred."""
    return num_partitions > 1 and any(r.deferred > 0 for r in reports)


def retry_targets(reports: Sequence[IngestReport], num_partitions: int) -> list[int]:
    """The partitions the retry trigger names (module docstring): none unless :func:`needs_retry`; else
    those with a ``waiting_on`` source that another partition's structure outbox to them adds or removes."""
    if not needs_retry(reports, num_partitions):
        return []
    out = []
    for p, rep in enumerate(reports):
        waiting = rep.waiting_on
        if not len(waiting):
            continue
        news = []
        for q, other in enumerate(reports):
            msg = other.struct_out.get(p) if q != p else None
            if msg is not None:
                news += [a for a in (msg.added, msg.removed) if len(a)]
        if news and np.isin(waiting, np.concatenate(news)).any():
            out.append(p)
    return out


def remote_sources(
    kind: np.ndarray, src: np.ndarray, partition: int, owner: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """The sources of the edges among mutations ``(kind, src)`` that ``owner`` (a partition map's) puts in
    another partition than ``partition``: sorted, unique (an :class:`IngestReport`'s ``waiting_on``)."""
    src = np.asarray(src, dtype=np.int64)[edge_kinds_mask(kind)]
    return np.unique(src[owner(src) != partition]) if src.size else src


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
    targets = retry_targets(reports, P)
    if targets:
        first, _, _ = deliver(struct, P)  # counted once, with the round's other structure messages below
        retried = fan_out("retry", [(first[p],) if p in targets else None for p in range(P)])
        reports = [reports[p] if retried[p] is None else retried[p] for p in range(P)]
        struct += [retried[p].struct_out for p in targets]
        t = stats.step("retry", t)
    inbox, n, nbytes = deliver(struct, P)
    finished: list[Any] = []
    next_reports: list[Any] | None = None
    # ``ingest_extra`` goes to one ingest per call: the plain one above if it ran, else the fused one
    more = [()] * P if ingested else extra
    if not any(r.has_ghosts for r in reports):  # an isolated round (module docstring): one call
        plain = [(round_id, inbox[p]) for p in range(P)]
        finished, next_reports, fused = _last_call(fan_out, "complete_round", plain, inbox, round_id, options, more)
        ingested |= fused
        stats.step("complete", t)
        return _busy(stats, reports, finished, next_reports, n, nbytes, ingested)
    # a partition with no round open and nothing in its inbox is left out of the structure and layer steps
    # (it would change nothing and send nothing); one that gets something later joins then (``layer``)
    joined = [bool(r.busy) for r in reports]

    def step(args: list[tuple[Any, ...]]) -> list[tuple[Any, ...] | None]:
        go = [joined[p] or any(carries(m) for m in inbox[p]) for p in range(P)]
        joined[:] = go
        return [a if g else None for a, g in zip(args, go, strict=True)]

    outs = fan_out("structure", step([(round_id, inbox[p]) for p in range(P)]))
    t = stats.step("structure", t)
    for li in range(L):
        inbox, n2, b2 = deliver([o or {} for o in outs], P)
        n, nbytes = n + n2, nbytes + b2
        if li < L - 1:
            outs = fan_out("layer", step([(li, inbox[p]) for p in range(P)]))
        else:
            plain = [(inbox[p],) for p in range(P)]
            finished, next_reports, fused = _last_call(fan_out, "finish_round", plain, inbox, round_id, options, more)
            ingested |= fused
        t = stats.step(f"layer{li}", t)
    return _busy(stats, reports, finished, next_reports, n, nbytes, ingested)


def _last_call(
    fan_out: FanOut,
    call: Step,
    plain: list[tuple[Any, ...]],
    inbox: list[list[Any]],
    round_id: int,
    options: RoundOptions,
    more: list[tuple[Any, ...]],
) -> tuple[list[Any], list[Any] | None, bool]:
    """A round's last call on every owner: ``call`` with ``plain``, or, when the next ingest is fused into it,
    ``call + "_then_ingest"`` with the inbox and the next round's ingest arguments.  Returns what each owner
    published, the next round's reports (None when not fused) and whether it was fused."""
    if not options.fuse_next_ingest:
        return fan_out(call, plain), None, False
    args = [(inbox[p], round_id + 1, options.max_records, *more[p]) for p in range(len(inbox))]
    both = fan_out(f"{call}_then_ingest", args)  # type: ignore[arg-type]
    return [x[0] for x in both], [x[1] for x in both], True


def _busy(
    stats: RoundStats,
    reports: list[Any],
    finished: list[Any],
    next_reports: list[Any] | None,
    n: int,
    nbytes: int,
    ingested: bool,
) -> RoundOutcome:
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
    waiting_on: np.ndarray
    has_ghosts: bool


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
        self._round_id = 0  # the round of the last ingest (a partition joining late opens it)

    def feed(self, batch: MutationBatch) -> None:
        """The batch the next ``ingest`` applies."""
        self._todo = batch

    def _begin(self, round_id: int) -> None:
        if not self._open:
            self.engine.begin_round(round_id)
            self._open = True

    def _report(self) -> EngineReport:
        out = self.engine.structure_outbox() if self._open else {}
        e = self.engine
        waiting = remote_sources(self.deferred.kind, self.deferred.src, e.partition, e.pmap.owner)
        return EngineReport(e.partition, self._open, len(self.deferred), out, waiting, e.has_ghosts())

    def ingest(self, round_id: int, max_records: int | None = None) -> EngineReport:
        self._round_id = round_id
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

    def _join(self, li: int) -> None:
        """Open the round here at layer ``li``'s step, after the structure and layer steps the driver left
        this partition out of (nothing open, nothing received): they are run now with empty inboxes, and
        must send nothing."""
        if self._open:
            return
        p = self.engine.partition
        check_isolated(self.structure(self._round_id, []), p, "structure (joining late)")
        for k in range(li):
            check_isolated(self.engine.layer(k, []), p, f"layer {k} (joining late)")

    def layer(self, li: int, inbox: list[Message]) -> Outbox:
        self._join(li)
        return self.engine.layer(li, inbox)

    def finish_round(self, inbox: list[Message]) -> RoundSummary:
        """Closes the round; one that never opened here opens and closes now (a summary per partition)."""
        self._join(self.engine.num_layers - 1)
        self.engine.layer(self.engine.num_layers - 1, inbox)
        self._open = False
        return self.engine.end_round()

    def finish_round_then_ingest(
        self, inbox: list[Message], next_round: int, max_records: int | None = None
    ) -> tuple[RoundSummary, EngineReport]:
        summary = self.finish_round(inbox)
        return summary, self.ingest(next_round, max_records)

    def complete_round(self, round_id: int, inbox: list[Message]) -> RoundSummary:
        p = self.engine.partition
        check_isolated(self.structure(round_id, inbox), p, "structure")
        for li in range(self.engine.num_layers - 1):
            check_isolated(self.layer(li, []), p, f"layer {li}")
        return self.finish_round([])

    def complete_round_then_ingest(
        self, inbox: list[Message], next_round: int, max_records: int | None = None
    ) -> tuple[RoundSummary, EngineReport]:
        summary = self.complete_round(next_round - 1, inbox)
        return summary, self.ingest(next_round, max_records)
