"""Memory accounting: every array an engine holds, by name, kind, dtype and shape (``Engine.memory_report``).

The report lists the arrays themselves (allocated bytes, capacity rows included), not estimates, so a
benchmark's "bytes per vertex by cache" is what the process really holds for them.  Kinds:

* ``cache``: a layer's table (``h``, ``msg``, ``agg``, ``selfc``), one row per slot (in a partition, ``h``, ``agg``,
  ``selfc`` and ``drift`` one row per owned vertex: :mod:`clustergnn.caches`, "Owned rows");
* ``per_slot``: the other per-slot arrays (``ghost``, ``remote_out``, ``version``, a partition's readers and
  owned-row maps ``rowmap``, ``slot_of``, ``free_rows``);
* ``structure``: adjacency pools and per-vertex block arrays, the id maps;
* ``scratch``: reusable hot-path arrays (kept all -1 / zero between calls; they grow with the slots);
* ``model``: the rules' weights (per model, not per vertex).

``tests/core/test_memory.py`` walks an engine's objects and checks that every array it finds is in the
report, so an array added without an entry fails there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # graph.py uses this module and imports no torch
    import torch

MemoryKind = Literal["cache", "per_slot", "structure", "scratch", "model"]
MEMORY_KINDS: tuple[MemoryKind, ...] = ("cache", "per_slot", "structure", "scratch", "model")

# A CPython dict entry with two small ints, roughly: the only estimate in the report (ids outside the
# direct-address table, none in the benchmarks)
DICT_ENTRY_BYTES = 100


@dataclass(frozen=True)
class MemoryEntry:
    """One array of an engine: its kind, element type, shape and allocated bytes."""

    kind: MemoryKind
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def entry(kind: MemoryKind, a: np.ndarray | torch.Tensor) -> MemoryEntry:
    """The entry of one numpy array or torch tensor (a tensor's bytes are its storage's, in elements)."""
    if not isinstance(a, np.ndarray):  # a torch tensor
        return MemoryEntry(kind, str(a.dtype).removeprefix("torch."), tuple(a.shape), a.numel() * a.element_size())
    return MemoryEntry(kind, str(a.dtype), tuple(a.shape), int(a.nbytes))


def entries_of(
    prefix: str, kind: MemoryKind, arrays: dict[str, np.ndarray | torch.Tensor | None]
) -> dict[str, MemoryEntry]:
    """``{prefix + name: entry}`` of the arrays that are not None."""
    return {f"{prefix}{name}": entry(kind, a) for name, a in arrays.items() if a is not None}


def total_bytes(report: dict[str, MemoryEntry], kind: MemoryKind | None = None) -> int:
    """The bytes of ``report``'s entries (of one ``kind``, or all)."""
    return sum(e.nbytes for e in report.values() if kind is None or e.kind == kind)


def tensors_of(obj: object) -> dict[str, torch.Tensor]:
    """The tensors ``obj`` holds: its attributes that are tensors or tuples/lists of tensors, and the
    parameters and buffers of its attributes that are ``torch.nn.Module`` s (a rule's weights)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, v in vars(obj).items():
        if isinstance(v, torch.Tensor):
            out[name] = v
        elif isinstance(v, (tuple, list)):
            out |= {f"{name}.{i}": t for i, t in enumerate(v) if isinstance(t, torch.Tensor)}
        elif isinstance(v, torch.nn.Module):
            out |= {f"{name}.{k}": t for k, t in v.state_dict(keep_vars=True).items()}
    return out


def process_rss_bytes() -> int:
    """Resident memory of this process (``VmRSS``), 0 where /proc has none."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
