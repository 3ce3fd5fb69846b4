"""The snapshot store (clustergnn/snapshot.py) on the local filesystem: round trips, the manifest-last rule,
torn snapshots of every kind skipped, corruption named on read, retention, commit validation, and a
property test over random sequences of writes, commits and crashes.  Pure: no Ray, Kafka or servers.
"""

from __future__ import annotations

import json
import logging
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clustergnn.snapshot import (
    MANIFEST_NAME,
    SUPPORTED_DTYPES,
    Manifest,
    PartInfo,
    SnapshotError,
    SnapshotStore,
)

SHAPES = [(), (0,), (7,), (0, 3), (5, 3), (2, 3, 4), (3, 0), (0, 0)]


def arrays_for(sid: int, partition: int, n: int = 6) -> dict[str, np.ndarray]:
    """Small, distinct arrays per (snapshot, partition), so a read shows which snapshot it came from."""
    rng = np.random.default_rng(1000 * sid + partition)
    return {
        "features": rng.standard_normal((n, 4)).astype(np.float32),
        "agg": rng.standard_normal((n, 3)).astype(np.float64),
        "src": rng.integers(0, 1 << 40, 2 * n, dtype=np.int64),
        "alive": rng.random(n) < 0.5,
        "version": np.full(n, sid, dtype=np.uint64),
    }


def take(
    store: SnapshotStore, sid: int, partitions: int = 2, *, round_id: int | None = None, commit: bool = True
) -> list[PartInfo]:
    """Writes every part of snapshot ``sid`` (as owners would) and, if asked, commits it."""
    rid = sid if round_id is None else round_id
    parts = [
        store.write_part(sid, p, arrays_for(sid, p), round_id=rid, next_offset=100 * sid + p, meta={"vertices": 6})
        for p in range(partitions)
    ]
    if commit:
        store.commit(sid, parts, partitions=partitions, meta={"config_digest": "d1", "round": rid})
    return parts


def assert_is_snapshot(store: SnapshotStore, manifest: Manifest | None, sid: int, partitions: int = 2) -> None:
    assert manifest is not None and manifest.snapshot_id == sid
    for p in range(partitions):
        arrays, info = store.read_part(manifest, p)
        want = arrays_for(sid, p)
        assert arrays.keys() == want.keys()
        for k, a in want.items():
            assert arrays[k].dtype == a.dtype and arrays[k].shape == a.shape and np.array_equal(arrays[k], a)
        assert info.next_offset == 100 * sid + p and info.meta == {"vertices": 6}


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", sorted(SUPPORTED_DTYPES))
def test_every_dtype_and_shape_round_trips(tmp_path: Path, dtype: str) -> None:
    rng = np.random.default_rng(7)
    arrays = {f"a{i}": np.asarray(rng.random(shape) * 1000).astype(dtype) for i, shape in enumerate(SHAPES)}
    if dtype == "float64":
        arrays["extremes"] = np.array([np.inf, -np.inf, np.nan, -0.0, 5e-324, 1.7976931348623157e308])
    if dtype == "uint64":
        arrays["extremes"] = np.array([0, 2**64 - 1, 2**63], dtype=np.uint64)
    if dtype == "int64":
        arrays["extremes"] = np.array([-(2**63), 2**63 - 1], dtype=np.int64)
    store = SnapshotStore(tmp_path / "snaps")
    info = store.write_part(0, 0, arrays, round_id=0, next_offset=0)
    out, part = store.read_part(store.commit(0, [info], partitions=1), 0)
    assert part == info
    for name, a in arrays.items():
        b = out[name]
        assert (b.dtype, b.shape) == (a.dtype, a.shape), name
        np.testing.assert_array_equal(b, a)
        assert b.flags.writeable and b.flags.c_contiguous
        b[...] = 0 if b.size else b  # owned by the caller: writing it must not touch anything else


def test_non_contiguous_and_big_endian_inputs_round_trip(tmp_path: Path) -> None:
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    arrays = {
        "strided": base[::2, ::3],
        "fortran": np.asfortranarray(base),
        "big_endian": np.arange(5, dtype=">i8"),
        "from_list": [1.5, 2.5],  # anything np.asarray accepts
    }
    store = SnapshotStore(tmp_path)
    out, _ = store.read_part(
        store.commit(0, [store.write_part(0, 0, arrays, round_id=0, next_offset=0)], partitions=1), 0
    )
    np.testing.assert_array_equal(out["strided"], base[::2, ::3])
    np.testing.assert_array_equal(out["fortran"], base)
    assert out["big_endian"].dtype == np.dtype("int64") and out["big_endian"].tolist() == [0, 1, 2, 3, 4]
    assert out["from_list"].dtype == np.float64


def test_stored_files_are_plain_arrow_ipc_with_fixed_size_lists(tmp_path: Path) -> None:
    """Other Arrow readers (pyarrow, polars, DuckDB) can open a part without this module."""
    import pyarrow as pa
    from pyarrow import ipc

    store = SnapshotStore(tmp_path)
    store.write_part(0, 0, {"h": np.ones((4, 8), np.float32)}, round_id=0, next_offset=0)
    table = ipc.open_file(pa.memory_map(f"{store.snapshot_dir(0)}/part-0/h.arrow")).read_all()
    assert table.num_rows == 4 and table.schema.field("h").type == pa.list_(pa.float32(), 8)


def test_part_info_and_manifest_survive_pickle_and_json(tmp_path: Path) -> None:
    """Parts travel from owners to the coordinator (pickled by Ray) and into the manifest (JSON)."""
    store = SnapshotStore(tmp_path)
    parts = take(store, 3, commit=False)
    assert pickle.loads(pickle.dumps(parts[1])) == parts[1]
    assert PartInfo.from_json(json.loads(json.dumps(parts[1].to_json()))) == parts[1]
    manifest = store.commit(3, parts, partitions=2, meta={"config_digest": "d1"})
    assert store.latest() == manifest == Manifest.from_json(json.loads(json.dumps(manifest.to_json())))
    assert manifest.next_offsets == {0: 300, 1: 301} and manifest.round_id == 3
    assert manifest.size_bytes == sum(p.size_bytes for p in parts) > 0


def test_created_time_comes_from_the_injected_clock(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, clock=lambda: 1234.5)
    take(store, 0)
    assert store.latest().created_s == 1234.5  # type: ignore[union-attr]


def test_numpy_scalars_in_meta_are_stored_as_json_numbers(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    info = store.write_part(0, 0, {}, round_id=0, next_offset=0, meta={"n": np.int64(3), "x": np.float32(0.5)})
    assert info.meta == {"n": 3, "x": 0.5}
    with pytest.raises(ValueError, match="JSON"):
        store.write_part(0, 0, {}, round_id=0, next_offset=0, meta={"bad": object()})
    with pytest.raises(ValueError, match="NaN"):
        store.commit(0, [info], partitions=1, meta={"bad": float("nan")})


# ------------------------------------------------------------------ the manifest is the commit


def test_a_crash_between_parts_and_commit_leaves_the_previous_snapshot(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    take(store, 1)
    take(store, 2, commit=False)  # every part written, the coordinator dies before its commit
    assert_is_snapshot(store, store.latest(), 1)
    take(store, 3)
    assert_is_snapshot(store, store.latest(), 3)


def test_a_leftover_temp_manifest_is_not_a_manifest(tmp_path: Path) -> None:
    """On a local filesystem the manifest is written under a temp name, then renamed: a crash mid-write
    leaves only the temp file, which never counts."""
    store = SnapshotStore(tmp_path)
    take(store, 1)
    take(store, 2, commit=False)
    Path(store.snapshot_dir(2), f"{MANIFEST_NAME}.tmp-dead").write_text('{"format": "clustergnn-snap')
    assert store.latest().snapshot_id == 1  # type: ignore[union-attr]
    assert not list(Path(store.snapshot_dir(1)).glob("*.tmp-*"))  # a finished commit leaves no temp file


def _drop_manifest(store: SnapshotStore) -> None:
    Path(store.snapshot_dir(2), MANIFEST_NAME).unlink()


def _drop_file(store: SnapshotStore) -> None:
    Path(store.snapshot_dir(2), "part-1", "agg.arrow").unlink()


def _drop_part(store: SnapshotStore) -> None:
    for f in Path(store.snapshot_dir(2), "part-0").iterdir():
        f.unlink()


def _truncate_file(store: SnapshotStore) -> None:
    p = Path(store.snapshot_dir(2), "part-0", "features.arrow")
    p.write_bytes(p.read_bytes()[:-9])


def _garbage_manifest(store: SnapshotStore) -> None:
    Path(store.snapshot_dir(2), MANIFEST_NAME).write_bytes(b'{"format": "clustergnn-snapshot", "parts": [')


def _binary_manifest(store: SnapshotStore) -> None:
    Path(store.snapshot_dir(2), MANIFEST_NAME).write_bytes(b"\xff\xfe\x00")


def _edit_manifest(**changes: object) -> Callable[[SnapshotStore], None]:
    def edit(store: SnapshotStore) -> None:
        path = Path(store.snapshot_dir(2), MANIFEST_NAME)
        d = json.loads(path.read_text())
        d.update(changes)
        path.write_text(json.dumps(d))

    return edit


def _copied_manifest(store: SnapshotStore) -> None:
    Path(store.snapshot_dir(2), MANIFEST_NAME).write_bytes(Path(store.snapshot_dir(1), MANIFEST_NAME).read_bytes())


def _escaping_file_name(store: SnapshotStore) -> None:
    path = Path(store.snapshot_dir(2), MANIFEST_NAME)
    d = json.loads(path.read_text())
    d["parts"][0]["arrays"][0]["file"] = "../../snap-000000000001/part-0/agg.arrow"
    path.write_text(json.dumps(d))


TORN = {
    "no manifest": (_drop_manifest, "no MANIFEST.json"),
    "missing file": (_drop_file, "part-1/agg.arrow is missing"),
    "missing part": (_drop_part, "part-0/agg.arrow is missing"),
    "truncated file": (_truncate_file, "part-0/features.arrow has"),
    "unparseable manifest": (_garbage_manifest, "MANIFEST.json is unusable"),
    "binary manifest": (_binary_manifest, "MANIFEST.json is unusable"),
    "unknown format version": (_edit_manifest(format_version=99), "unknown format_version 99"),
    "manifest of another snapshot": (_edit_manifest(snapshot_id=7), "manifest says snapshot 7"),
    "manifest copied from another snapshot": (_copied_manifest, "names snapshot 1, not 2"),
    "file name outside its part": (_escaping_file_name, "must be stored in 'agg.arrow', got '../../"),
    "partition count disagrees": (_edit_manifest(partitions=3), "are not partitions 0..3-1"),
}


@pytest.mark.parametrize("kind", sorted(TORN))
def test_a_torn_snapshot_is_skipped_with_a_warning_naming_the_fault(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    damage, reason = TORN[kind]
    store = SnapshotStore(tmp_path, retention=5)
    take(store, 1)
    take(store, 2)
    damage(store)
    with caplog.at_level(logging.WARNING, logger="clustergnn.snapshot"):
        latest = store.latest()
    assert_is_snapshot(store, latest, 1)
    assert [m.snapshot_id for m in store.list()] == [1]
    assert any("snapshot 2" in r.getMessage() and reason in r.getMessage() for r in caplog.records), caplog.text
    assert SnapshotStore(tmp_path).latest().snapshot_id == 1  # type: ignore[union-attr]  # a fresh process too


def test_a_corrupt_file_of_the_same_size_is_caught_by_verify_and_named_on_read(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    take(store, 1)
    take(store, 2)
    path = Path(store.snapshot_dir(2), "part-1", "src.arrow")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40  # a bit flip inside the data: same size, so only the checksum sees it
    path.write_bytes(bytes(raw))
    manifest = store.latest()
    assert manifest is not None and manifest.snapshot_id == 2  # the cheap check reads sizes only
    store.read_part(manifest, 0)  # the other part is intact
    with pytest.raises(SnapshotError, match=r"part-1/src\.arrow: crc32c .* \(corrupt\)"):
        store.read_part(manifest, 1)
    assert_is_snapshot(store, store.latest(verify=True), 1)


def test_read_part_names_a_file_that_vanished(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    take(store, 1)
    manifest = store.latest()
    Path(store.snapshot_dir(1), "part-0", "alive.arrow").unlink()
    with pytest.raises(SnapshotError, match=r"part-0/alive\.arrow: missing"):
        store.read_part(manifest, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"partition must be in \[0, 2\) for snapshot 1, got 2"):
        store.read_part(manifest, 2)  # type: ignore[arg-type]


def test_an_empty_store_has_no_latest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "a" / "b")
    assert store.latest() is None and store.list() == [] and store.next_id() == 0 and store.prune() == ()
    (tmp_path / "a" / "b" / "unrelated.txt").write_text("x")
    (tmp_path / "a" / "b" / "snap-12").mkdir()  # not a snapshot directory name
    store = SnapshotStore(tmp_path / "a" / "b")  # a fresh store: this one handed out 0 already
    assert store.latest() is None and store.next_id() == 0


def test_an_id_is_never_handed_out_twice_even_when_nothing_was_written_under_it(tmp_path: Path) -> None:
    """The fence against a late writer (docs/distributed.md, "Several nodes"): snapshot 0 was abandoned
    before any part was written (an owner's node lost mid-snapshot); the next snapshot must not be 0 again,
    or the old owner's part, written when its link comes back, would land in the new snapshot."""
    store = SnapshotStore(tmp_path)
    assert [store.next_id(), store.next_id()] == [0, 1]
    take(store, 1)
    assert store.next_id() == 2
    take(store, 7, commit=False)  # a directory above what this store handed out: still above it
    assert store.next_id() == 8


# ------------------------------------------------------------------ retention


@pytest.mark.parametrize("retention", [1, 2, 3])
def test_retention_keeps_exactly_the_newest_k(tmp_path: Path, retention: int) -> None:
    store = SnapshotStore(tmp_path, retention=retention)
    for sid in range(6):
        take(store, sid)
    want = list(range(5, 5 - retention, -1))
    assert [m.snapshot_id for m in store.list()] == want
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"snap-{s:012d}" for s in sorted(want)]
    for sid in want:
        assert_is_snapshot(store, store.list()[want.index(sid)], sid)


def test_prune_removes_older_torn_snapshots_but_never_newer_ones(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retention=1)
    take(store, 1)
    take(store, 2, commit=False)  # torn, older than the next commit: garbage
    take(store, 3)
    take(store, 4, commit=False)  # newer than the newest complete one: may be in progress, kept
    take(store, 5, partitions=1, commit=False)  # only part 0 written so far
    assert store.prune() == ()  # commit 3 already pruned 1 and 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"snap-{s:012d}" for s in (3, 4, 5)]
    assert store.next_id() == 6


def test_prune_without_any_complete_snapshot_deletes_nothing(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, retention=1)
    take(store, 1, commit=False)
    take(store, 2, commit=False)
    assert store.prune() == () and len(list(tmp_path.iterdir())) == 2


def test_a_crash_mid_prune_leaves_no_half_complete_snapshot(tmp_path: Path) -> None:
    """Prune deletes a manifest before the files it names: simulate a crash right after that step."""
    store = SnapshotStore(tmp_path, retention=3)
    take(store, 1)
    take(store, 2)
    Path(store.snapshot_dir(1), MANIFEST_NAME).unlink()
    assert [m.snapshot_id for m in store.list()] == [2]
    assert store.prune() == (1,)


# ------------------------------------------------------------------ commit validation


@pytest.mark.parametrize(
    ("partitions_written", "p", "message"),
    [
        ([0, 2], 3, r"missing \[1\], duplicated \[\], out of range \[\]"),
        ([0, 1], 3, r"missing \[2\]"),
        ([0, 0, 1], 2, r"duplicated \[0\]"),
        ([0, 1, 3], 3, r"missing \[2\], duplicated \[\], out of range \[3\]"),
        ([], 1, r"missing \[0\]"),
    ],
)
def test_commit_rejects_anything_but_each_partition_once(
    tmp_path: Path, partitions_written: list[int], p: int, message: str
) -> None:
    store = SnapshotStore(tmp_path)
    parts = [store.write_part(0, q, {"x": np.zeros(2)}, round_id=0, next_offset=0) for q in partitions_written]
    with pytest.raises(SnapshotError, match=message):
        store.commit(0, parts, partitions=p)
    assert store.latest() is None


def test_commit_rejects_an_inconsistent_cut_and_foreign_parts(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    a = store.write_part(1, 0, {}, round_id=5, next_offset=0)
    b = store.write_part(1, 1, {}, round_id=6, next_offset=0)
    with pytest.raises(SnapshotError, match=r"not a consistent cut.*\{0: 5, 1: 6\}"):
        store.commit(1, [a, b], partitions=2)
    other = store.write_part(2, 1, {}, round_id=5, next_offset=0)
    with pytest.raises(SnapshotError, match=r"parts of other snapshots \(partition: snapshot\) \{1: 2\}"):
        store.commit(1, [a, other], partitions=2)


def test_commit_checks_the_files_are_there(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    parts = take(store, 1, commit=False)
    Path(store.snapshot_dir(1), "part-1", "version.arrow").unlink()
    with pytest.raises(SnapshotError, match=r"snap-000000000001/part-1/version\.arrow is missing"):
        store.commit(1, parts, partitions=2)
    assert store.latest() is None


def test_committed_snapshots_are_immutable_and_ids_increase(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    parts = take(store, 4)
    with pytest.raises(SnapshotError, match="snapshot 4 is already committed"):
        store.commit(4, parts, partitions=2)
    with pytest.raises(SnapshotError, match="snapshot 4 is already committed"):
        store.write_part(4, 0, {}, round_id=4, next_offset=0)
    old = take(store, 3, commit=False)
    with pytest.raises(SnapshotError, match="ids must increase: the newest complete snapshot is 4, got 3"):
        store.commit(3, old, partitions=2)
    assert store.next_id() == 5


def test_a_retried_part_replaces_the_earlier_attempt(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.write_part(0, 0, {"stale": np.zeros(3), "h": np.zeros(2)}, round_id=0, next_offset=0)
    info = store.write_part(0, 0, {"h": np.ones(2)}, round_id=0, next_offset=9)
    assert sorted(p.name for p in Path(store.snapshot_dir(0), "part-0").iterdir()) == ["h.arrow"]
    out, part = store.read_part(store.commit(0, [info], partitions=1), 0)
    assert out["h"].tolist() == [1.0, 1.0] and part.next_offset == 9


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.write_part(-1, 0, {}, round_id=0, next_offset=0), "snapshot_id must be an int >= 0, got -1"),
        (lambda s: s.write_part(10**12, 0, {}, round_id=0, next_offset=0), "snapshot_id must be <= 999999999999"),
        (lambda s: s.write_part(0, True, {}, round_id=0, next_offset=0), "partition must be an int >= 0, got True"),
        (lambda s: s.write_part(0, 0, {}, round_id=0, next_offset=-3), "next_offset must be an int >= 0, got -3"),
        (lambda s: s.write_part(0, 0, {"../x": np.zeros(1)}, round_id=0, next_offset=0), "got '../x'"),
        (
            lambda s: s.write_part(0, 0, {"c": np.zeros(1, complex)}, round_id=0, next_offset=0),
            "dtype 'complex128' is not one of",
        ),
        (
            lambda s: s.write_part(0, 0, {"o": np.array(["a"], object)}, round_id=0, next_offset=0),
            "dtype 'object' is not one of",
        ),
        (lambda s: s.commit(0, [], partitions=0), "partitions must be >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused_quoting_the_value(
    tmp_path: Path, call: Callable[[SnapshotStore], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        call(SnapshotStore(tmp_path))


def test_retention_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention must be an int >= 1, got 0"):
        SnapshotStore(tmp_path, retention=0)


# ------------------------------------------------------------------ property: latest() is the newest retained commit


op = st.one_of(
    st.tuples(
        st.just("snapshot"), st.integers(0, 3), st.sampled_from(["commit", "crash", "torn file", "temp manifest"])
    ),
    st.tuples(st.just("prune")),
    st.tuples(st.just("restart")),
)


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(op, max_size=10), retention=st.integers(1, 3))
def test_latest_is_always_the_newest_retained_commit(ops: list[tuple], retention: int) -> None:
    """Any sequence of snapshot attempts (some parts written, then commit or a crash), prunes and restarts."""
    partitions = 3
    with tempfile.TemporaryDirectory() as root:
        store = SnapshotStore(root, retention=retention)
        committed: list[int] = []
        for o in ops:
            if o[0] == "restart":  # a new coordinator process: nothing but the storage carries over
                store = SnapshotStore(root, retention=retention)
            elif o[0] == "prune":
                store.prune()
            else:
                _, written, ending = o
                sid = store.next_id()
                assert not committed or sid > committed[-1]
                parts = take(store, sid, partitions=written, commit=False) if written else []
                if ending == "commit" and written == partitions:
                    store.commit(sid, parts, partitions=partitions)
                    committed.append(sid)
                elif ending == "commit":
                    with pytest.raises(SnapshotError, match="missing"):
                        store.commit(sid, parts, partitions=partitions)
                elif ending == "torn file" and written:  # a part's file cut short by a crash
                    f = Path(store.snapshot_dir(sid), "part-0", "src.arrow")
                    f.write_bytes(f.read_bytes()[:10])
                    if written == partitions:
                        with pytest.raises(SnapshotError, match="has 10 bytes"):
                            store.commit(sid, parts, partitions=partitions)
                elif ending == "temp manifest":  # the coordinator died while writing the manifest
                    Path(store.snapshot_dir(sid)).mkdir(exist_ok=True)
                    Path(store.snapshot_dir(sid), f"{MANIFEST_NAME}.tmp-x").write_text("{")
            listed = [m.snapshot_id for m in store.list()]
            assert listed == committed[::-1][:retention]
            latest = store.latest()
            if committed:
                assert_is_snapshot(store, latest, committed[-1], partitions)
            else:
                assert latest is None
