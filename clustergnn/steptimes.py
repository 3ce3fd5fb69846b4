"""Per-step wall times of the update path, for benchmarks (off by default; free when off).

``CLUSTERGNN_STEP_TIMES=1`` in the environment (read at import) or :func:`enable` turns it on; the
update path then calls :func:`mark` after each step, which adds the time since the previous mark (or
:func:`start`) to that step's total.  Off, each call site costs one module-attribute test
(``if steptimes.ON:``), a few tens of nanoseconds.  Step names are ``"l{layer}.{step}"`` for the
layer steps (:mod:`clustergnn.propagation`) and plain names for the batch's own (``structure``,
``context``, ``clear``).  Wall times on the caller's thread: on CUDA a step's kernels may still run
when it is marked (no synchronisation here), so the split is meaningful on CPU only.

    steptimes.enable(); steptimes.reset()
    eng.apply(batch)
    steptimes.totals()     # {"structure": 0.0012, "l0.messages": ..., ...} seconds
"""

from __future__ import annotations

import os
import time

ON = os.environ.get("CLUSTERGNN_STEP_TIMES", "").lower() not in ("", "0", "false", "no")
_totals: dict[str, float] = {}
_counts: dict[str, int] = {}
_last = 0.0
_layer = ""  # prefix of layer steps ("l0."), set by the propagation as it enters a layer


def enable(on: bool = True) -> None:
    """Turn the timers on (or off) for this process."""
    global ON
    ON = bool(on)


def reset() -> None:
    """Forget every total."""
    _totals.clear()
    _counts.clear()


def start() -> None:
    """Start the clock for the next :func:`mark`."""
    global _last
    _last = time.perf_counter()


def mark(step: str) -> None:
    """Add the time since the previous mark (or :func:`start`) to ``step``'s total."""
    global _last
    now = time.perf_counter()
    _totals[step] = _totals.get(step, 0.0) + now - _last
    _last = now


def layer(li: int) -> None:
    """Name the layer whose steps :func:`lmark` marks next."""
    global _layer
    _layer = f"l{li}."


def lmark(step: str) -> None:
    """:func:`mark` of the current layer's ``step`` (``"l{layer}.{step}"``)."""
    mark(_layer + step)


def count(what: str, n: int) -> None:
    """Add ``n`` to the current layer's counter ``what`` (``"l{layer}.{what}"``: rows, contributions)."""
    key = _layer + what
    _counts[key] = _counts.get(key, 0) + int(n)


def counts() -> dict[str, int]:
    """The counters since the last :func:`reset`."""
    return dict(_counts)


def totals() -> dict[str, float]:
    """Seconds per step since the last :func:`reset`, in the order the steps first ran."""
    return dict(_totals)
