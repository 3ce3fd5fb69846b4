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


def test_a_records_reference_time_is_never_after_it_was_read() -> None:
    """``ref_ms``: the Kafka timestamp, or the read time when the producer's clock runs ahead of it (a
    future timestamp must not hold the edge, or claim visibility, past what anyone has reached)."""
    b = MutationBatch.add_edges([5], [2])
    assert _Pending(b, 0, 1_000, 2.0).ref_ms == 1_000  # produced at 1.0 s, read at 2.0 s
    assert _Pending(b, 0, 9_000_000, 2.0).ref_ms == 2_000  # "produced" in the future: read at 2.0 s
