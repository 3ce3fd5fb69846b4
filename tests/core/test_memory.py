"""``Engine.memory_report``: every array an engine holds is in it, with its real bytes.

The walk below finds arrays the way a reviewer would (every numpy array and torch tensor reachable
from the engine through clustergnn objects, lists, tuples and dicts, plus the weights of the rules'
modules), independently of how the report is written, so an array added without a report entry fails
here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch
from clustergnn._dgl import dglnn
from clustergnn.memory import MEMORY_KINDS, total_bytes
from clustergnn.partition import HashPartitionMap
from clustergnn.partitioned import LocalCluster
from tests.core.gen import random_stream
from tests.core.models import F_IN, MODELS, randomize


def _walk(root: object) -> list[np.ndarray | torch.Tensor]:
    """Every distinct array reachable from ``root`` (by identity), not descending into DGL objects."""
    found: dict[int, np.ndarray | torch.Tensor] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, (np.ndarray, torch.Tensor)):
            found[id(obj)] = obj
        elif isinstance(obj, torch.nn.Module):
            stack.extend(obj.state_dict(keep_vars=True).values())
        elif isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif type(obj).__module__.startswith("clustergnn") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())
    return list(found.values())


def _signature(a: np.ndarray | torch.Tensor) -> tuple[str, tuple[int, ...], int]:
    if isinstance(a, torch.Tensor):
        return str(a.dtype).removeprefix("torch."), tuple(a.shape), a.numel() * a.element_size()
    return str(a.dtype), tuple(a.shape), int(a.nbytes)


def _assert_report_covers(eng: Engine) -> None:
    report = eng.memory_report()
    assert {e.kind for e in report.values()} <= set(MEMORY_KINDS)
    # process-wide entries are not the engine's; a dict of ids is an estimate, not an array
    listed = sorted((e.dtype, e.shape, e.nbytes) for n, e in report.items() if not n.startswith("process."))
    walked = sorted(_signature(a) for a in _walk(eng))
    assert listed == walked
    assert total_bytes(report) >= sum(s[2] for s in walked)


def _engine(model: str, seed: int = 0) -> tuple[Engine, list[MutationBatch]]:
    layers = randomize(MODELS[model](), seed)
    init, batches = random_stream(seed, n_vertices=40, n_batches=3, batch_size=25, feature_dim=F_IN)
    eng = Engine.from_layers(layers, F_IN, capacity=16)
    eng.bulk_load(init)
    return eng, batches


@pytest.mark.parametrize("model", ["sage-mean", "sage-pool", "graphconv-both", "gin", "gat"])
def test_report_lists_every_array_the_engine_holds(model: str) -> None:
    eng, batches = _engine(model)
    _assert_report_covers(eng)
    for b in batches:  # the hot path's scratch arrays exist only after incremental batches
        eng.apply(b)
    _assert_report_covers(eng)


def test_report_lists_every_array_of_a_partition() -> None:
    layers = randomize(MODELS["sage-mean"](), 0)
    init, batches = random_stream(1, n_vertices=40, n_batches=2, batch_size=20, feature_dim=F_IN)
    cluster = LocalCluster.from_layers(layers, F_IN, HashPartitionMap(2))
    cluster.apply(init)
    for b in batches:
        cluster.apply(b)
    for eng in cluster.engines:
        assert "readers" in eng.memory_report()
        _assert_report_covers(eng)


def test_cache_bytes_follow_the_layout_and_grow_with_vertices() -> None:
    """SAGE-mean 5 -> 8 -> 3: per slot, h0 5 fp32; layer 0 widens, so its message is h0 itself (msg0
    *is* h0: no table of its own) and its self term is recomputed at finish (no selfc0), agg0 5 fp32
    with a 1-float drift budget; layer 1 narrows, so msg1 is W h1 (3 fp32), selfc1 3 fp32 (h1 is kept
    only as these two), agg1 3 fp32 + budget; h2 is finished on read (docs/engine.md)."""
    torch.manual_seed(0)
    layers = [dglnn.SAGEConv(5, 8, "mean"), dglnn.SAGEConv(8, 3, "mean")]
    per_slot = 4 * 5 + (4 * 5 + 4) + 4 * 3 + (4 * 3 + 4) + 4 * 3
    eng = Engine.from_layers(layers, 5, capacity=16)
    report = eng.memory_report()
    assert report["agg0"].dtype == "float32" and report["agg0"].shape == (16, 5)
    assert report["drift0"].dtype == "float32" and report["drift0"].shape == (16,)
    assert "h1" not in report and "h2" not in report and eng.h[1] is None and eng.h[2] is None
    assert report["msg1"].shape == (16, 3)
    assert "msg0" not in report and "selfc0" not in report and eng.msg[0] is eng.h[0] and eng.selfc[0] is None
    assert total_bytes(report, "cache") == 16 * per_slot
    n = 40  # past the capacity: the tables grow to the graph's new capacity
    eng.apply(MutationBatch.add_vertices(np.arange(n), torch.randn(n, 5)))
    report = eng.memory_report()
    cap = eng.caches.capacity
    assert cap >= n
    assert total_bytes(report, "cache") == cap * per_slot
    assert eng.msg[0] is eng.h[0]  # still one table after the growth
    assert report["graph.ext_of"].nbytes == 8 * cap
