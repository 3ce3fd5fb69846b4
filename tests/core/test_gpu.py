"""The same engine on a GPU (skipped without CUDA): caches on the device, exact against DGL on CPU."""

from __future__ import annotations

import pytest
import torch

from clustergnn import Engine
from clustergnn.reference import dgl_forward
from tests.core.gen import random_stream
from tests.core.models import F_IN, build
from tests.core.test_engine_exact import rel_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU here)")]


@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "gat", "gin", "graphconv-both"])
@pytest.mark.parametrize("collaborative", [False, True])
def test_engine_on_cuda_matches_dgl_on_cpu(model: str, collaborative: bool) -> None:
    layers = build(model, seed=4)
    init, batches = random_stream(seed=5, n_vertices=200, n_batches=5, batch_size=60, feature_dim=F_IN)
    eng = Engine.from_layers(layers, F_IN, device="cuda", collaborative=collaborative)
    eng.bulk_load(init)
    for b in batches:
        eng.apply(b)
    assert eng.h[0].device.type == "cuda"  # (h[-1] may be finished on read: clustergnn.caches)
    g, x, ids = eng.to_dgl()
    ref = dgl_forward([layer.cpu() for layer in layers], g, x)[-1]
    assert rel_error(eng.embeddings(ids).cpu(), ref) <= 1e-5
