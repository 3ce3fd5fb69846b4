"""Synthetic temporal graphs: Graph500 R-MAT with deletions mixed into the stream.

No packaged real stream has deletions, nor more than ~1M events; R-MAT gives both, at any scale,
deterministically from a seed (``shared/DATASETS.md``).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from clustergnn.datasets.graph import TemporalGraph
from clustergnn.mutations import MutationKind

logger = logging.getLogger(__name__)

_MAX_SCALE = 40  # 2^40 vertex ids; far past any memory this runs in, but ids still fit int64


def rmat_edges(
    scale: int, num_edges: int, a: float, b: float, c: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``num_edges`` R-MAT edges over ``2**scale`` vertices (Chakrabarti et al., SDM 2004).

    Each edge descends ``scale`` levels of the adjacency matrix, picking quadrant a/b/c/d (top-left,
    top-right, bottom-left, bottom-right) with those probabilities; one uniform draw per edge per
    level, for all edges at once.  Vertex labels are then permuted at random, as Graph500 does, so
    degree is not correlated with id (which would make range partitioning look artificially bad).
    """
    src = np.zeros(num_edges, dtype=np.int64)
    dst = np.zeros(num_edges, dtype=np.int64)
    ab, abc = np.float32(a + b), np.float32(a + b + c)
    fa = np.float32(a)
    for _ in range(scale):
        r = rng.random(num_edges, dtype=np.float32)
        src <<= 1
        dst <<= 1
        down = r >= ab  # quadrants c, d
        src += down
        dst += ((r >= fa) & ~down) | (r >= abc)  # quadrants b, d
    perm = rng.permutation(1 << scale)
    return perm[src], perm[dst]


def rmat(
    scale: int = 20,
    edge_factor: int = 16,
    initial_fraction: float = 0.9,
    delete_fraction: float = 0.2,
    seed: int = 0,
    a: float = 0.57,
    b: float = 0.19,
    c: float = 0.19,
) -> TemporalGraph:
    """A directed R-MAT graph (Graph500 parameters by default) as an initial graph plus a stream.

    ``edge_factor * 2**scale`` edges are generated; the initial graph is the first
    ``initial_fraction`` of them, with all ``2**scale`` vertices present (isolated ones too).  The
    stream is the remaining edges as insertions plus deletions, so that ``delete_fraction`` of stream
    events are REMOVE_EDGE; the deleted edges are distinct edges of the initial graph sampled without
    replacement, so every deletion is valid whenever it is applied, and the two kinds are shuffled
    together by ``seed``.  (Deletions are capped at the initial edge count.)  ``event_time_s`` is the
    event index.  Scale 20 (1M vertices, 16.8M edges) takes a few seconds.

    >>> g = rmat(scale=10, edge_factor=8, seed=1)
    >>> len(g.initial_vertices), len(g.initial_src) + int((g.event_kind == 2).sum())
    (1024, 8192)
    """
    if not 1 <= scale <= _MAX_SCALE:
        raise ValueError(f"scale must be in [1, {_MAX_SCALE}], got {scale}")
    if edge_factor < 1:
        raise ValueError(f"edge_factor must be >= 1, got {edge_factor}")
    if not 0.0 <= initial_fraction <= 1.0:
        raise ValueError(f"initial_fraction must be in [0, 1], got {initial_fraction}")
    if not 0.0 <= delete_fraction < 1.0:
        raise ValueError(f"delete_fraction must be in [0, 1), got {delete_fraction}")
    if min(a, b, c) < 0 or a + b + c > 1.0:
        raise ValueError(f"R-MAT probabilities need a, b, c >= 0 and a+b+c <= 1, got a={a}, b={b}, c={c}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    num_vertices = 1 << scale
    num_edges = edge_factor * num_vertices
    src, dst = rmat_edges(scale, num_edges, a, b, c, rng)

    n_init = int(initial_fraction * num_edges)
    n_ins = num_edges - n_init
    n_del = min(n_init, round(delete_fraction * n_ins / (1.0 - delete_fraction)))
    deleted = rng.choice(n_init, size=n_del, replace=False)
    order = rng.permutation(n_ins + n_del)
    kind = np.concatenate(
        [np.full(n_ins, MutationKind.ADD_EDGE, np.int8), np.full(n_del, MutationKind.REMOVE_EDGE, np.int8)]
    )
    ev_src = np.concatenate([src[n_init:], src[deleted]])[order]
    ev_dst = np.concatenate([dst[n_init:], dst[deleted]])[order]
    elapsed_s = time.perf_counter() - t0
    logger.info("generated R-MAT scale=%s edge_factor=%s seed=%s in %.1f s", scale, edge_factor, seed, elapsed_s)
    return TemporalGraph(
        name="rmat",
        directed=True,
        initial_vertices=np.arange(num_vertices, dtype=np.int64),
        initial_src=src[:n_init],
        initial_dst=dst[:n_init],
        event_kind=kind[order],
        event_src=ev_src,
        event_dst=ev_dst,
        event_time_s=np.arange(n_ins + n_del, dtype=np.float64),
        native_features=None,
        description=(
            f"R-MAT (a={a}, b={b}, c={c}) scale={scale} edge_factor={edge_factor} seed={seed}: "
            f"{num_vertices:,} vertices, "
            f"{n_init:,} initial edges, stream of {n_ins:,} insertions + {n_del:,} deletions; directed; "
            "no native features (seeded-random)"
        ),
    )
