"""A user's trained DGL model, saved the ordinary ways, serves exactly what the user's own forward gives.

Formats (docs/models.md): a state_dict + ``model.layers`` (safe default, ``weights_only=True``), an entry
point (+ state_dict), and, with ``model.allow_pickle`` only, a pickled module or layer list.  Each is
checked against the USER's forward (their ``nn.Module`` as DGL's examples write it), through the engine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as fn

from clustergnn import Engine, MutationBatch
from clustergnn._dgl import dgl, dglnn
from clustergnn.config import Config, ConfigError, ModelConfig
from clustergnn.models import ModelLoadError, load_layers, model_digest

F, N = 6, 40
MARKER = Path("/tmp/clustergnn-test-pickle-ran")


class SAGE(torch.nn.Module):
    """DGL's GraphSAGE example, as users write it: ``self.layers`` + activation + dropout in forward."""

    def __init__(self, in_size: int, hid: int, out: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([dglnn.SAGEConv(in_size, hid, "mean"), dglnn.SAGEConv(hid, out, "mean")])
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, g, h):
        for i, layer in enumerate(self.layers):
            h = layer(g, h)
            if i != len(self.layers) - 1:
                h = self.dropout(fn.relu(h))
        return h


class GAT(torch.nn.Module):
    def __init__(self, in_size: int, hid: int, out: int, heads: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            [
                dglnn.GATConv(in_size, hid, heads, allow_zero_in_degree=True),
                dglnn.GATConv(hid * heads, out, 1, allow_zero_in_degree=True),
            ]
        )

    def forward(self, g, h):
        h = fn.elu(self.layers[0](g, h).flatten(1))
        return self.layers[1](g, h).mean(1)


class Evil:
    """Unpickling this would create MARKER: proves nothing in a refused file runs."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def graph() -> tuple[MutationBatch, object, torch.Tensor]:
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, N, 160), rng.integers(0, N, 160)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    pairs = np.unique(np.stack([src, dst], 1), axis=0)
    src, dst = pairs[:, 0], pairs[:, 1]
    x = torch.randn(N, F, generator=torch.Generator().manual_seed(1))
    batch = MutationBatch.concat([MutationBatch.add_vertices(np.arange(N), x), MutationBatch.add_edges(src, dst)])
    return batch, dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=N), x


def trained(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model  # left in training mode, as after a training loop


def served(layers, activation="relu") -> torch.Tensor:
    from clustergnn.models import activation as act

    batch, _, _ = graph()
    eng = Engine.from_layers(layers, F, activation=act(activation))
    eng.bulk_load(batch)
    return eng.embeddings(np.arange(N))


def users(model: torch.nn.Module) -> torch.Tensor:
    _, g, x = graph()
    model.eval()
    with torch.no_grad():
        return model(g, x)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max())) <= 1e-5


SAGE_DECL = [{"type": "sage", "out_dim": 8}, {"type": "sage", "out_dim": 3, "aggregator": "mean"}]


def test_state_dict_of_a_layers_module_with_declared_architecture(tmp_path: Path) -> None:
    model = trained(SAGE(F, 8, 3))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    cfg = ModelConfig(path=str(tmp_path / "w.pt"), layers=SAGE_DECL, in_dim=F)
    assert close(served(load_layers(cfg)), users(model))


def test_state_dict_of_a_module_list_gat(tmp_path: Path) -> None:
    model = trained(GAT(F, 4, 3, heads=2), seed=3)
    torch.save(model.layers.state_dict(), tmp_path / "w.pt")  # keys 0.fc.weight, ...
    decl = [{"type": "gat", "out_dim": 4, "heads": 2}, {"type": "gat", "out_dim": 3}]
    cfg = ModelConfig(path=str(tmp_path / "w.pt"), layers=decl, in_dim=F, activation="elu")
    assert close(served(load_layers(cfg), "elu"), users(model))


def build_sage_layers():
    """An entry point, as a user would write one."""
    return SAGE(F, 8, 3)


def test_entry_point_with_weights(tmp_path: Path) -> None:
    model = trained(SAGE(F, 8, 3), seed=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    cfg = ModelConfig(path=str(tmp_path / "w.pt"), entry_point=f"{__name__}:build_sage_layers")
    assert close(served(load_layers(cfg)), users(model))


def test_a_pickled_model_is_refused_without_the_flag_and_nothing_in_it_runs(tmp_path: Path) -> None:
    MARKER.unlink(missing_ok=True)
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelLoadError, match="not unpickled.*allow_pickle") as info:
        load_layers(ModelConfig(path=str(tmp_path / "evil.pt")))
    assert "state_dict" in str(info.value)  # names the safe format
    assert not MARKER.exists()
    model = trained(SAGE(F, 8, 3))
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        load_layers(ModelConfig(path=str(tmp_path / "whole.pt")))


def test_a_pickled_dgl_example_module_and_layer_list_with_the_flag(tmp_path: Path, caplog) -> None:
    model = trained(SAGE(F, 8, 3), seed=7)
    torch.save(model, tmp_path / "whole.pt")  # in training mode, with dropout
    with caplog.at_level(logging.WARNING, logger="clustergnn.models"):
        layers = load_layers(ModelConfig(path=str(tmp_path / "whole.pt"), allow_pickle=True))
    assert "training mode; eval() is applied" in caplog.text
    assert close(served(layers), users(model))
    torch.save(list(model.layers), tmp_path / "list.pt")
    assert close(served(load_layers(ModelConfig(path=str(tmp_path / "list.pt"), allow_pickle=True))), users(model))


def test_a_state_dict_without_architecture_says_what_it_found(tmp_path: Path) -> None:
    torch.save(trained(SAGE(F, 8, 3)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match=r"state_dict of \d+ tensors \(layers\.0\..*no architecture"):
        load_layers(ModelConfig(path=str(tmp_path / "w.pt")))


def test_weights_that_do_not_fit_the_declaration_are_named(tmp_path: Path) -> None:
    torch.save(trained(SAGE(F, 8, 3)).state_dict(), tmp_path / "w.pt")
    wrong = [{"type": "sage", "out_dim": 16}, {"type": "sage", "out_dim": 3}]
    with pytest.raises(ModelLoadError, match=r"shape mismatch.*0\.fc_self\.weight"):
        load_layers(ModelConfig(path=str(tmp_path / "w.pt"), layers=wrong, in_dim=F))
    gcn = [{"type": "gcn", "out_dim": 8}, {"type": "gcn", "out_dim": 3}]
    with pytest.raises(ModelLoadError, match=r"missing .*unexpected"):
        load_layers(ModelConfig(path=str(tmp_path / "w.pt"), layers=gcn, in_dim=F))
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="encoder.weight"):
        load_layers(ModelConfig(path=str(tmp_path / "other.pt"), layers=SAGE_DECL, in_dim=F))


def test_unsupported_declarations_are_named(tmp_path: Path) -> None:
    torch.save({}, tmp_path / "w.pt")
    with pytest.raises(ModelLoadError, match=r"type must be one of \['sage', 'gcn', 'gin', 'gat'\], got 'gru'"):
        load_layers(ModelConfig(path=str(tmp_path / "w.pt"), layers=[{"type": "gru", "out_dim": 3}]))
    with pytest.raises(ModelLoadError, match="aggregator .*lstm"):
        load_layers(
            ModelConfig(path=str(tmp_path / "w.pt"), layers=[{"type": "sage", "out_dim": 3, "aggregator": "lstm"}])
        )
    with pytest.raises(ModelLoadError, match=r"unknown key\(s\) \['dropout'\]"):
        load_layers(ModelConfig(path=str(tmp_path / "w.pt"), layers=[{"type": "sage", "out_dim": 3, "dropout": 0.5}]))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_layers(ModelConfig(path=str(tmp_path / "nope.pt"), layers=SAGE_DECL))


def test_config_checks_the_model_section() -> None:
    with pytest.raises(ConfigError, match="give path"):
        Config.from_dict({"model": {"layers": SAGE_DECL}})
    with pytest.raises(ConfigError, match="module:function"):
        Config.from_dict({"model": {"entry_point": "no_colon"}})
    with pytest.raises(ConfigError, match="allow_pickle must be true or false"):
        Config.from_dict({"model": {"allow_pickle": "yes"}})
    cfg = Config.from_dict({"model": {"path": "w.pt", "layers": SAGE_DECL, "in_dim": F}})
    assert cfg.model.layers[0]["out_dim"] == 8


def test_the_digest_covers_weights_and_declaration(tmp_path: Path) -> None:
    model = trained(SAGE(F, 8, 3))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    cfg = ModelConfig(path=str(tmp_path / "w.pt"), layers=SAGE_DECL, in_dim=F)
    d1 = model_digest(load_layers(cfg), cfg)
    torch.save(trained(SAGE(F, 8, 3), seed=9).state_dict(), tmp_path / "w.pt")
    assert model_digest(load_layers(cfg), cfg) != d1
