"""DGL's own full forward, the reference every exactness test compares the engines against, and the
engine's graph as a DGL graph to run it on."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from clustergnn._dgl import dgl
from clustergnn.graph import MutableGraph


def graph_to_dgl(graph: MutableGraph, features: torch.Tensor) -> tuple[dgl.DGLGraph, torch.Tensor, np.ndarray]:
    """``graph``'s live vertices and edges as a DGL graph (nodes in slot order), their rows of
    ``features`` ``(capacity, F)`` on the CPU, and the external id of each DGL node."""
    alive = graph.alive_slots()
    pos = np.full(graph.capacity, -1, dtype=np.int64)
    pos[alive] = np.arange(len(alive))
    src, dst = graph.edges()
    g = dgl.graph((torch.from_numpy(pos[src]), torch.from_numpy(pos[dst])), num_nodes=len(alive))
    idx = torch.from_numpy(np.ascontiguousarray(alive, dtype=np.int64)).to(features.device)
    return g, features[idx].cpu(), graph.ext_of[alive]


def dgl_forward(
    layers: list[torch.nn.Module],
    graph: dgl.DGLGraph,
    features: torch.Tensor,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = torch.relu,
) -> list[torch.Tensor]:
    """DGL's own full forward, structured as :class:`~clustergnn.engine.Engine` does.

    Returns ``[h_0, h_1, ..., h_L]``, ``h_l`` of shape ``(graph.num_nodes(), D_l)``.  The activation is
    applied between layers, not after the last; GAT heads are flattened after hidden layers and
    averaged after the last; zero in-degree vertices are allowed (as the engine allows them).

    Example::

        refs = dgl_forward(layers, g, g.ndata["x"])
        assert torch.allclose(engine.embeddings(ids), refs[-1], atol=1e-5)
    """
    hs = [features]
    h = features
    with torch.no_grad():
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            if hasattr(layer, "set_allow_zero_in_degree"):
                layer.set_allow_zero_in_degree(True)
            h = layer(graph, h)
            if h.ndim == 3:
                h = h.mean(1) if last else h.flatten(1)
            if not last and activation is not None:
                h = activation(h)
            hs.append(h)
    return hs
