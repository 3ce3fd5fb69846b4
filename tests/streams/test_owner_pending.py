"""An owner's waiting records (deferred edges, a transaction's part) survive a snapshot: the arrays
they are written as (``actors.owner.pending_arrays``) give the same records back, tags included."""

from __future__ import annotations

import numpy as np
import torch

from actors.owner import _Pending, pending_arrays, pending_from_arrays
from clustergnn.mutations import MutationBatch
from clustergnn.snapshot import SUPPORTED_DTYPES
from clustergnn.txn import TxnTag


def test_pending_records_round_trip_with_their_transaction_tags() -> None:
    recs = [
        _Pending(MutationBatch.add_edges([5, 7], [2, 4]), 10, 1000, 0.0),
        _Pending(MutationBatch.add_vertices([8], torch.ones(1, 3)), 11, 1001, 0.0, TxnTag("t-1", (0, 2))),
        _Pending(MutationBatch.remove_edges([9], [2]), 12, 1002, 0.0),
        _Pending(MutationBatch.update_features([2], torch.full((1, 3), 2.0)), 13, 1003, 0.0, TxnTag("é", (0,))),
    ]
    arrays = pending_arrays(recs)
    assert all(a.dtype.name in SUPPORTED_DTYPES for a in arrays.values())
    back = pending_from_arrays(arrays, now_s=5.0)
    assert [(r.offset, r.timestamp_ms, r.txn) for r in back] == [(r.offset, r.timestamp_ms, r.txn) for r in recs]
    for a, b in zip(recs, back, strict=True):
        assert np.array_equal(a.batch.kind, b.batch.kind) and np.array_equal(a.batch.src, b.batch.src)
        assert np.array_equal(a.batch.dst, b.batch.dst) and torch.equal(
            a.batch.features.reshape(-1), b.batch.features.reshape(-1)
        )
    old = {k: v for k, v in arrays.items() if "txn" not in k}  # a snapshot from before transactions
    assert [r.txn for r in pending_from_arrays(old, now_s=5.0)] == [None] * 4


def test_an_owner_replaces_its_kafka_client_after_polling_without_answers(monkeypatch) -> None:
    """``_watch_fetches``: answers keep the client; polls without any answer for ``FETCH_STALL_S`` replace
    it (counted from the first such poll, so a pause in polling does not count); a failed reconnect is
    tried again one period later."""
    import actors.owner as owner_mod
    from actors.owner import FETCH_STALL_S, PartitionOwner

    class Client:
        def __init__(self) -> None:
            self.last_response_s: dict[int, float] = {0: 100.0}
            self.reconnects, self.fail = 0, False

        def reconnect(self) -> None:
            if self.fail:
                raise OSError("no broker")
            self.reconnects += 1

        def position(self, partition: int) -> int:
            return 7

    now = [1000.0]
    monkeypatch.setattr(owner_mod.time, "time", lambda: now[0])
    o = PartitionOwner.__new__(PartitionOwner)
    o.partition, o.consumer = 0, Client()
    o._fetch_seen, o._fetch_stall_since = None, None

    def poll(dt: float, answered: bool = False) -> None:
        now[0] += dt
        if answered:
            o.consumer.last_response_s[0] = now[0]
        o._watch_fetches()

    poll(0.0)  # first sight of the last answer
    for _ in range(20):
        poll(1.0, answered=True)
    assert o.consumer.reconnects == 0
    poll(60.0)  # a long pause, then polls without answers: counted from the first of them
    assert o.consumer.reconnects == 0
    poll(FETCH_STALL_S - 0.5)
    assert o.consumer.reconnects == 0
    poll(1.0)
    assert o.consumer.reconnects == 1
    o.consumer.fail = True
    poll(FETCH_STALL_S + 0.1)
    assert o.consumer.reconnects == 1
    o.consumer.fail = False
    poll(1.0)
    assert o.consumer.reconnects == 1, "the next try waits a whole period"
    poll(FETCH_STALL_S)
    assert o.consumer.reconnects == 2
