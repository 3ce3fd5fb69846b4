"""Which partition owns which vertex.

Every vertex has exactly one owner.  The default is a hash map that any producer in any language can
compute: ``owner(v) = v mod P`` (the non-negative remainder, so ``-1 mod 4 == 3``), as GraphLearn's
dynamic graph service routes ``vid % N``.  :class:`TablePartitionMap` takes an explicit assignment
(e.g. a METIS partitioning of the initial graph) and falls back to the hash for vertices it does not
list, so new vertices always have an owner.

**Routing** (the one place this rule lives): a mutation goes to the owner of its *routing vertex*, the
destination of an edge mutation (the owner of an edge's destination holds the edge and aggregates it),
the vertex itself otherwise.  :func:`split_by_owner` cuts a batch into one batch per owner, each in
batch order; producers, the in-process cluster and the engines' own checks all route through here.

>>> from clustergnn.mutations import MutationBatch
>>> parts = split_by_owner(MutationBatch.add_edges([1, 2], [3, 4]), HashPartitionMap(2))
>>> {p: b.dst.tolist() for p, b in parts.items()}
{0: [4], 1: [3]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clustergnn.mutations import MutationBatch, edge_kinds_mask


class PartitionMap(Protocol):
    num_partitions: int

    def owner(self, ids: np.ndarray) -> np.ndarray:
        """The owning partition (int32) of each vertex id in ``ids`` (int64)."""
        ...


def _check_partitions(num_partitions: int) -> None:
    if not isinstance(num_partitions, (int, np.integer)) or num_partitions < 1:
        raise ValueError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")


@dataclass(frozen=True)
class HashPartitionMap:
    """``owner(v) = v mod num_partitions`` (non-negative remainder)."""

    num_partitions: int

    def __post_init__(self) -> None:
        _check_partitions(self.num_partitions)

    def owner(self, ids: np.ndarray) -> np.ndarray:
        return np.mod(np.asarray(ids, dtype=np.int64), self.num_partitions).astype(np.int32)


@dataclass(frozen=True)
class TablePartitionMap:
    """An explicit ``id -> partition`` table; ids it does not list fall back to the hash map."""

    num_partitions: int
    ids: np.ndarray
    owners: np.ndarray
    _sorted_ids: np.ndarray = field(init=False, repr=False)
    _sorted_owners: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_partitions(self.num_partitions)
        ids = np.asarray(self.ids, dtype=np.int64)
        owners = np.asarray(self.owners, dtype=np.int32)
        if ids.shape != owners.shape:
            raise ValueError(f"ids and owners differ in shape: {ids.shape} != {owners.shape}")
        if owners.size and (owners.min() < 0 or owners.max() >= self.num_partitions):
            bad = int(owners[(owners < 0) | (owners >= self.num_partitions)][0])
            raise ValueError(f"owner {bad} is outside [0, {self.num_partitions})")
        order = np.argsort(ids, kind="stable")
        sids = ids[order]
        if sids.size > 1 and (dup := np.flatnonzero(sids[1:] == sids[:-1])).size:
            raise ValueError(f"vertex {int(sids[dup[0]])} is assigned more than once")
        object.__setattr__(self, "_sorted_ids", sids)
        object.__setattr__(self, "_sorted_owners", owners[order])

    def owner(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.mod(ids, self.num_partitions).astype(np.int32)
        if self._sorted_ids.size:
            pos = np.searchsorted(self._sorted_ids, ids)
            pos_c = np.minimum(pos, self._sorted_ids.size - 1)
            hit = self._sorted_ids[pos_c] == ids
            out[hit] = self._sorted_owners[pos_c[hit]]
        return out


def metis_partition_map(ids: np.ndarray, src: np.ndarray, dst: np.ndarray, num_partitions: int) -> TablePartitionMap:
    """A METIS partitioning (DGL's ``metis_partition_assignment``) of an initial graph, as a table map.

    ``src``/``dst`` are external ids of directed edges between ``ids``; METIS balances vertices and
    minimises cut edges of the undirected simple graph.  Vertices added later fall back to the hash.
    Producers must route with the same table (``docs/wire-format.md``): share it with them.
    """
    _check_partitions(num_partitions)
    ids = np.asarray(ids, dtype=np.int64)
    if num_partitions == 1 or len(ids) == 0:
        return TablePartitionMap(num_partitions, ids, np.zeros(len(ids), dtype=np.int32))
    import torch

    from clustergnn._dgl import dgl

    order = np.argsort(ids)
    pos = order[np.searchsorted(ids, src, sorter=order)], order[np.searchsorted(ids, dst, sorter=order)]
    g = dgl.graph((torch.from_numpy(pos[0]), torch.from_numpy(pos[1])), num_nodes=len(ids))
    g = dgl.to_bidirected(dgl.to_simple(dgl.remove_self_loop(g)))
    owners = dgl.metis_partition_assignment(g, num_partitions).numpy().astype(np.int32)
    return TablePartitionMap(num_partitions, ids, owners)


def cut_fraction(pmap: PartitionMap, src: np.ndarray, dst: np.ndarray) -> float:
    """Share of edges whose endpoints have different owners (what crosses partitions)."""
    if len(src) == 0:
        return 0.0
    return float((pmap.owner(src) != pmap.owner(dst)).mean())


# ----------------------------------------------------------------------------- routing


def routing_ids(kind: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The routing vertex of each mutation: ``dst`` for edge mutations, ``src`` (the vertex) otherwise."""
    return np.where(edge_kinds_mask(kind), dst, src)


def route(batch: MutationBatch) -> np.ndarray:
    """The routing vertex (int64) of each mutation of ``batch``."""
    return routing_ids(batch.kind, batch.src, batch.dst)


def split_by_owner(batch: MutationBatch, pmap: PartitionMap) -> dict[int, MutationBatch]:
    """The mutations of ``batch`` per owning partition (only partitions that get any), each in batch
    order and with its features."""
    if len(batch) == 0:
        return {}
    owners = pmap.owner(route(batch))
    if (owners == owners[0]).all():
        return {int(owners[0]): batch}
    order = np.argsort(owners, kind="stable")  # stable: batch order within each owner
    cuts = np.flatnonzero(np.diff(owners[order])) + 1
    return {int(owners[idx[0]]): batch.take(idx) for idx in np.split(order, cuts)}
