"""Builders of DGL layer stacks for the differential tests (random, non-trivial weights)."""

from __future__ import annotations

import torch

from clustergnn._dgl import dglnn

F_IN = 6


def randomize(layers: list[torch.nn.Module], seed: int) -> list[torch.nn.Module]:
    gen = torch.Generator().manual_seed(seed)
    for layer in layers:
        layer.eval()
        for p in layer.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.7)
    return layers


def _gin_mlp(i: int, o: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(i, 7), torch.nn.Tanh(), torch.nn.Linear(7, o))


# name -> factory(in_features) returning the layers; widths cover both lin-before/after-aggregation paths
MODELS = {
    "sage-mean": lambda: [dglnn.SAGEConv(F_IN, 9, "mean"), dglnn.SAGEConv(9, 4, "mean")],
    "sage-gcn": lambda: [dglnn.SAGEConv(F_IN, 3, "gcn"), dglnn.SAGEConv(3, 5, "gcn")],
    "sage-pool": lambda: [dglnn.SAGEConv(F_IN, 8, "pool"), dglnn.SAGEConv(8, 4, "pool")],
    "graphconv-both": lambda: [dglnn.GraphConv(F_IN, 8, norm="both"), dglnn.GraphConv(8, 3, norm="both")],
    "graphconv-mixed": lambda: [
        dglnn.GraphConv(F_IN, 4, norm="left", bias=False),
        dglnn.GraphConv(4, 4, norm="right", weight=False),
        dglnn.GraphConv(4, 5, norm="none"),
    ],
    "gin": lambda: [
        dglnn.GINConv(_gin_mlp(F_IN, 8), "sum", learn_eps=True),
        dglnn.GINConv(_gin_mlp(8, 8), "mean"),
        dglnn.GINConv(torch.nn.Linear(8, 3), "max", init_eps=0.3),
    ],
    # no apply_func and no post-processing: the fused CPU finish kernel's GIN and sum/norm cases
    "gin-plain": lambda: [
        dglnn.GINConv(None, "sum", learn_eps=True),
        dglnn.GINConv(None, "mean", init_eps=0.2),
        dglnn.GraphConv(F_IN, 3, norm="right"),
    ],
    "gat": lambda: [
        dglnn.GATConv(F_IN, 4, 3, activation=torch.nn.functional.elu, residual=True),
        dglnn.GATConv(12, 5, 2, residual=True),
    ],
    "mixed": lambda: [
        dglnn.SAGEConv(F_IN, 8, "pool"),
        dglnn.GATConv(8, 4, 2),
        dglnn.GINConv(torch.nn.Linear(8, 6), "sum"),
        dglnn.SAGEConv(6, 3, "mean"),
    ],
}


def build(name: str, seed: int = 0) -> list[torch.nn.Module]:
    return randomize(MODELS[name](), seed)
