"""Models served by a cluster: a user's trained DGL layers, or a seeded builtin one for demos and tests."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import torch

from clustergnn._dgl import dglnn
from clustergnn.config import ConfigError, ModelConfig

log = logging.getLogger(__name__)

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


class ModelLoadError(ConfigError):
    """The model file, declaration or entry point cannot give the layers to serve (the message says what
    was found and what is accepted; docs/models.md)."""


FORMATS = (
    "weights saved with torch.save(model.state_dict(), path) plus the architecture in model.layers (the safe default)",
    "model.entry_point 'module:function' returning the layers, with path's state_dict loaded into them",
    "with model.allow_pickle only: a pickled module with a .layers ModuleList (DGL's examples) or a pickled "
    "list/ModuleList of layers",
)
LAYER_TYPES = ("sage", "gcn", "gin", "gat")
_LAYER_KEYS = {
    "sage": {"type", "out_dim", "aggregator", "bias"},
    "gcn": {"type", "out_dim", "norm", "bias"},
    "gin": {"type", "out_dim", "aggregator", "apply", "learn_eps"},
    "gat": {"type", "out_dim", "heads", "residual", "negative_slope", "bias"},
}


def _formats() -> str:
    return "; ".join(f"({i + 1}) {f}" for i, f in enumerate(FORMATS))


def declared_layers(specs, in_dim: int) -> list[torch.nn.Module]:
    """DGL layers built from ``model.layers`` (untrained; the weights come from the state_dict)."""
    layers: list[torch.nn.Module] = []
    width = in_dim
    for i, spec in enumerate(specs):
        kind = spec.get("type")
        if kind not in _LAYER_KEYS:
            raise ModelLoadError(f"model.layers[{i}].type must be one of {list(LAYER_TYPES)}, got {kind!r}")
        unknown = sorted(set(spec) - _LAYER_KEYS[kind])
        if unknown:
            raise ModelLoadError(
                f"model.layers[{i}] ({kind}) has unknown key(s) {unknown}; allowed: {sorted(_LAYER_KEYS[kind])}"
            )
        out = spec.get("out_dim")
        if not isinstance(out, int) or isinstance(out, bool) or out < 1:
            raise ModelLoadError(f"model.layers[{i}].out_dim must be an integer >= 1, got {out!r}")
        bias = bool(spec.get("bias", True))
        if kind == "sage":
            agg = spec.get("aggregator", "mean")
            if agg not in ("mean", "gcn", "pool"):
                raise ModelLoadError(f"model.layers[{i}].aggregator (sage) must be mean, gcn or pool, got {agg!r}")
            layer: torch.nn.Module = dglnn.SAGEConv(width, out, agg, bias=bias)
            width = out
        elif kind == "gcn":
            norm = spec.get("norm", "both")
            if norm not in ("both", "right", "left", "none"):
                raise ModelLoadError(f"model.layers[{i}].norm (gcn) must be both, right, left or none, got {norm!r}")
            layer = dglnn.GraphConv(width, out, norm=norm, bias=bias, allow_zero_in_degree=True)
            width = out
        elif kind == "gin":
            agg = spec.get("aggregator", "sum")
            if agg not in ("sum", "mean", "max"):
                raise ModelLoadError(f"model.layers[{i}].aggregator (gin) must be sum, mean or max, got {agg!r}")
            apply = spec.get("apply", "linear")
            if apply == "linear":
                fn: torch.nn.Module = torch.nn.Linear(width, out)
            elif apply == "mlp":
                fn = torch.nn.Sequential(torch.nn.Linear(width, out), torch.nn.ReLU(), torch.nn.Linear(out, out))
            else:
                raise ModelLoadError(f"model.layers[{i}].apply (gin) must be linear or mlp, got {apply!r}")
            layer = dglnn.GINConv(fn, agg, learn_eps=bool(spec.get("learn_eps", False)))
            width = out
        else:
            heads = spec.get("heads", 1)
            if not isinstance(heads, int) or heads < 1:
                raise ModelLoadError(f"model.layers[{i}].heads (gat) must be an integer >= 1, got {heads!r}")
            layer = dglnn.GATConv(
                width,
                out,
                heads,
                residual=bool(spec.get("residual", False)),
                negative_slope=float(spec.get("negative_slope", 0.2)),
                bias=bias,
                allow_zero_in_degree=True,
            )
            last = i == len(specs) - 1
            width = out if last else out * heads  # hidden GAT layers' heads are concatenated, the last's averaged
        layers.append(layer)
    return layers


_NUMBERED = re.compile(r"^(.*?)(\d+)\.(.+)$")


def _layer_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` keys as a ModuleList of the layers names them (``0.fc_self.weight``): saved from a
    module with ``.layers`` (``layers.0...``), a ModuleList (``0...``), or under any one common prefix."""
    prefixes, out = set(), {}
    for key, t in sd.items():
        m = _NUMBERED.match(key)
        if m is None:
            raise ModelLoadError(
                f"state_dict key {key!r} belongs to no numbered layer: the file holds more than the GNN layers "
                f"(save the layers' state_dict, or declare an entry_point whose module holds {key!r})"
            )
        prefixes.add(m.group(1))
        out[f"{m.group(2)}.{m.group(3)}"] = t
    if len(prefixes) > 1:
        raise ModelLoadError(f"state_dict keys have several layer prefixes {sorted(prefixes)}; expected one")
    return out


def _load_weights(layers: list[torch.nn.Module], path: str, where: str) -> None:
    sd = _read_state_dict(path, allow_pickle=False)
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{path} holds a {type(sd).__name__}, not a state_dict; accepted: {_formats()}")
    holder = torch.nn.ModuleList(layers)
    want = {k: tuple(v.shape) for k, v in holder.state_dict().items()}
    got = _layer_keys(sd)
    missing, unexpected = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    shapes = [f"{k}: file {tuple(got[k].shape)} vs {where} {want[k]}" for k in sorted(set(want) & set(got))]
    shapes = [s for s, k in zip(shapes, sorted(set(want) & set(got))) if tuple(got[k].shape) != want[k]]
    if missing or unexpected or shapes:
        raise ModelLoadError(
            f"the weights in {path} do not fit {where}: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}" if missing else "",
                    f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}" if unexpected else "",
                    f"shape mismatch {shapes[:4]}" if shapes else "",
                )
                if part
            )
            + f". The declaration expects {len(want)} tensors: "
            + ", ".join(f"{k} {v}" for k, v in list(want.items())[:8])
        )
    holder.load_state_dict(got, strict=True)


def _read_state_dict(path: str, allow_pickle: bool):
    """``torch.load`` with ``weights_only=True`` (nothing in the file runs), or the pickle when allowed."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelLoadError(f"model.path {path!r} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        raise ModelLoadError(
            f"{path} holds pickled Python objects, not only tensors (a whole model saved with torch.save(model)?). "
            "It was not unpickled: unpickling runs whatever code the file holds. Save the weights instead, "
            "torch.save(model.state_dict(), path), and declare the architecture in model.layers (or "
            "model.entry_point); or, for a file you trust, set model.allow_pickle (clustergnn up --allow-pickle). "
            f"Accepted: {_formats()}. (torch: {str(exc).splitlines()[0][:200]})"
        ) from None


def _as_layers(obj, where: str) -> list[torch.nn.Module]:
    """Layers from a list/ModuleList or a module with ``.layers`` (DGL's example models)."""
    if isinstance(obj, torch.nn.Module) and isinstance(getattr(obj, "layers", None), torch.nn.ModuleList):
        return list(obj.layers)
    if isinstance(obj, (list, tuple, torch.nn.ModuleList)) and all(isinstance(x, torch.nn.Module) for x in obj):
        return list(obj)
    if isinstance(obj, dict):
        keys = ", ".join(map(str, list(obj)[:3])) + (", ..." if len(obj) > 3 else "")
        raise ModelLoadError(
            f"{where} is a state_dict of {len(obj)} tensors ({keys}) "
            f"but no architecture: declare it in model.layers or give model.entry_point. Accepted: {_formats()}"
        )
    raise ModelLoadError(
        f"{where} is a {type(obj).__name__}, which is neither a list/ModuleList of layers nor a module with a "
        f".layers ModuleList. Accepted: {_formats()}"
    )


def _eval(layers: list[torch.nn.Module], where: str) -> list[torch.nn.Module]:
    training = [i for i, layer in enumerate(layers) if layer.training]
    if training:
        drop = any(isinstance(m, torch.nn.Dropout) for layer in layers for m in layer.modules())
        log.warning(
            "%s: layers %s were in training mode; eval() is applied%s (served embeddings are inference ones)",
            where,
            training,
            " and dropout is off" if drop else "",
        )
    for layer in layers:
        layer.eval()
    return layers


def load_layers(cfg: ModelConfig) -> list[torch.nn.Module]:
    """The layers a config names, in eval mode (docs/models.md): a state_dict + ``model.layers``, an
    entry point (+ weights), an opted-in pickle, or the seeded builtin."""
    if cfg.entry_point is not None:
        import importlib

        mod_name, _, fn_name = cfg.entry_point.partition(":")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"model.entry_point {cfg.entry_point!r} cannot be loaded: {exc}") from None
        layers = _as_layers(fn(), f"model.entry_point {cfg.entry_point!r}'s result")
        if cfg.path is not None:
            _load_weights(layers, cfg.path, f"the layers of {cfg.entry_point}")
        return _eval(layers, cfg.entry_point)
    if cfg.path is not None:
        if cfg.layers is not None:
            layers = declared_layers(cfg.layers, cfg.in_dim)
            _load_weights(layers, cfg.path, "model.layers")
            return _eval(layers, cfg.path)
        obj = _read_state_dict(cfg.path, cfg.allow_pickle)
        return _eval(_as_layers(obj, cfg.path), cfg.path)
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
