"""The two kernel paths every exactness test of the engine runs on: the fused CPU kernels (numba) and plain
torch (``clustergnn.cpu_kernels``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from clustergnn import cpu_kernels

KERNELS = ["fused", "torch"]


@contextlib.contextmanager
def kernels(which: str) -> Iterator[None]:
    """Run the body on ``which`` kernels; skips ``fused`` where they are not available."""
    if which == "torch":
        with cpu_kernels.disabled():
            yield
    else:
        if not cpu_kernels.enabled():
            pytest.skip("no fused kernels (numba missing or CLUSTERGNN_KERNELS=torch)")
        yield
