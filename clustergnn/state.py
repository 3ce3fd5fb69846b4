"""An engine's complete hard state as named numpy arrays plus JSON meta, and back, exactly.

:meth:`Engine.export_state <clustergnn.engine.Engine.export_state>` returns ``(arrays, meta)``, what
:meth:`SnapshotStore.write_part <clustergnn.snapshot.SnapshotStore.write_part>` takes;
:meth:`Engine.from_state <clustergnn.engine.Engine.from_state>` builds an engine from them.  Taken
between batches (a partition: between rounds), the state is:

==================================  ===================  ==============================================
array                               shape, dtype         what
==================================  ===================  ==============================================
``slots``, ``ids``                  ``(n,)`` int64       live slots (ascending) and their external ids
``in_indptr``, ``in_nbrs``          CSR, int64 / int32   each live vertex's in-edges, in block order
``out_indptr``, ``out_nbrs``        CSR, int64 / int32   each live vertex's out-edges, in block order
``free``                            ``(k,)`` int64       dead slots, in the order new vertices take them
``h0`` .. ``hL``                    ``(n', D_l)`` f32    features and every layer's output
``msg{l}``                          ``(n, D)`` f32       cached messages
``selfc{l}``                        ``(n', D)`` f32      self terms
``agg{l}``                          ``(n', D)`` f64/f32  aggregates (float64 for sums), absent for GAT
``version``, ``remote_out``         ``(n,)`` int64       per vertex: round of the last change; remote
                                                         out-degree
``ghost``                           ``(n,)`` bool        mirrors another partition's vertex
``readers`` (partition)             ``(n, P)`` int64     out-edges of each vertex held by each partition
``dir_ids``, ``dir_states`` (part.) ``(m,)`` int64/int8  the directory's known ids: live or removed
==================================  ===================  ==============================================

where ``n'`` counts the slots that are not ghosts: a ghost (a remote source) has only messages, which
its owner sends, and its rows of the other tables are zero, so they are not written (format version 2;
a version-1 state, with every row, is read too).  In a partition of a random graph most slots are
ghosts, and this makes a snapshot 2-3x smaller.  And ``meta`` (:class:`StateMeta`): the round counter,
batch and mutation counts, the slot high-water mark, the model's widths and rule kinds, the partition
and P.

A table the engine does not keep is not written: ``msg0`` where it is ``h0`` (layer 0's message is its
input, in a single engine), ``selfc{l}`` where the rule recomputes its self term at finish
(:mod:`clustergnn.caches`); a state that has them (written before these cuts) is read, and they are
ignored (they equal what the engine derives).

**Why a restore is exact.**  Every array is the engine's own bits (no recompute, no float64 rounded to
float32), for live slots only, so a restored engine needs no more capacity than ``next_slot``.  It is
also *bit-identical in what it does next*: slot numbers are kept, with the free list in its order, so
new vertices get the same slots; and each vertex's in- and out-edge blocks keep their order.  The
rules add a row's terms in block order (recomputes) and in source-slot order (the sums' deltas), so the
restored engine adds the same terms in the same order as the original and every later batch leaves
both with the same bits (``tests/core/test_state.py`` checks ``torch.equal`` on every cache).  Only the
adjacency pool's layout differs (blocks are packed afresh), which no read sees.  Scratch space, the
DGL/CSR views and the fused kernels' buffers are derived and rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from clustergnn.errors import ClusterGNNError
from clustergnn.graph import GraphState

STATE_FORMAT = "clustergnn-engine-state"
STATE_VERSION = 2  # 2: a partition does not write its ghosts' rows of h, agg, selfc (all zero); 1 is read too
GRAPH_ARRAYS: dict[str, tuple[np.dtype, int]] = {  # name -> (dtype, rows relative to n: 0 = n, 1 = n + 1, -1 free)
    "slots": (np.dtype(np.int64), 0),
    "ids": (np.dtype(np.int64), 0),
    "in_indptr": (np.dtype(np.int64), 1),
    "in_nbrs": (np.dtype(np.int32), -1),
    "out_indptr": (np.dtype(np.int64), 1),
    "out_nbrs": (np.dtype(np.int32), -1),
    "free": (np.dtype(np.int64), -1),
}


class StateError(ClusterGNNError, ValueError):
    """An exported state does not fit the engine it is restored into, or is malformed."""


@dataclass(frozen=True)
class StateMeta:
    """The scalar half of an engine's state (JSON: ``to_json``/``from_json``)."""

    round: int
    batches: int
    mutations: int
    next_slot: int
    dims: tuple[int, ...]  # D_0 .. D_L: feature width, then every layer's output width
    rules: tuple[str, ...]  # each layer's rule class, e.g. "SageRule"
    partition: int | None = None  # a PartitionEngine's partition, else None
    num_partitions: int | None = None
    format_version: int = STATE_VERSION  # of the state read (from_json); export writes STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(format=STATE_FORMAT, format_version=STATE_VERSION, dims=list(self.dims), rules=list(self.rules))
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StateMeta:
        if not isinstance(d, Mapping) or d.get("format") != STATE_FORMAT:
            got = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise StateError(f"not an engine state: format must be {STATE_FORMAT!r}, got {got!r}")
        if d.get("format_version") not in (1, STATE_VERSION):
            raise StateError(
                f"engine state format_version must be 1 or {STATE_VERSION}, got {d.get('format_version')!r}"
            )
        try:
            return cls(
                round=int(d["round"]),
                batches=int(d["batches"]),
                mutations=int(d["mutations"]),
                next_slot=int(d["next_slot"]),
                dims=tuple(int(x) for x in d["dims"]),
                rules=tuple(str(x) for x in d["rules"]),
                partition=None if d.get("partition") is None else int(d["partition"]),
                num_partitions=None if d.get("num_partitions") is None else int(d["num_partitions"]),
                format_version=int(d["format_version"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"engine state meta is malformed: {e!r} in {dict(d)!r}") from e

    def check_rules(self, rules: Sequence[str]) -> None:
        """``StateError`` naming both when the state was taken with other layer types."""
        if tuple(rules) != self.rules:
            raise StateError(f"the state was taken with rules {list(self.rules)}, the engine has rules {list(rules)}")

    def check_dims(self, dims: Sequence[int]) -> None:
        """``StateError`` naming both when the state was taken with other layer widths."""
        if tuple(dims) != self.dims:
            raise StateError(f"the state was taken with layer widths {list(self.dims)}, the engine has {list(dims)}")


def rule_kinds(rules: Sequence[object]) -> tuple[str, ...]:
    return tuple(type(r).__name__ for r in rules)


def graph_arrays(g: GraphState) -> dict[str, np.ndarray]:
    return {name: getattr(g, name) for name in GRAPH_ARRAYS}


def graph_state(arrays: Mapping[str, np.ndarray], meta: StateMeta) -> GraphState:
    """The graph half of ``arrays``, dtypes and shapes checked; ``GraphState.check`` does the rest."""
    missing = sorted(set(GRAPH_ARRAYS) - set(arrays))
    if missing:
        raise StateError(f"engine state lacks graph arrays {missing} (has {sorted(arrays)})")
    n = len(arrays["slots"])
    for name, (dtype, rows) in GRAPH_ARRAYS.items():
        a = arrays[name]
        want = (n + rows,) if rows >= 0 else (len(a),)
        if a.dtype != dtype or a.ndim != 1 or a.shape != want:
            raise StateError(f"array {name!r}: expected shape {want} {dtype}, got {a.shape} {a.dtype}")
    g = GraphState(**{name: arrays[name] for name in GRAPH_ARRAYS}, next_slot=meta.next_slot)
    try:
        g.check()
    except ValueError as e:
        raise StateError(str(e)) from e
    return g


def check_rows(arrays: Mapping[str, np.ndarray], specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], n: int) -> None:
    """Every per-vertex array of ``specs`` is present with ``n`` rows, its dtype and its width; ``StateError``
    naming the expected and the found shape (a state taken with another model) otherwise."""
    for name, (dtype, tail) in specs.items():
        if name not in arrays:
            raise StateError(f"engine state lacks array {name!r} (expected shape {(n, *tail)} {dtype})")
        a = arrays[name]
        if a.shape != (n, *tail) or a.dtype != dtype:
            raise StateError(
                f"array {name!r}: expected shape {(n, *tail)} {dtype} (the engine's model), got {a.shape} {a.dtype}"
            )


def check_no_extra(arrays: Mapping[str, np.ndarray], known: set[str]) -> None:
    """An array the engine would not read means the state came from another model (e.g. an aggregate of
    a layer that now keeps none)."""
    extra = sorted(set(arrays) - known)
    if extra:
        raise StateError(f"engine state has arrays {extra} this engine's model does not keep (known: {sorted(known)})")
