"""Transactional writes across partitions: owners vote, the coordinator decides, all or nothing.

A write that must apply whole (what the gateway's ``Apply`` writes) is a *transaction*: one Kafka
record per partition it touches, each tagged with the transaction's id and the list of partitions
(``streams/wire.py``, header ``clustergnn.txn``).  The protocol, in rounds (``actors/cluster.py``):

1. **Vote.**  An owner that reaches a tagged record applies everything before it, then stops there:
   the record and everything after it wait (its watermark stays below the record, nothing later is
   applied out of order).  It judges its part against its state at that point without changing it
   (:meth:`clustergnn.partitioned.PartitionEngine.check`) and reports a :class:`TxnVote`: the error
   that rejects the part, or the part's remote edge sources it has never heard of (``unknown``) and the
   vertices the part adds (``adds``).  It votes again every round until it hears the decision.
2. **Decide** (:class:`TxnBook`, this module, pure).  *Abort* when a part is rejected; when a part
   never came (every partition still missing a part has applied everything produced until ``grace_ms``
   after the transaction); when an unknown source stays unknown (no part adds it, every partition
   outside the transaction has applied everything produced until ``grace_ms`` after it, and a vote
   taken after that still says unknown); or after ``backstop_s`` without a decision.  The book's clock
   (``now_s``) is the caller's: the coordinator passes its *calm clock*, which runs only while every
   partition is caught up with its log, so a transaction held up by overload is never aborted for it.  *Commit* when
   every part has voted, none rejects, and every unknown source is added by another part.
   A transaction wholly in one partition needs no coordinator unless a source is unknown: its owner
   applies or dead-letters it at once and reports its vote as ``final`` (:func:`decides_alone`).
3. **Apply.**  The decision travels with each holder's next ingest: a commit applies the part where it
   stood (an edge whose source another part adds waits for it within the round, as any edge does); an
   abort dead-letters every part, the rejecting one with its own reason, the others ``txn_aborted``.

Replay after a restart meets the same records: a part found in the dead-letter topic votes abort
(it was aborted before), so an aborted transaction stays aborted; no decision is taken on a timeout
while partitions replay (a part may only be missing because its partition has not replayed it yet).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

ABORTED = "txn_aborted"  # dead-letter reason of the parts that were valid in an aborted transaction


@dataclass(frozen=True)
class TxnTag:
    """What a transaction's record carries: its id and every partition it writes to (sorted)."""

    txn_id: str
    parts: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.txn_id or len(self.txn_id) > 200 or any(c in self.txn_id for c in ";\n"):
            raise ValueError(f"transaction id {self.txn_id!r}: 1 to 200 characters, no ';' or newline")
        if not self.parts or list(self.parts) != sorted(set(self.parts)) or self.parts[0] < 0:
            raise ValueError(f"transaction {self.txn_id}: parts must be distinct partitions, sorted: {self.parts}")

    def __str__(self) -> str:
        return f"{self.txn_id};{','.join(map(str, self.parts))}"

    def encode(self) -> bytes:
        return str(self).encode()

    @classmethod
    def decode(cls, raw: bytes) -> TxnTag:
        """``ValueError`` naming the value when ``raw`` is not ``"<id>;<p>,<p>,..."``."""
        try:
            txn_id, parts = raw.decode().split(";")
            return cls(txn_id, tuple(int(p) for p in parts.split(",")))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"bad transaction tag {raw[:80]!r}: want '<id>;<partition>,<partition>...' ({e})") from e


@dataclass(frozen=True)
class TxnVote:
    """One owner's judgement of its part, as of ``round_id``."""

    tag: TxnTag
    partition: int
    round_id: int
    timestamp_ms: int  # the record's Kafka timestamp
    error_code: str | None = None  # None: the part applies, given ``unknown``
    error: str = ""
    unknown: tuple[int, ...] = ()  # remote edge sources this partition has never heard of
    adds: tuple[int, ...] = ()  # vertices the part adds
    # vertices the part touches that earlier, deferred mutations of this partition touch too (an edge
    # added before the transaction, from a vertex not heard of yet): the part is judged once they apply,
    # and until then nothing decides the transaction but the backstop
    behind: tuple[int, ...] = ()
    final: bool = False  # a transaction of this partition alone, decided by the owner itself (below)

    @property
    def ok(self) -> bool:
        return self.error_code is None


@dataclass(frozen=True)
class TxnDecision:
    """The verdict on a transaction; ``culprit`` is the partition whose part was rejected (if one was)."""

    txn_id: str
    commit: bool
    code: str = ""  # dead-letter reason of the culprit's part (the others get ``txn_aborted``)
    message: str = ""
    culprit: int | None = None
    parts: tuple[int, ...] = ()  # the partitions holding a part (they hear the decision)
    round_id: int = 0  # the newest vote it was decided on: a later vote is from a holder that must hear it again

    def reason_for(self, partition: int) -> str:
        return self.code if partition == self.culprit or self.culprit is None else ABORTED


@dataclass
class _Open:
    tag: TxnTag
    first_seen_s: float
    votes: dict[int, TxnVote] = field(default_factory=dict)
    # the newest vote's round (or the round, if later) when every part had voted and the others caught up
    settled_round: int | None = None


class TxnBook:
    """The coordinator's side of the protocol (module docstring): votes in, decisions out, verdicts kept
    for ``keep`` transactions so that a writer can ask for one after its call timed out."""

    def __init__(self, num_partitions: int, *, grace_ms: float, backstop_s: float, keep: int = 100_000) -> None:
        self.P = num_partitions
        self.grace_ms = grace_ms
        self.backstop_s = backstop_s
        self.keep = keep
        self.open: dict[str, _Open] = {}
        self.verdicts: collections.OrderedDict[str, TxnDecision] = collections.OrderedDict()

    def observe(
        self, votes: Iterable[TxnVote], now_s: float
    ) -> tuple[list[TxnDecision], list[tuple[int, TxnDecision]]]:
        """Record the latest vote per (transaction, partition).  Returns the verdicts of ``final`` votes (a
        transaction its owner decided alone, :func:`own_decision`) and ``(partition, decision)`` to send
        again: a vote on a decided transaction taken after the decision's own votes comes from a holder
        that must hear it (one that replays after a rollback, or holds a copy written again with the same
        id); older votes (a report read twice) are ignored, so nothing is sent twice to an owner that
        already applied it."""
        out, resend = [], []
        for v in votes:
            known = self.verdicts.get(v.tag.txn_id)
            if known is not None:
                if not v.final and v.round_id > known.round_id:
                    resend.append((v.partition, known))
                continue
            if v.final:
                d = own_decision(v)
                self.verdicts[v.tag.txn_id] = d
                self.open.pop(v.tag.txn_id, None)
                out.append(d)
                continue
            t = self.open.setdefault(v.tag.txn_id, _Open(v.tag, now_s))
            old = t.votes.get(v.partition)
            if old is None or v.round_id >= old.round_id:
                t.votes[v.partition] = v
        return out, resend

    def decide(
        self, round_id: int, visible_ms: Sequence[float | None], now_s: float, *, replaying: bool = False
    ) -> list[TxnDecision]:
        """Decisions reached now (see the module docstring); ``visible_ms[p]``: before that moment every
        record produced to partition ``p`` is applied (None: not known)."""
        out = []
        for txn_id, t in list(self.open.items()):
            d = self._decide_one(t, round_id, visible_ms, now_s, replaying)
            if d is not None:
                d = replace(d, parts=t.tag.parts, round_id=max(v.round_id for v in t.votes.values()))
                del self.open[txn_id]
                self.verdicts[txn_id] = d
                out.append(d)
        while len(self.verdicts) > self.keep:
            self.verdicts.popitem(last=False)
        return out

    def _decide_one(
        self, t: _Open, round_id: int, visible_ms: Sequence[float | None], now_s: float, replaying: bool
    ) -> TxnDecision | None:
        tid, parts = t.tag.txn_id, t.tag.parts
        bad = [v for p, v in sorted(t.votes.items()) if not v.ok]
        if bad:
            v = bad[0]
            return TxnDecision(
                tid,
                False,
                v.error_code or ABORTED,
                f"partition {v.partition} rejected its part: {v.error}",
                v.partition,
            )
        ts = min(v.timestamp_ms for v in t.votes.values())
        past = ts + self.grace_ms

        def caught_up(ps: Iterable[int]) -> bool:
            return all(visible_ms[p] is not None and visible_ms[p] >= past for p in ps)

        missing = [p for p in parts if p not in t.votes]
        if missing:
            if not replaying and caught_up(missing):
                return TxnDecision(
                    tid,
                    False,
                    ABORTED,
                    f"the parts for partitions {missing} never arrived (those partitions applied everything "
                    f"produced until {self.grace_ms:.0f} ms after the transaction)",
                )
            return self._backstop(t, now_s, replaying, f"the parts for partitions {missing} have not arrived")
        behind = [v for p, v in sorted(t.votes.items()) if v.behind]
        if behind:
            v = behind[0]
            return self._backstop(
                t,
                now_s,
                replaying,
                f"partition {v.partition}'s part waits behind earlier mutations that wait for unknown vertices "
                f"(it touches {list(v.behind[:3])})",
            )
        adds = set().union(*(v.adds for v in t.votes.values()))
        unresolved = sorted(set().union(*(v.unknown for v in t.votes.values())) - adds)
        if not unresolved:
            return TxnDecision(tid, True)
        others = [p for p in range(self.P) if p not in parts]
        if t.settled_round is None and caught_up(others):
            # The votes may come from the next round's ingest (fused into this round's last step), labelled
            # round_id + 1, and a vertex a part's partition applied in that ingest is announced only in
            # that round's structure step: a holder's vote counts once taken in a later round than every
            # vote present now (with every partition in the transaction, ``others`` is empty and this was
            # met at once: the chaos run aborted valid transactions right after its replays)
            t.settled_round = max(round_id, *(v.round_id for v in t.votes.values()))
        holders = [v for v in t.votes.values() if set(v.unknown) & set(unresolved)]
        if t.settled_round is not None and all(v.round_id > t.settled_round for v in holders) and not replaying:
            v = holders[0]
            return TxnDecision(
                tid,
                False,
                "unknown_vertex",
                f"partition {v.partition} rejected its part: edges from vertices that no partition had added "
                f"when the transaction was written and that it does not add itself (first: {unresolved[0]})",
                v.partition,
            )
        return self._backstop(t, now_s, replaying, f"edges from unknown vertices (first: {unresolved[0]})")

    def _backstop(self, t: _Open, now_s: float, replaying: bool, why: str) -> TxnDecision | None:
        if replaying or now_s - t.first_seen_s < self.backstop_s:
            return None
        return TxnDecision(t.tag.txn_id, False, ABORTED, f"no decision after {self.backstop_s:.0f} s: {why}")

    def reset(self) -> None:
        """After a rollback every owner votes again from scratch; verdicts already given stand."""
        self.open.clear()


def decides_alone(vote: TxnVote) -> bool:
    """A transaction wholly in the voter's partition needs no coordinator when its vote is a rejection or
    has no unknown source: the owner applies or dead-letters it at once (a round sooner) and reports
    the vote as ``final``; with unknown sources, or behind deferred mutations, it waits for the
    coordinator like any other (and votes again every round)."""
    return vote.tag.parts == (vote.partition,) and (not vote.ok or not (vote.unknown or vote.behind))


def own_decision(vote: TxnVote) -> TxnDecision:
    """The decision a ``final`` vote stands for."""
    if vote.ok:
        return TxnDecision(vote.tag.txn_id, True, parts=vote.tag.parts, round_id=vote.round_id)
    return TxnDecision(
        vote.tag.txn_id,
        False,
        vote.error_code or ABORTED,
        f"partition {vote.partition} rejected its part: {vote.error}",
        vote.partition,
        vote.tag.parts,
        vote.round_id,
    )


def adds_of(kind: np.ndarray, src: np.ndarray) -> tuple[int, ...]:
    """The vertices a part adds (its ADD_VERTEX rows' ids)."""
    from clustergnn.mutations import MutationKind

    return tuple(int(x) for x in np.unique(src[kind == MutationKind.ADD_VERTEX]))


class CommittedTxns:
    """The transactions an owner has applied recently, so that a retry of one (the same request written
    again through another gateway, or after a restart, with the same id) is not applied twice.

    An id is kept while its record's timestamp is within ``window_ms`` of the newest one seen, and at
    most ``max_entries`` ids.  It lives in the owner's snapshot part (:meth:`arrays`), and a replay adds
    the ids it re-applies, so it survives crashes of owners and of the driver."""

    PREFIX = "owner.txn_done_"

    def __init__(self, window_ms: float, max_entries: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._ids: collections.OrderedDict[str, int] = collections.OrderedDict()  # id -> timestamp, oldest first
        self._newest_ms = 0

    def __contains__(self, txn_id: str) -> bool:
        return txn_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, txn_id: str, timestamp_ms: int) -> None:
        self._ids[txn_id] = int(timestamp_ms)
        self._ids.move_to_end(txn_id)
        self._newest_ms = max(self._newest_ms, int(timestamp_ms))
        while self._ids and (
            len(self._ids) > self.max_entries or next(iter(self._ids.values())) < self._newest_ms - self.window_ms
        ):
            self._ids.popitem(last=False)

    def arrays(self) -> dict[str, np.ndarray]:
        lens, raw = pack_strings(list(self._ids))
        ts = np.array(list(self._ids.values()), dtype=np.int64)
        return {self.PREFIX + "lens": lens, self.PREFIX + "bytes": raw, self.PREFIX + "ts": ts}

    @classmethod
    def from_arrays(cls, arrays, window_ms: float, max_entries: int = 1_000_000) -> CommittedTxns:
        """Inverse of :meth:`arrays` (empty when the arrays are absent: a snapshot from before)."""
        out = cls(window_ms, max_entries)
        if cls.PREFIX + "lens" not in arrays:
            return out
        ids = unpack_strings(arrays[cls.PREFIX + "lens"], arrays[cls.PREFIX + "bytes"])
        for txn_id, ts in zip(ids, arrays[cls.PREFIX + "ts"].tolist(), strict=True):
            out.add(txn_id, ts)
        return out


def pack_strings(items: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """``items`` as snapshot arrays: UTF-8 lengths (int64, -1 for None) and the bytes concatenated (uint8)."""
    raw = [x.encode() if x is not None else b"" for x in items]
    lens = np.array([len(b) if x is not None else -1 for b, x in zip(raw, items, strict=True)], dtype=np.int64)
    return lens, np.frombuffer(b"".join(raw), dtype=np.uint8).copy()


def unpack_strings(lens: np.ndarray, raw: np.ndarray) -> list[str | None]:
    """Inverse of :func:`pack_strings`."""
    data, at, out = bytes(raw), 0, []
    for n in lens.tolist():
        out.append(data[at : at + n].decode() if n >= 0 else None)
        at += max(n, 0)
    return out
