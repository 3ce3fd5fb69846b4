"""The snapshot store through ``s3://`` against a real local S3 server (moto's server mode on 127.0.0.1).

What differs from the local filesystem and is exercised here: the store is opened from a URI with
``endpoint_override``; there is no rename, so the manifest is a single PUT; directories are only key
prefixes.  Skips with the reason when ``moto[server]`` is not installed.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

moto_server = pytest.importorskip(
    "moto.server",
    reason="moto[server] is not installed (pip install 'moto[server]==5.2.5'): no local S3 server",
    exc_type=ImportError,
)

import pyarrow.fs as pafs  # noqa: E402

from clustergnn.snapshot import MANIFEST_NAME, SnapshotError, SnapshotStore  # noqa: E402

pytestmark = pytest.mark.integration

BUCKET = "clustergnn-snapshots"
KEY, SECRET = "test-key", "test-secret"  # moto accepts any credentials; pass some so no real chain is searched


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """``host:port`` of a moto S3 server on loopback with the test bucket, for this module."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"127.0.0.1:{port}"
        _fs(endpoint, allow_bucket_creation=True).create_dir(BUCKET)
        yield endpoint
    finally:
        server.stop()


def _fs(endpoint: str, **kw: bool) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(
        endpoint_override=endpoint, scheme="http", access_key=KEY, secret_key=SECRET, region="us-east-1", **kw
    )


@pytest.fixture
def store_uri(s3_endpoint: str) -> str:
    """A fresh prefix per test, as a URI: what a deployment writes in ``snapshot.uri``."""
    return (
        f"s3://{KEY}:{SECRET}@{BUCKET}/run-{uuid.uuid4().hex[:8]}/snaps"
        f"?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    )


def _arrays(sid: int, p: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(100 * sid + p)
    return {
        "h": rng.standard_normal((50, 16)).astype(np.float32),
        "agg": rng.standard_normal((50, 8)),
        "edges": rng.integers(-(2**62), 2**62, (0, 2), dtype=np.int64),
        "dst": rng.integers(0, 2**40, 300, dtype=np.int64),
        "version": np.arange(50, dtype=np.uint64),
        "alive": rng.random(50) < 0.9,
        "empty": np.zeros(0, np.float64),
        "t3": rng.integers(0, 255, (2, 3, 4), dtype=np.uint8),
    }


def _take(store: SnapshotStore, sid: int, partitions: int = 2, *, commit: bool = True) -> None:
    parts = [
        store.write_part(sid, p, _arrays(sid, p), round_id=sid, next_offset=10 * sid + p) for p in range(partitions)
    ]
    if commit:
        store.commit(sid, parts, partitions=partitions, meta={"config_digest": "abc"})


def _assert_snapshot(store: SnapshotStore, sid: int, partitions: int = 2) -> None:
    manifest = store.latest(verify=True)
    assert manifest is not None and manifest.snapshot_id == sid
    assert manifest.next_offsets == {p: 10 * sid + p for p in range(partitions)}
    for p in range(partitions):
        got, _ = store.read_part(manifest, p)
        for name, want in _arrays(sid, p).items():
            assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
            np.testing.assert_array_equal(got[name], want)


def test_round_trip_and_retention_through_s3(store_uri: str) -> None:
    store = SnapshotStore(store_uri, retention=2)
    assert store.filesystem.type_name == "s3" and store.latest() is None and store.next_id() == 0
    for sid in range(4):
        _take(store, sid)
        _assert_snapshot(store, sid)
    assert [m.snapshot_id for m in store.list()] == [3, 2]
    _take(store, 4, commit=False)  # in progress: newer than the newest complete, so prune keeps it
    assert store.prune() == () and store.next_id() == 5
    _assert_snapshot(SnapshotStore(store_uri, retention=2), 3)  # another process, same URI


def _put(store: SnapshotStore, path: str, data: bytes) -> None:
    with store.filesystem.open_output_stream(path) as out:
        out.write(data)


def _get(store: SnapshotStore, path: str) -> bytes:
    with store.filesystem.open_input_stream(path) as f:
        return f.read()


TORN = {
    "no manifest": lambda s, d: s.filesystem.delete_file(f"{d}/{MANIFEST_NAME}"),
    "missing file": lambda s, d: s.filesystem.delete_file(f"{d}/part-1/h.arrow"),
    "missing part": lambda s, d: s.filesystem.delete_dir(f"{d}/part-0"),
    "truncated file": lambda s, d: _put(s, f"{d}/part-0/dst.arrow", _get(s, f"{d}/part-0/dst.arrow")[:-5]),
    "unparseable manifest": lambda s, d: _put(s, f"{d}/{MANIFEST_NAME}", b'{"format": '),
}


@pytest.mark.parametrize("kind", sorted(TORN))
def test_a_torn_snapshot_on_s3_is_skipped(store_uri: str, kind: str) -> None:
    store = SnapshotStore(store_uri, retention=5)
    _take(store, 1)
    _take(store, 2)
    TORN[kind](store, store.snapshot_dir(2))
    _assert_snapshot(store, 1)
    assert [m.snapshot_id for m in store.list()] == [1]


def test_a_corrupt_object_on_s3_is_named_on_read(store_uri: str) -> None:
    store = SnapshotStore(store_uri)
    _take(store, 1)
    _take(store, 2)
    path = f"{store.snapshot_dir(2)}/part-0/agg.arrow"
    raw = bytearray(_get(store, path))
    raw[len(raw) // 2] ^= 0x01
    _put(store, path, bytes(raw))
    manifest = store.latest()
    assert manifest is not None and manifest.snapshot_id == 2  # sizes match: only the checksum tells
    with pytest.raises(SnapshotError, match=r"part-0/agg\.arrow: crc32c .* \(corrupt\)"):
        store.read_part(manifest, 0)
    _assert_snapshot(store, 1)  # latest(verify=True) falls back to the previous complete snapshot
