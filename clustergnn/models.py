"""Models served by a cluster: a user's trained DGL layers, or a seeded builtin one for demos and tests."""

from __future__ import annotations

from collections.abc import Callable

import torch

from clustergnn._dgl import dglnn
from clustergnn.config import ModelConfig

ACTIVATION_FNS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "relu": torch.relu,
    "elu": torch.nn.functional.elu,
    "gelu": torch.nn.functional.gelu,
    "tanh": torch.tanh,
    "none": None,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if name not in ACTIVATION_FNS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_FNS)}, got {name!r}")
    return ACTIVATION_FNS[name]


def builtin_layers(kind: str, dims: list[int], seed: int = 0) -> list[torch.nn.Module]:
    """A stack of DGL layers ``dims[0] -> ... -> dims[-1]`` with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        if kind == "sage":
            layers.append(dglnn.SAGEConv(a, b, "mean"))
        elif kind == "sage-pool":
            layers.append(dglnn.SAGEConv(a, b, "pool"))
        elif kind == "gcn":
            layers.append(dglnn.GraphConv(a, b, allow_zero_in_degree=True))
        elif kind == "gin":
            layers.append(dglnn.GINConv(torch.nn.Linear(a, b), "sum"))
        elif kind == "gat":
            heads = 1 if last else 4
            if b % heads:
                raise ValueError(f"gat hidden width {b} must be a multiple of {heads} heads")
            layers.append(dglnn.GATConv(a, b // heads, heads, allow_zero_in_degree=True))
        else:
            raise ValueError(f"unknown builtin model {kind!r}; choose from sage, sage-pool, gcn, gin, gat")
    for layer in layers:
        layer.eval()
    return layers


def load_layers(cfg: ModelConfig) -> list[torch.nn.Module]:
    """The layers a config names: a ``torch.save``-d list / ModuleList of DGL layers, or the builtin."""
    if cfg.path is not None:
        obj = torch.load(cfg.path, map_location="cpu", weights_only=False)
        layers = list(obj)
        for layer in layers:
            layer.eval()
        return layers
    dims = [cfg.in_dim] + [cfg.hidden] * (cfg.num_layers - 1) + [cfg.out_dim]
    return builtin_layers(cfg.builtin, dims, cfg.seed)


def feature_dim(layers: list[torch.nn.Module]) -> int:
    """Input width of the first layer."""
    first = layers[0]
    for attr in ("_in_src_feats", "_in_feats"):
        if hasattr(first, attr):
            return int(getattr(first, attr))
    if isinstance(first, dglnn.GINConv) and first.apply_func is not None:
        for m in first.apply_func.modules():
            if isinstance(m, torch.nn.Linear):
                return int(m.in_features)
    raise ValueError(f"cannot tell the input width of {type(first).__name__}; give model.in_dim")


def model_digest(layers: list[torch.nn.Module], cfg: ModelConfig) -> str:
    """sha256 over every layer's type and ``state_dict`` (names, dtypes, shapes, bytes) and the model
    config: a snapshot records it, and a restore refuses a model whose digest differs (the state holds
    the caches the weights produced, not the weights)."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for i, layer in enumerate(layers):
        h.update(f"{i}:{type(layer).__name__}".encode())
        for name, t in sorted(layer.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
