"""The cold-compile check (``test_cold_kernels.py`` runs this in a fresh process with an EMPTY
``NUMBA_CACHE_DIR``, so every numba kernel is compiled in it, as on a fresh machine or clone).

Engines are built first (building one compiles its kernels: ``cpu_kernels.warm_up``); then a single engine, a
collaborative one and a 2-partition ``LocalCluster`` are fed the same batches, which take every fused path:
the sum kernels at sum, mean and symmetric-norm finishes, small batches (one chunk per row), medium ones
(several rows per chunk), large ones (a recompute), feature updates (layer 0's images), removals,
the drift refresh (``DRIFT_MIN = DRIFT_MAX = 1`` in a second pass: rows are refreshed every other
update) and the delta by pull (a third pass, forced on every fused sum layer of a single engine).
After every batch all of them are compared with DGL's forward on the same graph.

Printed (one JSON line): the largest relative error, and every kernel signature compiled AFTER the
engines were built: each of those is a compilation an engine's first batches pay (seconds on one
core, cold), which once held a partition owner's first write past the gateway's verdict window.
"""

from __future__ import annotations

import json
import sys


def dispatchers() -> dict[str, object]:
    import numba

    from clustergnn import cpu_kernels, graph
    from clustergnn.aggregate import attention
    from clustergnn.aggregate import sum as sum_family

    found = {}
    for mod in (cpu_kernels, graph, sum_family, attention):
        for name, obj in vars(mod).items():
            if isinstance(obj, numba.core.registry.CPUDispatcher):
                found[f"{mod.__name__}.{name}"] = obj
    return found


def main() -> int:
    import numpy as np
    import torch

    from clustergnn import Engine, MutationBatch, propagation
    from clustergnn.partition import HashPartitionMap
    from clustergnn.partitioned import LocalCluster
    from clustergnn.reference import dgl_forward
    from tests.core.models import F_IN, build
    from tests.core.test_engine_exact import rel_error

    models = ["sage-mean", "gin-plain", "graphconv-both", "mixed"]
    n = 48
    rng = np.random.default_rng(3)
    feats = torch.from_numpy(rng.standard_normal((n, F_IN)).astype(np.float32))
    src, dst = rng.integers(0, n, 160), rng.integers(0, n, 160)
    kept = np.flatnonzero((src < n - 2) & (dst < n - 2))  # edges whose endpoints are never removed
    init = MutationBatch.concat([MutationBatch.add_vertices(np.arange(n), feats), MutationBatch.add_edges(src, dst)])
    setups = {}
    for model in models:
        layers = build(model, seed=1)
        single = Engine.from_layers(layers, F_IN)
        collab = Engine.from_layers(layers, F_IN, collaborative=True)
        cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(2))
        setups[model] = (layers, single, collab, cluster)
    kernels = dispatchers()
    before = {name: set(d.signatures) for name, d in kernels.items()}

    def batches(k: int) -> list[MutationBatch]:
        r = np.random.default_rng(100 + k)
        return [
            MutationBatch.add_edges([int(r.integers(n - 2))], [int(r.integers(n - 2))]),  # one row per chunk
            MutationBatch.update_features([int(r.integers(n - 2))], torch.randn(1, F_IN)),
            MutationBatch.add_edges(r.integers(0, n - 2, 24), r.integers(0, n - 2, 24)),  # several rows per chunk
            MutationBatch.remove_edges(src[kept[k * 3 : k * 3 + 3]], dst[kept[k * 3 : k * 3 + 3]]),
            MutationBatch.add_edges(r.integers(0, n - 2, 400), r.integers(0, n - 2, 400)),  # a recompute
            MutationBatch.concat(
                [
                    MutationBatch.remove_vertices([n - 1 - k]),
                    MutationBatch.add_vertices([n + k], torch.randn(1, F_IN)),
                    MutationBatch.add_edges([n + k, 0], [1, n + k]),
                ]
            ),
        ]

    worst, where = 0.0, ""
    for k, (drift, pull) in enumerate(((None, False), (1, False), (1, True))):
        if drift is not None:  # the drift refresh at every other update of a row
            propagation.DRIFT_MIN = propagation.DRIFT_MAX = drift
        if pull:  # the delta by pull (aggregate.sum.pull_rows) on every fused sum layer of a single engine
            propagation.PULL_MIN_TERMS = 0
            propagation.PULL_SCAN_COST = propagation.PULL_HIT_COST = 0.0
        for model, (layers, single, collab, cluster) in setups.items():
            if k == 0:
                for target in (single, collab, cluster):
                    (target.bulk_load if isinstance(target, Engine) else target.apply)(init)
            for b, batch in enumerate(batches(k)):
                for target in (single, collab, cluster):
                    target.apply(batch)
                g, x, ids = single.to_dgl()
                for li, ref in enumerate(dgl_forward(layers, g, x)):
                    for name, target in (("single", single), ("collaborative", collab), ("partitions", cluster)):
                        err = rel_error(target.embeddings(ids, layer=li), ref)
                        if err > worst:
                            worst, where = err, f"{model} {name} pass {k} batch {b} layer {li}"
    late = sorted(
        f"{name}{tuple(str(t) for t in sig)}"
        for name, d in kernels.items()
        for sig in d.signatures
        if sig not in before[name]
    )
    print(json.dumps({"max_error": worst, "where": where, "late": late}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
