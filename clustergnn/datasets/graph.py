"""A temporal graph held as columns, and its conversion into :class:`MutationBatch` streams.

A :class:`TemporalGraph` is an initial graph plus a time-ordered stream of edge events.  It is a pure
value: loading (``real.py``, ``synthetic.py``) builds one, and :meth:`TemporalGraph.stream_batches`
turns it into the batches the engine, the Kafka producer and the demo consume.  Batch building is
vectorised per batch (no Python loop per event), so a million events stream in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clustergnn.mutations import MutationBatch, MutationKind

#: Width of the seeded-random features when a dataset has no native ones and no ``dim`` is asked for.
DEFAULT_RANDOM_FEATURE_DIM = 32

_ROWS_PER_CHUNK_ELEMS = 1 << 22  # bounds the uint64 temporaries of feature hashing to ~32 MiB each
# Odd 64-bit constants: the golden-ratio increment of splitmix64 and two other well-mixed odd
# multipliers, so (id, column, seed) map to distinct keys before the finaliser mixes them.
_K_ID = np.uint64(0x9E3779B97F4A7C15)
_K_COL = np.uint64(0xD1B54A32D192ED03)
_K_SEED = np.uint64(0xC2B2AE3D27D4EB4F)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _ids_array(ids: object, name: str = "ids") -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer vertex ids, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def hashed_features(ids: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    """Deterministic pseudo-random features in ``[-1, 1)``, shape ``(len(ids), dim)``, float32.

    Entry ``(i, c)`` is the splitmix64 finaliser of ``id*K1 + (c+1)*K2 + seed*K3`` (mod 2^64), top 24
    bits scaled.  It depends only on ``(id, c, seed)``: not on the order ids are asked in, not on the
    batch they arrive in, not on ``dim`` (a narrower width is a prefix of a wider one).  That is
    what lets the engine, the producer and the reference model agree on features without sharing them.
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    ids = _ids_array(ids)
    out = np.empty((len(ids), dim), dtype=np.float32)
    if len(ids) == 0:
        return out
    rows = max(1, _ROWS_PER_CHUNK_ELEMS // dim)
    with np.errstate(over="ignore"):  # wrapping mod 2^64 is the point
        seed_key = np.uint64(seed % (1 << 64)) * _K_SEED
        col_key = (np.arange(1, dim + 1, dtype=np.uint64) * _K_COL + seed_key)[None, :]
        for start in range(0, len(ids), rows):
            z = ids[start : start + rows].view(np.uint64)[:, None] * _K_ID + col_key
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z ^= z >> np.uint64(31)
            # 24 bits fit a float32 mantissa exactly, so the map to [-1, 1) loses nothing.
            out[start : start + rows] = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-23) - 1.0
    return out


def interleave(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each undirected pair as ``u->v`` then ``v->u`` (the order ``add_edges(bidirectional=True)`` uses)."""
    return np.stack([src, dst], 1).reshape(-1), np.stack([dst, src], 1).reshape(-1)


@dataclass(frozen=True, eq=False)
class TemporalGraph:
    """An initial graph plus a time-ordered stream of edge events.

    Arrays are coerced to their documented dtypes on construction, so tests and generators may pass
    plain lists.  ``eq=False``: two graphs are compared by their arrays, never by identity of fields.
    """

    name: str
    directed: bool  #: False: each edge event means both directions
    initial_vertices: np.ndarray  #: int64 ids present before the stream starts
    initial_src: np.ndarray  #: int64 directed initial edges (both directions already, if undirected)
    initial_dst: np.ndarray
    event_kind: np.ndarray  #: int8 MutationKind (ADD_EDGE / REMOVE_EDGE) per event, time order
    event_src: np.ndarray  #: int64
    event_dst: np.ndarray  #: int64
    event_time_s: np.ndarray  #: float64 seconds on the dataset's own clock (an index for rmat)
    native_features: np.ndarray | None  #: float32 (num_ids, F) indexed by vertex id, or None
    description: str  #: one line, incl. whether features are real or seeded-random

    def __post_init__(self) -> None:
        for field in ("initial_vertices", "initial_src", "initial_dst", "event_src", "event_dst"):
            object.__setattr__(self, field, _ids_array(getattr(self, field), field))
        kind = np.ascontiguousarray(np.asarray(self.event_kind).reshape(-1), dtype=np.int8)
        object.__setattr__(self, "event_kind", kind)
        object.__setattr__(self, "event_time_s", np.ascontiguousarray(self.event_time_s, dtype=np.float64))
        if len(self.initial_src) != len(self.initial_dst):
            raise ValueError(
                f"initial_src/initial_dst differ in length: {len(self.initial_src)} != {len(self.initial_dst)}"
            )
        n = len(self.event_kind)
        lengths = {f: len(getattr(self, f)) for f in ("event_src", "event_dst", "event_time_s")}
        if any(v != n for v in lengths.values()):
            raise ValueError(f"event columns differ in length: event_kind={n}, {lengths}")
        allowed = (MutationKind.ADD_EDGE, MutationKind.REMOVE_EDGE)
        bad = ~np.isin(kind, np.array(allowed, dtype=np.int8))
        if bad.any():
            raise ValueError(
                f"event_kind must be ADD_EDGE or REMOVE_EDGE ({[int(k) for k in allowed]}), got {int(kind[bad][0])}"
            )
        if self.native_features is not None:
            feats = np.ascontiguousarray(self.native_features, dtype=np.float32)
            if feats.ndim != 2 or feats.shape[1] < 1:
                raise ValueError(f"native_features must be (num_ids, F>=1), got shape {feats.shape}")
            object.__setattr__(self, "native_features", feats)

    # ------------------------------------------------------------------ views
    @property
    def num_events(self) -> int:
        return len(self.event_kind)

    @property
    def feature_dim(self) -> int:
        """Width of :meth:`features` with ``dim=None``."""
        return self._width(None)

    def all_vertex_ids(self) -> np.ndarray:
        """Sorted ids of every vertex that is initially present or appears in the stream."""
        return np.unique(np.concatenate([self.initial_vertices, self.event_src, self.event_dst]))

    def __repr__(self) -> str:
        return (
            f"TemporalGraph({self.name!r}, directed={self.directed}, initial_vertices={len(self.initial_vertices)}, "
            f"initial_edges={len(self.initial_src)}, events={self.num_events})"
        )

    # ------------------------------------------------------------------ features
    def _width(self, dim: int | None) -> int:
        if dim is not None and dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if dim is not None:
            return dim
        return DEFAULT_RANDOM_FEATURE_DIM if self.native_features is None else int(self.native_features.shape[1])

    def features(self, ids: np.ndarray, dim: int | None = None, seed: int = 0) -> np.ndarray:
        """Float32 ``(len(ids), dim)`` features of vertices ``ids``.

        Native features when the dataset has them and ``dim`` is None or their width; otherwise
        :func:`hashed_features` (``dim`` defaults to :data:`DEFAULT_RANDOM_FEATURE_DIM`), which depend
        only on ``(id, column, seed)`` so a vertex gets the same row whatever order it is asked in.
        """
        width = self._width(dim)
        ids = _ids_array(ids)
        native = self.native_features
        if native is not None and width == native.shape[1]:
            bad = (ids < 0) | (ids >= len(native))
            if bad.any():
                raise ValueError(
                    f"vertex id {int(ids[bad][0])} has no native features; ids must be in [0, {len(native)})"
                )
            return native[ids]
        return hashed_features(ids, width, seed)

    # ------------------------------------------------------------------ batches
    def initial_batch(self, dim: int | None = None, seed: int = 0) -> MutationBatch:
        """``add_vertices(initial_vertices, features)`` followed by ``add_edges(initial_src, initial_dst)``."""
        width = self._width(dim)
        nv, ne = len(self.initial_vertices), len(self.initial_src)
        kind = np.concatenate(
            [np.full(nv, MutationKind.ADD_VERTEX, dtype=np.int8), np.full(ne, MutationKind.ADD_EDGE, dtype=np.int8)]
        )
        src = np.concatenate([self.initial_vertices, self.initial_src])
        dst = np.concatenate([np.full(nv, -1, dtype=np.int64), self.initial_dst])
        feats = torch.from_numpy(self.features(self.initial_vertices, width, seed).reshape(nv, width))
        return MutationBatch(kind, src, dst, feats)

    def stream_batches(
        self,
        events_per_batch: int,
        dim: int | None = None,
        seed: int = 0,
        limit: int | None = None,
        start: int = 0,
    ) -> Iterator[MutationBatch]:
        """The event stream as batches of ``events_per_batch`` dataset events, in time order.

        An undirected event becomes ``u->v`` then ``v->u``.  A vertex absent from the graph so far
        gets an ADD_VERTEX (with its features) right before the first edge that uses it, in the same
        batch, ``src`` before ``dst``; so every batch applies cleanly after :meth:`initial_batch` and
        the batches before it.  ``limit`` caps the number of dataset events; ``start`` skips the first
        ``start`` events (a resumed stream: vertices they introduced are not added again).  Arguments are checked
        here, eagerly, not at the first ``next()``.
        """
        if events_per_batch < 1:
            raise ValueError(f"events_per_batch must be >= 1, got {events_per_batch}")
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        width = self._width(dim)
        n = self.num_events if limit is None else min(limit, self.num_events)
        return self._batches(events_per_batch, width, seed, n, start)

    def _arrivals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(event index, vertex id)`` of each vertex's first use among events ``[0, n)``, if not initial.

        Sorted by first use, ``src`` before ``dst`` within an event: computed once per stream with one
        ``np.unique`` over the interleaved endpoints, instead of a membership set updated per event.
        """
        endpoints = np.stack([self.event_src[:n], self.event_dst[:n]], 1).reshape(-1)
        ids, first = np.unique(endpoints, return_index=True)
        new = ~np.isin(ids, self.initial_vertices)
        ids, first = ids[new], first[new]
        order = np.argsort(first, kind="stable")
        return first[order] // 2, ids[order]

    def _batches(self, per_batch: int, width: int, seed: int, n: int, first: int = 0) -> Iterator[MutationBatch]:
        add_event, add_ids = self._arrivals(n)
        m = 1 if self.directed else 2  # directed mutations per dataset event
        for start in range(first, n, per_batch):
            stop = min(start + per_batch, n)
            nb = stop - start
            a0, a1 = np.searchsorted(add_event, [start, stop])
            ev = add_event[a0:a1] - start
            ids = add_ids[a0:a1]
            k = len(ids)
            kind_e = self.event_kind[start:stop]
            src_e, dst_e = self.event_src[start:stop], self.event_dst[start:stop]
            if m == 2:
                kind_e = np.repeat(kind_e, 2)
                src_e, dst_e = interleave(src_e, dst_e)
            # Event i's mutations follow its own arrivals and every earlier event's mutations and arrivals.
            adds_through = np.searchsorted(ev, np.arange(nb), side="right")
            edge_pos = np.arange(nb * m) + np.repeat(adds_through, m)
            add_pos = ev * m + np.arange(k)
            total = nb * m + k
            kind = np.empty(total, dtype=np.int8)
            src = np.empty(total, dtype=np.int64)
            dst = np.empty(total, dtype=np.int64)
            kind[edge_pos], src[edge_pos], dst[edge_pos] = kind_e, src_e, dst_e
            kind[add_pos], src[add_pos], dst[add_pos] = MutationKind.ADD_VERTEX, ids, -1
            feats = torch.from_numpy(self.features(ids, width, seed).reshape(k, width))
            yield MutationBatch(kind, src, dst, feats)
