"""The read replica applies round publications in order: removals, then upserts."""

from __future__ import annotations

import numpy as np
import pytest

from clustergnn import UnknownVertexError
from clustergnn.partitioned import Published
from clustergnn.replica import EmbeddingReplica

E = np.zeros(0, dtype=np.int64)


def pub(removed=E, ids=E, value=0.0, version=1) -> Published:
    ids = np.asarray(ids, dtype=np.int64)
    return Published(
        np.asarray(removed, dtype=np.int64),
        ids,
        np.full((len(ids), 3), value, np.float32),
        np.full(len(ids), version, np.int64),
    )


def test_upserts_removals_and_growth() -> None:
    r = EmbeddingReplica(3, capacity=2)
    r.apply([pub(ids=[5, 7, 2**40], value=1.0), pub(ids=[9], value=2.0)])
    rows, ver = r.get([9, 2**40])
    assert rows[:, 0].tolist() == [2.0, 1.0] and ver.tolist() == [1, 1] and len(r) == 4
    r.apply([pub(removed=[7], ids=[5], value=3.0, version=2)])
    assert r.get([5])[0][0, 0] == 3.0 and r.get([5])[1][0] == 2
    with pytest.raises(UnknownVertexError, match="unknown vertex id 7"):
        r.get([5, 7])
    r.apply([pub(removed=[5], ids=[5], value=4.0, version=3)])  # removed and re-added in one round
    assert r.get([5])[0][0, 0] == 4.0
