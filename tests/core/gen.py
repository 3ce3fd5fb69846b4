"""Random valid mutation streams (numpy, seeded), for tests that cannot use Hypothesis' draws."""

from __future__ import annotations

import numpy as np
import torch

from clustergnn import MutationBatch


def random_stream(
    seed: int,
    n_vertices: int,
    n_batches: int,
    batch_size: int,
    feature_dim: int,
    id_offset: int = 0,
    fence_removals: bool = False,
) -> tuple[MutationBatch, list[MutationBatch]]:
    """An initial graph and batches of mixed mutations, each valid when applied in order.

    Mixes edge insertions (60%), edge removals (20%), feature updates (10%), vertex additions (6%)
    and removals (4%); multi-edges and self-loops happen.  ``fence_removals``: each edge removal sits
    between two feature updates (of a random vertex), so no stretch of vertex and edge edits holds
    both additions and removals and every engine applies the batch run by run (see
    ``clustergnn.transaction``), whatever its kernels."""
    rng = np.random.default_rng(seed)
    verts = list(range(id_offset, id_offset + n_vertices))
    next_id = id_offset + n_vertices
    m = n_vertices * 3
    edges = list(zip(rng.choice(verts, m).tolist(), rng.choice(verts, m).tolist()))
    feats = lambda k: torch.from_numpy(rng.standard_normal((k, feature_dim)).astype(np.float32))  # noqa: E731
    init = MutationBatch.concat(
        [
            MutationBatch.add_vertices(verts, feats(len(verts))),
            MutationBatch.add_edges([e[0] for e in edges], [e[1] for e in edges]),
        ]
    )
    alive = set(verts)
    batches = []
    for _ in range(n_batches):
        parts = []
        for _ in range(batch_size):
            r = rng.random()
            pool = sorted(alive)
            if r < 0.6 or not edges:
                u, v = int(rng.choice(pool)), int(rng.choice(pool))
                edges.append((u, v))
                parts.append(MutationBatch.add_edges([u], [v]))
            elif r < 0.8:
                u, v = edges.pop(int(rng.integers(len(edges))))
                fence = [MutationBatch.update_features([int(rng.choice(pool))], feats(1))] if fence_removals else []
                parts += [*fence, MutationBatch.remove_edges([u], [v]), *fence]
            elif r < 0.9:
                parts.append(MutationBatch.update_features([int(rng.choice(pool))], feats(1)))
            elif r < 0.96 or len(alive) < 4:
                alive.add(next_id)
                parts.append(MutationBatch.add_vertices([next_id], feats(1)))
                next_id += 1
            else:
                v = int(rng.choice(pool))
                alive.discard(v)
                edges = [e for e in edges if v not in e]
                parts.append(MutationBatch.remove_vertices([v]))
        batches.append(MutationBatch.concat(parts))
    return init, batches
