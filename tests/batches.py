"""Assertions on MutationBatch values shared by the wire-format and streaming tests."""

from __future__ import annotations

import numpy as np
import torch

from clustergnn.mutations import MutationBatch


def assert_same(a: MutationBatch, b: MutationBatch) -> None:
    """``a`` and ``b`` hold the same mutations, features bit-for-bit."""
    np.testing.assert_array_equal(a.kind, b.kind)
    np.testing.assert_array_equal(a.src, b.src)
    np.testing.assert_array_equal(a.dst, b.dst)
    assert a.features.shape[0] == b.features.shape[0]
    if a.features.shape[0]:
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
