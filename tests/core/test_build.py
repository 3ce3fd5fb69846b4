"""The build's bulk path (issue 13, docs/engine.md "Where the build's peak comes from"): a vertices-then-
edges batch applied on views of its columns with int32 endpoint slots, no edit log kept for a full
recompute, int32 in-edges for the recompute and DGL's block, a SAGE-mean self term kept in the output
rows.  Each is checked bit for bit against the path it replaces, and invalid input still changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clustergnn import Engine, MutationBatch, MutationError, kernels, recompute, transaction
from clustergnn import engine as engine_module
from clustergnn import graph as graph_module
from clustergnn.datasets import rmat
from tests.core import kernel_modes
from tests.core.kernel_modes import KERNELS
from tests.core.models import F_IN, MODELS, build
from tests.core.test_validation import assert_same, snapshot


def old_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build as before: the general stretch (gathered endpoints, int64 slots), int64 in-edges, the
    self term in a temporary."""
    monkeypatch.setattr(engine_module, "FULL_INT32_EDGES", False)
    monkeypatch.setattr(recompute, "_self_into_dest", lambda rule: False)
    monkeypatch.setattr(transaction.StructureEditor, "_apply_vertices_then_edges", lambda *a: False)
    monkeypatch.setattr(graph_module, "BULK_APPEND_MIN", 1 << 62)


def state(eng: Engine) -> dict[str, np.ndarray]:
    arrays, _ = eng.export_state()
    return {k: np.asarray(v).copy() for k, v in arrays.items()}


def assert_bitwise(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k


# scale 9 x 70: ~36k edges, above kernels.DGL_MIN_EDGES (DGL's SpMM on an int32 block); scale 6: torch's
GRAPHS = {"dgl-sized": (9, 70), "small": (6, 6)}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("graph", sorted(GRAPHS))
@pytest.mark.parametrize("name", sorted(MODELS))
def test_build_equals_the_old_build_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, name: str, graph: str, kernel: str
) -> None:
    """Every cache table, the structure and every row after incremental batches are the same bits
    (with every append through the counted bulk kernel), on both kernel paths."""
    scale, ef = GRAPHS[graph]
    ds = rmat(scale, ef, initial_fraction=0.95, seed=3)
    if graph == "dgl-sized":
        assert len(ds.initial_src) >= kernels.DGL_MIN_EDGES
    init = ds.initial_batch(dim=F_IN, seed=1)
    stream = list(ds.stream_batches(max(1, ds.num_events // 3), dim=F_IN, seed=1))[:3]

    def run() -> list[dict[str, np.ndarray]]:
        eng = Engine.from_layers(build(name), F_IN, capacity=16)
        eng.bulk_load(init)
        out = [state(eng)]
        for b in stream:
            eng.apply(b)
        return [*out, state(eng)]

    with kernel_modes.kernels(kernel):
        _compare(monkeypatch, run)


def _compare(monkeypatch: pytest.MonkeyPatch, run) -> None:
    # one torch thread: the two builds must differ only in the paths compared.  With two, GAT's
    # torch-kernel case (dgl-sized) failed 3 of 49 runs: the first engine in a process to take DGL's ops
    # was sometimes off in the rows its first batch changed, whichever build it used (docs/engine.md,
    # "A flaky bit-for-bit test"); with one thread it passed 20 of 20 (weak evidence at that rate)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _compare_paths(monkeypatch, run)
    finally:
        torch.set_num_threads(threads)


def _compare_paths(monkeypatch: pytest.MonkeyPatch, run) -> None:
    with monkeypatch.context() as m:
        m.setattr(graph_module, "BULK_APPEND_MIN", 1)  # every append through the counted bulk kernel
        new = run()
    with monkeypatch.context() as m:
        old_paths(m)
        old = run()
    for a, b in zip(new, old):
        assert_bitwise(a, b)


def test_incremental_apply_of_a_bulk_shaped_batch_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    """An incremental engine applying a vertices-then-edges batch (the fast path, with its edit log)
    propagates exactly as the general stretch did."""
    ds = rmat(7, 8, initial_fraction=0.5, seed=4)
    first = ds.initial_batch(dim=F_IN, seed=2)
    g = MutationBatch.concat(
        [
            MutationBatch.add_vertices([10**6, 10**6 + 1], torch.ones(2, F_IN)),
            MutationBatch.add_edges([10**6, 3], [5, 10**6 + 1]),
        ]
    )

    def run() -> dict[str, np.ndarray]:
        eng = Engine.from_layers(build("sage-mean"), F_IN)
        eng.apply(first)  # incremental mode: the whole initial graph through propagation
        eng.apply(g)
        return state(eng)

    new = run()
    with monkeypatch.context() as m:
        old_paths(m)
        old = run()
    assert_bitwise(new, old)


def test_full_recompute_keeps_no_edit_log() -> None:
    """Without ``log`` (what a full recompute asks for) the structure is applied and nothing of the
    edit log is kept: no edge slots, no undo closures holding them."""
    eng = Engine.from_layers(build("sage-mean"), F_IN)
    pend = eng.apply_structure(rmat(6, 6, seed=0).initial_batch(dim=F_IN), log=False)
    assert eng.num_edges > 0
    assert not pend.edges.add_src and not pend.edges.add_dst and not pend.undo and not pend.feat_old
    assert len(pend.new) == 1


def _base() -> Engine:
    eng = Engine.from_layers(build("sage-mean"), F_IN)
    ds = rmat(5, 4, seed=0)
    eng.bulk_load(ds.initial_batch(dim=F_IN))
    return eng


def _bulk(ids: list[int], src: list[int], dst: list[int], feats: torch.Tensor | None = None) -> MutationBatch:
    feats = torch.ones(len(ids), F_IN) if feats is None else feats
    return MutationBatch.concat([MutationBatch.add_vertices(ids, feats), MutationBatch.add_edges(src, dst)])


def _nan_smuggled() -> MutationBatch:
    b = _bulk([100, 101], [100], [101])
    b.features[1, 3] = float("nan")  # past the constructor's check, as in test_validation
    return b


BAD_BULK = {
    "edge to an unknown vertex": (_bulk([100, 101], [100, 101], [101, 999]), "unknown destination vertex id 999"),
    "edge from an unknown vertex": (_bulk([100, 101], [998, 101], [101, 0]), "unknown source vertex id 998"),
    "existing vertex": (_bulk([100, 1], [100], [1]), "cannot add vertex 1: it already exists"),
    "vertex twice": (_bulk([100, 100], [100], [0]), "cannot add vertex 100"),
    "non-finite features": (_nan_smuggled(), "features must be finite"),
    "edges only, unknown vertex": (MutationBatch.add_edges([0, 997], [1, 0]), "unknown source vertex id 997"),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", sorted(BAD_BULK))
@pytest.mark.parametrize("how", ["bulk_load", "apply", "dry_run"])
def test_invalid_bulk_batch_is_refused_and_changes_nothing(case: str, how: str, kernel: str) -> None:
    """A vertices-then-edges batch that is invalid raises the error sequential application meets first
    and leaves the engine as it was (structure, slots, every layer's rows), with and without the log."""
    with kernel_modes.kernels(kernel):
        _check_refused(case, how)


def _check_refused(case: str, how: str) -> None:
    eng = _base()
    before, slots = snapshot(eng), eng.graph.lookup(np.arange(1000))
    bad, message = BAD_BULK[case]
    with pytest.raises(MutationError, match=message):
        if how == "bulk_load":
            eng.bulk_load(bad)
        elif how == "apply":
            eng.apply(bad)
        else:
            eng.apply_structure(bad, dry_run=True)
    assert_same(snapshot(eng), before)
    assert np.array_equal(eng.graph.lookup(np.arange(1000)), slots)


@pytest.mark.parametrize("log", [True, False])
def test_dry_run_of_a_valid_bulk_batch_changes_nothing(log: bool) -> None:
    eng = _base()
    before = snapshot(eng)
    batch = _bulk([100, 101], [100, 101, 0], [101, 0, 100])
    assert not eng.apply_structure(batch, dry_run=True, log=log).new
    assert_same(snapshot(eng), before)
    eng.bulk_load(batch)
    assert eng.num_vertices == before[0].__len__() + 2


def test_full_recompute_keeps_no_process_wide_edge_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full recompute's DGL block (every edge) gets edge ids of its own: the process-wide arange
    (``kernels._arange``, what incremental segments reuse) does not grow to the graph's size."""
    monkeypatch.setattr(kernels, "_ARANGE", {})
    eng = Engine.from_layers(build("sage-mean"), F_IN, capacity=16)
    eng.bulk_load(rmat(9, 70, initial_fraction=0.95, seed=3).initial_batch(dim=F_IN))
    assert eng.num_edges >= kernels.DGL_MIN_EDGES
    assert not kernels._ARANGE and not kernels.cached_aranges()
    assert not any(k.startswith("process.") for k in eng.memory_report())


def _counted_batch(ids: str) -> MutationBatch:
    """New vertices (consecutive ids, or shuffled, or with a gap) and edges among them and the base's
    (``"range"``: among the new ones only)."""
    rng = np.random.default_rng(7)
    new = np.arange(100, 400)
    if ids == "shuffled":
        new = rng.permutation(new)
    elif ids == "gap":
        new = np.concatenate([np.arange(100, 250), np.arange(260, 410)])
    pool = new if ids == "range" else np.concatenate([np.arange(32), new])  # _base()'s ids are 0..31
    src, dst = rng.choice(pool, 5000), rng.choice(pool, 5000)
    return _bulk(new.tolist(), src.tolist(), dst.tolist(), torch.randn(len(new), F_IN))


# the path each case takes: slots computed (every endpoint new and consecutive), counted lookup (new ids a
# run, some endpoints old), or neither (lookup32 and the append's count pass)
COUNTED_PATHS = {"range": "range", "consecutive": "counted", "shuffled": None, "gap": None}


@pytest.mark.parametrize("ids", sorted(COUNTED_PATHS))
def test_counted_lookup_builds_the_same_engine(monkeypatch: pytest.MonkeyPatch, ids: str) -> None:
    """``MutableGraph.lookup_counted32`` (endpoints counted as they are looked up, consecutive new ids'
    slots computed rather than read) and ``add_edges_in_range`` (no slot arrays at all) give the same
    structure, slots and rows, bit for bit, as ``lookup32`` and the append's own count pass, on a graph
    that has vertices and edges already (old endpoints, blocks that grow and move); new ids that are not
    a run take neither; a dry run changes nothing."""
    batch = _counted_batch(ids)
    taken = []
    g_cls = graph_module.MutableGraph
    real_range, real_counted = g_cls.add_edges_in_range, g_cls.lookup_counted32

    def spy_range(self, *a):
        ok = real_range(self, *a)
        taken.append("range" if ok else "not range")
        return ok

    def spy_counted(self, *a):
        out = real_counted(self, *a)
        taken.append("counted" if out is not None else "not counted")
        return out

    def run(fast: bool) -> dict[str, np.ndarray]:
        with monkeypatch.context() as m:
            m.setattr(graph_module, "BULK_APPEND_MIN", 1)
            m.setattr(graph_module, "LOOKUP_COUNTED", fast)
            m.setattr(graph_module, "ID_RANGE_APPEND", fast)
            m.setattr(g_cls, "add_edges_in_range", spy_range)
            m.setattr(g_cls, "lookup_counted32", spy_counted)
            eng = _base()
            before = snapshot(eng)
            eng.apply_structure(batch, dry_run=True, log=False)  # applied, then undone
            assert_same(snapshot(eng), before)
            taken.clear()
            eng.bulk_load(batch)
            assert not eng.graph.inn._count.any() and not eng.graph.out._count.any()
            return state(eng)

    new = run(True)
    path = COUNTED_PATHS[ids]
    assert path in taken if path else "range" not in taken and "counted" not in taken
    old = run(False)
    assert "range" not in taken and "counted" not in taken
    assert_bitwise(new, old)


@pytest.mark.parametrize(
    "case", ["edge to an unknown vertex", "edge from an unknown vertex", "edges only, unknown vertex"]
)
def test_counted_lookup_of_an_unknown_endpoint_changes_nothing(monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """Through the counted lookup (every append bulk-sized): an unknown endpoint counts nothing, undoes
    the vertex addition and raises the sequential error, as the uncounted path does."""
    monkeypatch.setattr(graph_module, "BULK_APPEND_MIN", 1)
    for how in ("bulk_load", "apply", "dry_run"):
        _check_refused(case, how)
    eng = _base()
    with pytest.raises(MutationError):
        eng.bulk_load(BAD_BULK[case][0])
    assert not eng.graph.inn._count.any() and not eng.graph.out._count.any()  # nothing left counted
