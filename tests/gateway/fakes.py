"""An in-memory :class:`~clustergnn.serving.EmbeddingBackend` for gateway tests (no Ray, no Kafka).

It keeps the shape of the real thing so the gateway's freshness semantics can be tested end to end:

* a *fake log*: ``apply`` appends one record per mutation to the Kafka partition its routing vertex
  hashes to (:func:`clustergnn.partition.route`, as the real producer routes) and returns
  partition -> offset of its last record, as the real backend does;
* simulated partition owners that read every record at once and apply it immediately
  (``apply_delay_s=0``), after a delay (``apply_delay_s > 0``), or only on ``advance()``
  (``apply_delay_s=None``, for lag and deadline tests).  They report to the same
  :class:`clustergnn.freshness.Freshness` the Ray cluster uses, as the real owners do after a round: the
  next offset not applied, the timestamp of the oldest record not applied (pending) or, when none is,
  the moment they caught up.  Watermarks, staleness, bound checks, waiting and ``answer_now``'s
  judge-once (:func:`clustergnn.freshness.settle`) are the real ones;
* per-vertex versions, bumped by every applied mutation that touches the vertex, and embeddings that
  are a deterministic function of (vertex, layer, version) (:meth:`expected`);
* owners that can be marked down (``set_alive``) and a ``status()`` that can be made to fail;
* per owner, memory by kind as the real owners report it (``PartitionStatus.memory_bytes``: the bytes of
  the float32 rows it would hold, input features and every layer's output, counted as ``cache``; nothing
  of the other kinds) and the resident memory of the process it runs in (this one).

Advancing is lazy (done inside ``read``/``status``, at the instant the freshness check judges), so the
fake needs no thread.  Time comes from an injected :class:`~clustergnn.freshness.Clock`.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clustergnn.errors import MutationError, UnknownVertexError
from clustergnn.freshness import Clock, Freshness, SystemClock, settle
from clustergnn.memory import MEMORY_KINDS, process_rss_bytes
from clustergnn.mutations import MutationBatch, MutationKind
from clustergnn.partition import HashPartitionMap, route
from clustergnn.serving import (
    FEATURES,
    ClusterStatus,
    ModelInfo,
    Offsets,
    PartitionStatus,
    PartitionUnavailableError,
    ReadResult,
    resolve_read,
)


@dataclass(frozen=True)
class _Record:
    kind: MutationKind
    src: int
    dst: int
    produced_ms: float  # its Kafka timestamp


class FakeBackend:
    """A small graph ``0..num_vertices-1`` with ``len(dims)`` layers; see the module docstring."""

    def __init__(
        self,
        *,
        num_vertices: int = 16,
        dims: Sequence[int] = (8, 4),
        in_dim: int = 8,
        num_kafka_partitions: int = 2,
        num_owners: int = 2,
        apply_delay_s: float | None = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.dims = tuple(int(d) for d in dims)  # output width of each layer
        self.in_dim = int(in_dim)
        digest = hashlib.sha256(f"fake {in_dim} {self.dims}".encode()).hexdigest()
        self.model = ModelInfo(["FakeConv"] * len(self.dims), [in_dim, *self.dims], digest)
        self.num_kafka_partitions = num_kafka_partitions
        self._pmap = HashPartitionMap(num_kafka_partitions)
        self.num_owners = num_owners
        self.apply_delay_s = apply_delay_s
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.freshness = Freshness(num_kafka_partitions, self.clock)  # guarded by self._cond
        self._cond = threading.Condition()
        self._versions: dict[int, int] = {v: 0 for v in range(num_vertices)}
        self._log: list[list[_Record]] = [[] for _ in range(num_kafka_partitions)]
        self._applied = [0] * num_kafka_partitions  # per simulated owner: the next offset to apply
        self._alive = [True] * num_owners
        self.mutations_per_s = 0.0
        self.status_error: Exception | None = None
        self.read_count = 0
        self.last_timeout_s: float | None = None
        self.txns: dict[str, dict[int, int]] = {}  # transaction id -> offsets (apply_txn)

    # ----------------------------------------------------------------- test controls
    def expected(
        self, vertex: int, layer: int | None = -1, version: int | None = None, *, input_features: bool = False
    ) -> np.ndarray:
        """The embedding the fake serves for ``vertex`` at ``layer`` (current version by default), or
        its input features (``input_features=True``, ``layer=None``)."""
        layer = resolve_read(layer, len(self.dims), input_features)
        if version is None:
            version = self._versions[vertex]
        width = self.in_dim if layer == FEATURES else self.dims[layer]
        x = np.arange(width, dtype=np.float64)
        return np.sin(0.37 * x + 1.3 * vertex + 0.7 * version + layer).astype(np.float32)

    def version(self, vertex: int) -> int:
        return self._versions[vertex]

    def set_alive(self, owner: int, alive: bool) -> None:
        with self._cond:
            self._alive[owner] = alive
            self._cond.notify_all()

    def advance(self) -> None:
        """Apply every pending record now (whatever ``apply_delay_s`` says)."""
        with self._cond:
            self._advance_locked(math.inf)
            self._report_locked(self.clock.now_ms())
            self._cond.notify_all()

    def bump(self, vertex: int) -> None:
        """Write and apply one UPDATE_FEATURES-like change of ``vertex`` (a new version)."""
        with self._cond:
            self._versions[vertex] += 1
            self._cond.notify_all()

    # ----------------------------------------------------------------- EmbeddingBackend
    def apply(self, batch: MutationBatch) -> dict[int, int]:
        if len(batch) == 0:
            raise MutationError("batch is empty; give at least 1 mutation")
        now_ms = self.clock.now_ms()
        last: dict[int, int] = {}
        with self._cond:
            owners = self._pmap.owner(route(batch)).tolist()  # the real routing rule, not a copy of it
            for kind, src, dst, p in zip(batch.kind.tolist(), batch.src.tolist(), batch.dst.tolist(), owners):
                self._log[p].append(_Record(MutationKind(kind), src, dst, now_ms))
                last[p] = len(self._log[p]) - 1
            self._cond.notify_all()
        return last

    def apply_txn(self, batch: MutationBatch, txn_id: str) -> dict[int, int]:
        """:meth:`apply`, remembered as a transaction.  The fake does not judge writes against a graph
        (it has none): every transaction commits once its records are applied; the owners' rejections
        are tested against the real cluster only (tests/integration/test_apply_verdicts.py)."""
        offsets = self.apply(batch)
        self.txns[txn_id] = offsets
        return offsets

    def await_txn(self, txn_id: str, offsets: Offsets, timeout_s: float) -> bool:
        """As ``Cluster.await_txn``: True once the transaction's offsets are visible, False at ``timeout_s``."""
        if txn_id not in self.txns:
            raise KeyError(f"unknown transaction {txn_id}")
        with self._cond:
            verdict = self.freshness.wait(
                None,
                offsets,
                timeout_s=timeout_s,
                sleep=self._cond.wait,
                poll_s=0.002,
                before_check=self._catch_up_locked,
            )
        return verdict.met

    def read(
        self,
        ids: np.ndarray,
        *,
        layer: int | None = None,
        max_staleness_ms: float | None = None,
        min_offsets: Offsets | None = None,
        timeout_s: float = 5.0,
        input_features: bool = False,
        answer_now: bool = False,
    ) -> ReadResult:
        """As ``Cluster.read``; ``answer_now`` judges the bound once (the fake has no start to wait for)."""
        layer_idx = resolve_read(layer, len(self.dims), input_features)  # the real cluster's rule
        self.freshness.validate(max_staleness_ms, min_offsets)
        self.read_count += 1
        self.last_timeout_s = timeout_s
        with self._cond:
            verdict = self.freshness.wait(
                max_staleness_ms,
                min_offsets,
                timeout_s=0.0 if answer_now else timeout_s,  # 0: judged once (without a bound: met at once)
                sleep=self._cond.wait,
                poll_s=0.002,
                before_check=self._catch_up_locked,
            )
            bound_met = settle(verdict, answer_now=answer_now, timeout_s=timeout_s)  # raises when it waited
            ids = np.asarray(ids, dtype=np.int64)
            rows, versions = [], []
            for v in ids.tolist():
                if v not in self._versions:
                    raise UnknownVertexError(f"vertex {v} is not in the graph")
                versions.append(self._versions[v])
                rows.append(self.expected(v, None if input_features else layer_idx, input_features=input_features))
            width = self.in_dim if input_features else self.dims[layer_idx]
            emb = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
            return ReadResult(
                embeddings=emb,
                versions=np.asarray(versions, dtype=np.int64),
                staleness_ms=verdict.staleness_ms if verdict.staleness_ms is not None else 0.0,
                watermark=verdict.watermark,
                layer=layer_idx,
                model_digest=self.model.digest,
                bound_met=bound_met,
            )

    def status(self) -> ClusterStatus:
        if self.status_error is not None:
            raise self.status_error
        with self._cond:
            now_ms = self.clock.now_ms()
            self._advance_locked(now_ms)
            self._report_locked(now_ms)
            watermark = self.freshness.watermark
            parts = []
            rss = process_rss_bytes()
            row_bytes = 4 * (self.in_dim + sum(self.dims))
            for o in range(self.num_owners):
                owned = [p for p in range(self.num_kafka_partitions) if p % self.num_owners == o]
                n_owned = sum(1 for v in self._versions if v % self.num_owners == o)
                parts.append(
                    PartitionStatus(
                        partition=o,
                        alive=self._alive[o],
                        num_vertices=n_owned,
                        watermark={p: watermark[p] for p in owned},
                        lag=sum(len(self._log[p]) - watermark[p] for p in owned),
                        applied_mutations=sum(watermark[p] for p in owned),
                        mutations_per_s=self.mutations_per_s,
                        memory_bytes={k: n_owned * row_bytes if k == "cache" else 0 for k in MEMORY_KINDS},
                        rss_bytes=rss,
                    )
                )
            return ClusterStatus(
                partitions=parts,
                watermark=watermark,
                num_layers=len(self.dims),
                embedding_dims=list(self.dims),
                extra={"fake": 1.0},
                model=self.model,
            )

    # ----------------------------------------------------------------- internals
    def _catch_up_locked(self, now_ms: float) -> None:
        """Before each freshness check: fail if an owner is down, else let the owners apply what they
        would have by ``now_ms`` and report."""
        down = [o for o, a in enumerate(self._alive) if not a]
        if down:
            raise PartitionUnavailableError(f"partition owner {down[0]} is down")
        self._advance_locked(now_ms)
        self._report_locked(now_ms)

    def _report_locked(self, now_ms: float) -> None:
        """What each simulated owner reports at the end of a round (see the module docstring)."""
        for p, log in enumerate(self._log):
            w = self._applied[p]
            pending_ms = log[w].produced_ms if w < len(log) else None
            self.freshness.report(
                p, w, oldest_pending_ts_ms=pending_ms, caught_up_at_ms=now_ms if pending_ms is None else None
            )

    def _advance_locked(self, now_ms: float) -> None:
        if self.apply_delay_s is None and now_ms != math.inf:
            return
        delay_ms = 0.0 if now_ms == math.inf else float(self.apply_delay_s or 0.0) * 1000.0
        for p, log in enumerate(self._log):
            while self._applied[p] < len(log) and log[self._applied[p]].produced_ms + delay_ms <= now_ms:
                self._apply_record(log[self._applied[p]])
                self._applied[p] += 1

    def _apply_record(self, r: _Record) -> None:
        if r.kind is MutationKind.ADD_VERTEX:
            self._versions[r.src] = self._versions[r.src] + 1 if r.src in self._versions else 0
        elif r.kind is MutationKind.REMOVE_VERTEX:
            self._versions.pop(r.src, None)
        elif r.kind is MutationKind.UPDATE_FEATURES:
            if r.src in self._versions:
                self._versions[r.src] += 1
        else:  # an edge changes both endpoints' embeddings (a bad edge would go to dead letters)
            for v in {r.src, r.dst}:
                if v in self._versions:
                    self._versions[v] += 1
