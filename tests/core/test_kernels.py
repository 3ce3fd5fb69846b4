"""Both kernel paths (torch CSR for small inputs, DGL's SpMM for large ones on CPU) agree with a
dense reference, and the large-batch sum-delta path stays exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch, kernels
from tests.core.models import F_IN, build
from tests.core.test_engine_exact import assert_matches_dgl


def dense(table, src, seg, n, weight=None, op="sum"):
    fill = 0.0 if op == "sum" else -float("inf")
    out = torch.full((n, table.shape[1]), fill, dtype=table.dtype)
    for e in range(len(src)):
        v = table[src[e]] * (1 if weight is None else weight[e])
        out[seg[e]] = out[seg[e]] + v if op == "sum" else torch.maximum(out[seg[e]], v)
    return out.masked_fill(torch.isinf(out), 0.0)


@pytest.mark.parametrize("threshold", [10**9, 1], ids=["torch", "dgl"])
def test_segment_kernels_match_a_dense_reference(monkeypatch, threshold: int) -> None:
    monkeypatch.setattr(kernels, "DGL_MIN_EDGES", threshold)
    g = torch.Generator().manual_seed(0)
    table = torch.randn(30, 5, generator=g, dtype=torch.float64)
    seg = torch.sort(torch.randint(0, 8, (60,), generator=g)).values
    seg[seg == 3] = 4  # row 3 has no edges
    src = torch.randint(0, 30, (60,), generator=g)
    w = torch.rand(60, generator=g, dtype=torch.float64)
    edges = kernels.EdgeIndex.from_sorted_rows(src, seg, 8)
    assert torch.allclose(kernels.segment_sum(table, edges), dense(table, src, seg, 8))
    assert torch.allclose(kernels.segment_sum(table, edges, w), dense(table, src, seg, 8, w))
    assert torch.allclose(kernels.segment_max(table.float(), edges), dense(table.float(), src, seg, 8, op="max"))
    lazy = kernels.EdgeIndex(src, edges.indptr)  # seg derived from indptr
    assert torch.equal(lazy.seg, seg)


def test_large_batches_take_the_segmented_delta_path_exactly(monkeypatch) -> None:
    from clustergnn.aggregate import sum as sum_family

    monkeypatch.setattr(sum_family, "SEGMENT_DELTA_MIN", 1)
    monkeypatch.setattr(kernels, "DGL_MIN_EDGES", 1)
    layers = build("graphconv-both")
    gen = torch.Generator().manual_seed(1)
    n = 50
    from clustergnn._dgl import dgl

    g0 = dgl.graph(
        (torch.randint(0, n, (200,), generator=gen), torch.randint(0, n, (200,), generator=gen)), num_nodes=n
    )
    eng = Engine.from_dgl(layers, g0, torch.randn(n, F_IN, generator=gen))
    src, dst = (t.numpy() for t in g0.edges())
    eng.apply(
        MutationBatch.concat(
            [
                MutationBatch.remove_edges(src[:40], dst[:40]),
                MutationBatch.add_edges(np.arange(30), (np.arange(30) * 3) % n),
                MutationBatch.update_features([1, 2], torch.randn(2, F_IN, generator=gen)),
                MutationBatch.remove_vertices([7]),
            ]
        )
    )
    assert_matches_dgl(eng, layers)


@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "gat", "gin", "graphconv-mixed"])
def test_random_streams_on_the_large_input_paths(monkeypatch, model: str) -> None:
    """Every rule, with the DGL SpMM kernels and segmented sum deltas forced on for all sizes."""
    from clustergnn.aggregate import sum as sum_family
    from tests.core.gen import random_stream

    monkeypatch.setattr(sum_family, "SEGMENT_DELTA_MIN", 1)
    monkeypatch.setattr(kernels, "DGL_MIN_EDGES", 1)
    layers = build(model, seed=2)
    init, batches = random_stream(seed=3, n_vertices=40, n_batches=4, batch_size=30, feature_dim=F_IN)
    eng = Engine.from_layers(layers, F_IN)
    eng.bulk_load(init)
    for b in batches:
        eng.apply(b)
        assert_matches_dgl(eng, layers)
