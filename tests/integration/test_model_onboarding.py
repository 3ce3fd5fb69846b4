"""Acceptance: a user's DGL model, trained and saved the ordinary way (a state_dict), serves through
``clustergnn up --model ... --config ...``; mutations stream in through Kafka from the user's own
producer; reads through the stubs generated from the .proto equal the user's own forward on the final
graph."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
import torch.nn.functional as fn

from actors.gateway import convert
from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from clustergnn import Engine, MutationBatch
from clustergnn._dgl import dglnn
from clustergnn.datasets import load
from clustergnn.partition import HashPartitionMap
from streams.producer import MutationProducer
from tests.core.test_models_loading import SAGE
from tests.integration.test_cli import cli, free_port

pytestmark = pytest.mark.integration
F, P = 16, 2


def train(model: SAGE, batch: MutationBatch, steps: int = 5) -> SAGE:
    """A few steps of ordinary DGL training (a toy regression target) on the initial graph."""
    eng = Engine.from_layers(list(SAGE(F, 12, 4).layers), F)  # only to turn the batch into a DGL graph
    eng.bulk_load(batch)
    g, x, _ = eng.to_dgl()
    target = torch.randn(g.num_nodes(), 4, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = fn.mse_loss(model(g, x), target)
        loss.backward()
        opt.step()
    return model


def test_a_users_state_dict_serves_through_up_and_equals_their_forward(tmp_path: Path) -> None:
    assert dglnn is not None
    ds = load("collegemsg")
    init = ds.initial_batch(dim=F, seed=0)
    torch.manual_seed(0)
    model = train(SAGE(F, 12, 4), init)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "model.json").write_text(
        json.dumps(
            {
                "model": {"in_dim": F, "layers": [{"type": "sage", "out_dim": 12}, {"type": "sage", "out_dim": 4}]},
                "cluster": {"partitions": P},
                "graph": {"dataset": "collegemsg"},
            }
        )
    )
    env = dict(os.environ, CLUSTERGNN_CACHE=str(tmp_path / "cache"))
    port, broker = free_port(), free_port()
    name = f"onboard-{uuid.uuid4().hex[:6]}"
    try:
        up = cli(
            "up", "--name", name, "--model", str(tmp_path / "weights.pt"), "--config", str(tmp_path / "model.json"),
            "--port", str(port), "--broker-port", str(broker), "--metrics-port", "0", env=env,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr

        # the user's own producer writes mutations to Kafka (the wire format of docs/wire-format.md)
        ids = np.asarray(ds.initial_vertices)
        rng = np.random.default_rng(3)
        new = int(ids.max()) + 1
        g = torch.Generator().manual_seed(4)
        muts = MutationBatch.concat(
            [
                MutationBatch.add_vertices([new], torch.randn(1, F, generator=g)),
                MutationBatch.add_edges([new, int(ids[0])], [int(ids[1]), new]),
                MutationBatch.update_features(ids[:5], torch.randn(5, F, generator=g)),
                MutationBatch.add_edges(rng.choice(ids, 20), rng.choice(ids, 20)),
            ]
        )
        producer = MutationProducer(f"127.0.0.1:{broker}", "clustergnn.mutations", HashPartitionMap(P))
        offsets = producer.send(muts)
        producer.close()

        single = Engine.from_layers(list(SAGE(F, 12, 4).layers), F)  # holds the final graph for DGL
        single.bulk_load(init)
        single.apply(muts)
        dg, x, ext = single.to_dgl()
        model.eval()
        with torch.no_grad():
            ref = model(dg, x).numpy()

        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.EmbeddingServiceStub(ch)
            req = pb.GetEmbeddingsRequest(vertex_ids=ext.tolist())
            req.min_offsets.offsets.update({int(p): int(o) for p, o in offsets.items()})
            resp = stub.GetEmbeddings(req, timeout=60)
            status = pb_grpc.AdminServiceStub(ch).Status(pb.StatusRequest(), timeout=10)
        got = convert.decode_matrix(resp.embeddings)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max())) <= 1e-5
        assert list(status.model.layer_types) == ["SAGEConv", "SAGEConv"] and list(status.model.dims) == [F, 12, 4]
        assert resp.model_digest == status.model.digest
    finally:
        down = cli("down", "--name", name, env=env, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
