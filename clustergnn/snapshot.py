"""Snapshot storage: per-partition parts, checksummed, made visible by a manifest written last.

Why: promise 3 of DESIGN.md ("a crashed partition restarts from its last snapshot plus a replay of its
Kafka partition") needs state that survives the owner's process.  This module is only the storage half:
it knows nothing of the engine (what arrays a partition exports) nor of Ray/Kafka (who calls it).

Protocol (a snapshot is a consistent cut taken at a round boundary, see docs/snapshots.md):

1. every owner ``p`` writes its part, from whichever process or node it runs on:
   ``info = store.write_part(sid, p, arrays, round_id=r, next_offset=o)``;
2. the coordinator gathers the ``PartInfo`` values and commits: ``store.commit(sid, infos, partitions=P)``,
   which checks the set of parts, writes ``MANIFEST.json`` last and atomically, then prunes old snapshots;
3. recovery: ``m = store.latest()``, then ``arrays, info = store.read_part(m, p)`` and a replay of Kafka
   partition ``p`` from ``info.next_offset``.

A snapshot without a valid manifest, or whose manifest names a file that is missing, has the wrong size
or (when verified) the wrong crc32c, is never returned: ``latest()`` skips it with a warning.

Layout under the store's root (a local directory or any ``pyarrow.fs`` URI, e.g.
``s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http``)::

    snap-000000000017/part-0/<array>.arrow   one Arrow IPC file per array
    snap-000000000017/part-1/...
    snap-000000000017/MANIFEST.json          written last; its presence makes the snapshot complete

Example::

    store = SnapshotStore(tmp_dir, retention=3)
    sid = store.next_id()
    info = store.write_part(sid, 0, {"h0": np.zeros((4, 8), np.float32)}, round_id=17, next_offset=1234)
    store.commit(sid, [info], partitions=1, meta={"config_digest": "ab12"})
    arrays, part = store.read_part(store.latest(), 0)
    assert arrays["h0"].shape == (4, 8) and part.next_offset == 1234
"""

from __future__ import annotations

import collections
import json
import logging
import operator
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import crc32c
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from pyarrow import ipc

from clustergnn.errors import ClusterGNNError

logger = logging.getLogger(__name__)

FORMAT: Final = "clustergnn-snapshot"
FORMAT_VERSION: Final = 1
MANIFEST_NAME: Final = "MANIFEST.json"
MAX_SNAPSHOT_ID: Final = 10**12 - 1  # the directory name holds 12 digits, so names sort as numbers
SUPPORTED_DTYPES: Final = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32", "float64"}
)
_SNAP_DIR: Final = re.compile(r"^snap-(\d{12})$")
_ARRAY_NAME: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_ARRAY_SUFFIX: Final = ".arrow"
_SHAPE_KEY: Final = b"clustergnn.shape"
_DTYPE_KEY: Final = b"clustergnn.dtype"
# Filesystems whose rename atomically replaces the target: the manifest goes to a temp name, then is moved.
# Object stores (s3, gcs, abfs) have no atomic rename but make a single PUT visible whole or not at all.
_ATOMIC_RENAME: Final = frozenset({"local"})


class SnapshotError(ClusterGNNError):
    """A snapshot cannot be committed or read: the message names the snapshot and, where one is at fault, the file."""


@dataclass(frozen=True)
class ArrayFile:
    """One stored array: where it is (relative to its part directory), and how to check and decode it."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    size_bytes: int
    crc32c: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "size_bytes": self.size_bytes,
            "crc32c": self.crc32c,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ArrayFile:
        _expect_keys(d, {"name", "file", "dtype", "shape", "size_bytes", "crc32c"}, "array entry")
        dtype, name = str(d["dtype"]), _check_array_name(d["name"])
        if d["file"] != name + _ARRAY_SUFFIX:  # never follow a path a damaged manifest makes up
            raise ValueError(f"array {name!r} must be stored in {name + _ARRAY_SUFFIX!r}, got {d['file']!r}")
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"array {d['name']!r}: dtype {dtype!r} is not one of {sorted(SUPPORTED_DTYPES)}")
        return cls(
            name=name,
            file=name + _ARRAY_SUFFIX,
            dtype=dtype,
            shape=tuple(_nonneg(x, "shape entry") for x in d["shape"]),
            size_bytes=_nonneg(d["size_bytes"], "size_bytes"),
            crc32c=_nonneg(d["crc32c"], "crc32c"),
        )


@dataclass(frozen=True)
class PartInfo:
    """What one owner wrote: returned by ``write_part`` and carried (pickled or as JSON) to the committer.

    ``round_id`` is the round at whose end the part was cut; ``next_offset`` is the first offset of the
    owner's Kafka partition that the part does NOT reflect, i.e. where the replay starts.
    """

    snapshot_id: int
    partition: int
    round_id: int
    next_offset: int
    arrays: tuple[ArrayFile, ...]
    meta: Mapping[str, Any]

    def array(self, name: str) -> ArrayFile:
        for a in self.arrays:
            if a.name == name:
                return a
        raise KeyError(f"part {self.partition} has no array {name!r}; it has {[a.name for a in self.arrays]}")

    @property
    def size_bytes(self) -> int:
        return sum(a.size_bytes for a in self.arrays)

    def to_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "partition": self.partition,
            "round_id": self.round_id,
            "next_offset": self.next_offset,
            "arrays": [a.to_json() for a in self.arrays],
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PartInfo:
        _expect_keys(d, {"snapshot_id", "partition", "round_id", "next_offset", "arrays", "meta"}, "part entry")
        if not isinstance(d["meta"], dict):
            raise ValueError(f"part meta must be an object, got {d['meta']!r}")
        return cls(
            snapshot_id=_nonneg(d["snapshot_id"], "snapshot_id"),
            partition=_nonneg(d["partition"], "partition"),
            round_id=_nonneg(d["round_id"], "round_id"),
            next_offset=_nonneg(d["next_offset"], "next_offset"),
            arrays=tuple(ArrayFile.from_json(a) for a in d["arrays"]),
            meta=d["meta"],
        )


@dataclass(frozen=True)
class Manifest:
    """A complete snapshot: one part per partition ``0..P-1`` (``parts[p].partition == p``), all at one round."""

    snapshot_id: int
    round_id: int
    created_s: float
    parts: tuple[PartInfo, ...]
    meta: Mapping[str, Any]
    format_version: int = FORMAT_VERSION

    @property
    def partitions(self) -> int:
        return len(self.parts)

    @property
    def next_offsets(self) -> dict[int, int]:
        """Kafka partition -> first offset to replay after restoring that partition's part."""
        return {p.partition: p.next_offset for p in self.parts}

    @property
    def size_bytes(self) -> int:
        return sum(p.size_bytes for p in self.parts)

    def part(self, partition: int) -> PartInfo:
        if not 0 <= partition < len(self.parts):
            raise ValueError(
                f"partition must be in [0, {len(self.parts)}) for snapshot {self.snapshot_id}, got {partition!r}"
            )
        return self.parts[partition]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "snapshot_id": self.snapshot_id,
            "round_id": self.round_id,
            "created_s": self.created_s,
            "partitions": self.partitions,
            "meta": dict(self.meta),
            "parts": [p.to_json() for p in self.parts],
        }

    @classmethod
    def from_json(cls, d: Any) -> Manifest:
        """Parses and checks a manifest; ``ValueError`` says what is wrong (the caller names the file)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} manifest (format {d.get('format') if isinstance(d, dict) else d!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown format_version {d.get('format_version')!r}, this reader knows {FORMAT_VERSION}")
        _expect_keys(
            d,
            {"format", "format_version", "snapshot_id", "round_id", "created_s", "partitions", "meta", "parts"},
            "manifest",
        )
        parts = tuple(PartInfo.from_json(p) for p in d["parts"])
        sid, rid = _nonneg(d["snapshot_id"], "snapshot_id"), _nonneg(d["round_id"], "round_id")
        if [p.partition for p in parts] != list(range(_nonneg(d["partitions"], "partitions"))):
            raise ValueError(f"parts {[p.partition for p in parts]} are not partitions 0..{d['partitions']}-1")
        for p in parts:
            if p.snapshot_id != sid or p.round_id != rid:
                raise ValueError(
                    f"part {p.partition} is of snapshot {p.snapshot_id} round {p.round_id}, "
                    f"manifest says snapshot {sid} round {rid}"
                )
        if not isinstance(d["meta"], dict) or not isinstance(d["created_s"], (int, float)):
            raise ValueError(f"bad meta {d['meta']!r} or created_s {d['created_s']!r}")
        return cls(
            snapshot_id=sid,
            round_id=rid,
            created_s=float(d["created_s"]),
            parts=parts,
            meta=d["meta"],
            format_version=FORMAT_VERSION,
        )


@dataclass(frozen=True)
class _Check:
    """The verdict on one snapshot directory: its manifest if complete, else why not."""

    snapshot_id: int
    manifest: Manifest | None
    reason: str = ""


class SnapshotStore:
    """Snapshots under one root of a ``pyarrow.fs`` filesystem; safe to use from many processes at once.

    Parts are written concurrently by their owners (each to its own directory); one coordinator commits.
    Snapshot ids must increase from commit to commit (``next_id()`` gives one above every directory seen,
    torn ones included, so a retry never writes into a torn snapshot's directory).

    ``uri``: a local path (created if missing) or a URI for ``pyarrow.fs.FileSystem.from_uri``; with
    ``filesystem`` given, ``uri`` is a path inside it.  ``retention``: how many complete snapshots to keep.
    ``clock``: seconds since the epoch, for the manifest's ``created_s`` (injected so tests control it).
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        retention: int = 3,
        filesystem: pafs.FileSystem | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(retention, bool) or not isinstance(retention, int) or retention < 1:
            raise ValueError(f"retention must be an int >= 1, got {retention!r}")
        uri = os.fspath(uri)
        if filesystem is not None:
            fs, root = filesystem, uri
        elif "://" in uri:
            fs, root = pafs.FileSystem.from_uri(uri)
        else:
            fs, root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self._fs: pafs.FileSystem = fs
        self._root = root.rstrip("/") or "/"
        self._uri = uri
        self._retention = retention
        self._clock = clock
        self._issued = -1  # the highest id next_id handed out
        if fs.type_name == "local":
            fs.create_dir(self._root, recursive=True)

    def __repr__(self) -> str:
        return f"SnapshotStore({self._uri!r}, retention={self._retention})"

    @property
    def retention(self) -> int:
        return self._retention

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._fs

    def snapshot_dir(self, snapshot_id: int) -> str:
        """The snapshot's directory as a path of ``filesystem`` (for tools and tests)."""
        return f"{self._root}/snap-{_check_id(snapshot_id):012d}"

    # ---------------------------------------------------------------- writing

    def write_part(
        self,
        snapshot_id: int,
        partition: int,
        arrays: Mapping[str, np.ndarray],
        *,
        round_id: int,
        next_offset: int,
        meta: Mapping[str, Any] | None = None,
    ) -> PartInfo:
        """Writes one partition's arrays; returns what the manifest needs.  Does not make anything visible.

        Any earlier attempt at the same part is removed first, so a retried owner starts clean.  Arrays keep
        their dtype (one of ``SUPPORTED_DTYPES``) and shape; 2-D and higher are stored as nested
        FixedSizeList columns, readable as such by any Arrow reader.  ``meta`` is stored as JSON: what is
        returned is already its JSON form (int keys become strings), which is what a reader will see.
        """
        sid = _check_id(snapshot_id)
        partition = _nonneg(partition, "partition")
        round_id, next_offset = _nonneg(round_id, "round_id"), _nonneg(next_offset, "next_offset")
        meta_json = _json_object(meta, f"meta of part {partition}")
        checked = {_check_array_name(name): _check_array(name, arr) for name, arr in arrays.items()}
        snap_dir = self.snapshot_dir(sid)
        if self._fs.get_file_info(f"{snap_dir}/{MANIFEST_NAME}").type != pafs.FileType.NotFound:
            raise SnapshotError(
                f"snapshot {sid} is already committed ({snap_dir}/{MANIFEST_NAME}); "
                f"a committed snapshot is immutable, write a new id (next_id())"
            )
        part_dir = f"{snap_dir}/part-{partition}"
        self._fs.delete_dir_contents(part_dir, missing_dir_ok=True)
        self._fs.create_dir(part_dir, recursive=True)
        files = []
        for name in sorted(checked):
            arr = checked[name]
            buf = _encode(name, arr)
            fname = name + _ARRAY_SUFFIX
            with self._fs.open_output_stream(f"{part_dir}/{fname}", compression=None) as out:
                out.write(buf)
            files.append(
                ArrayFile(
                    name=name,
                    file=fname,
                    dtype=arr.dtype.name,
                    shape=tuple(arr.shape),
                    size_bytes=buf.size,
                    crc32c=crc32c.crc32c(buf),
                )
            )
        info = PartInfo(
            snapshot_id=sid,
            partition=partition,
            round_id=round_id,
            next_offset=next_offset,
            arrays=tuple(files),
            meta=meta_json,
        )
        logger.debug("snapshot %d part %d: %d arrays, %d bytes", sid, partition, len(files), info.size_bytes)
        return info

    def commit(
        self, snapshot_id: int, parts: Sequence[PartInfo], *, partitions: int, meta: Mapping[str, Any] | None = None
    ) -> Manifest:
        """Makes the snapshot complete by writing its manifest, last and atomically; then prunes.

        Refuses (``SnapshotError``, naming what is wrong) unless ``parts`` are exactly partitions
        ``0..partitions-1`` once each, all of this snapshot and of one round (a consistent cut), every
        listed file is present with its size, the snapshot is not committed yet, and its id is above the
        newest complete snapshot's.  ``meta`` (e.g. a model/config digest) is stored as JSON.
        """
        sid = _check_id(snapshot_id)
        n = _nonneg(partitions, "partitions")
        if n < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions!r}")
        meta_json = _json_object(meta, f"meta of snapshot {sid}")
        ordered = _check_parts(sid, parts, n)
        snap_dir = self.snapshot_dir(sid)
        listing = self._listing().get(sid, {})
        if MANIFEST_NAME in listing:
            raise SnapshotError(f"snapshot {sid} is already committed ({snap_dir}/{MANIFEST_NAME})")
        newest = next((c.snapshot_id for c in self._scan(verify=False, warn=False) if c.manifest), None)
        if newest is not None and newest >= sid:
            raise SnapshotError(f"snapshot ids must increase: the newest complete snapshot is {newest}, got {sid}")
        for part in ordered:
            problem = _file_problem(part, listing)
            if problem:
                raise SnapshotError(f"snapshot {sid} cannot be committed: {snap_dir}/{problem}")
        manifest = Manifest(
            snapshot_id=sid, round_id=ordered[0].round_id, created_s=float(self._clock()), parts=ordered, meta=meta_json
        )
        self._write_manifest(snap_dir, manifest)
        logger.info(
            "snapshot %d committed: round %d, %d partitions, %d bytes", sid, manifest.round_id, n, manifest.size_bytes
        )
        try:
            self.prune()
        except OSError as e:  # the snapshot is committed; a failed clean-up must not read as a failed commit
            logger.warning("snapshot %d committed, but pruning old snapshots failed: %s", sid, e)
        return manifest

    def _write_manifest(self, snap_dir: str, manifest: Manifest) -> None:
        data = json.dumps(manifest.to_json(), indent=1, sort_keys=True, allow_nan=False).encode()
        final = f"{snap_dir}/{MANIFEST_NAME}"
        if self._fs.type_name in _ATOMIC_RENAME:
            tmp = f"{final}.tmp-{uuid.uuid4().hex}"
            with self._fs.open_output_stream(tmp, compression=None) as out:
                out.write(data)
            self._fs.move(tmp, final)
        else:
            with self._fs.open_output_stream(final, compression=None) as out:
                out.write(data)

    # ---------------------------------------------------------------- reading

    def latest(self, *, verify: bool = False) -> Manifest | None:
        """The newest complete snapshot, or None.  ``verify`` also reads every file and checks its crc32c."""
        for c in self._scan(verify=verify, warn=True):
            if c.manifest is not None:
                return c.manifest
        return None

    def list(self, *, verify: bool = False) -> list[Manifest]:
        """Every complete snapshot, newest first (torn ones are skipped with a warning)."""
        return [c.manifest for c in self._scan(verify=verify, warn=True) if c.manifest is not None]

    def next_id(self) -> int:
        """One above every snapshot directory present, complete or not, and above every id this store
        handed out before: an id is never reused, even when the snapshot it was given to wrote nothing yet.
        That fences the late writer: an owner cut off mid-write (its node lost, a new owner in its place)
        that finishes its part later writes into an abandoned snapshot's directory, never a newer one's."""
        self._issued = max(max(self._listing(), default=-1), self._issued) + 1
        return self._issued

    def read_part(self, manifest: Manifest, partition: int) -> tuple[dict[str, np.ndarray], PartInfo]:
        """The part's arrays (same dtypes and shapes, writable, owned by the caller) and its info.

        Every file is checked against the manifest's size and crc32c before it is decoded; a mismatch or a
        missing file raises ``SnapshotError`` naming the file.
        """
        part = manifest.part(partition)
        part_dir = f"{self.snapshot_dir(manifest.snapshot_id)}/part-{part.partition}"
        out: dict[str, np.ndarray] = {}
        for a in part.arrays:
            path = f"{part_dir}/{a.file}"
            buf = self._read_checked(path, a)
            try:
                out[a.name] = _decode(buf, a)
            except (pa.ArrowException, ValueError) as e:
                raise SnapshotError(f"{path}: cannot decode array {a.name!r}: {e}") from e
        return out, part

    def _read_checked(self, path: str, a: ArrayFile) -> pa.Buffer:
        try:
            with self._fs.open_input_file(path) as f:
                buf = f.read_buffer()
        except FileNotFoundError as e:
            raise SnapshotError(f"{path}: missing (array {a.name!r})") from e
        if buf.size != a.size_bytes:
            raise SnapshotError(f"{path}: {buf.size} bytes, the manifest says {a.size_bytes} (torn or replaced)")
        crc = crc32c.crc32c(buf)
        if crc != a.crc32c:
            raise SnapshotError(f"{path}: crc32c {crc:#010x}, the manifest says {a.crc32c:#010x} (corrupt)")
        return buf

    # ---------------------------------------------------------------- retention

    def prune(self) -> tuple[int, ...]:
        """Keeps the newest ``retention`` complete snapshots; returns the ids of the directories deleted.

        Deletes older complete snapshots and incomplete directories older than the newest complete one.
        Never touches a directory newer than the newest complete snapshot: it may be being written now.
        A manifest is deleted before its files, so a crash mid-prune leaves an incomplete directory, never
        a manifest that names missing files.
        """
        checks = list(self._scan(verify=False, warn=False))
        complete = [c.snapshot_id for c in checks if c.manifest is not None]
        if not complete:
            return ()
        keep = set(complete[: self._retention])
        doomed = tuple(c.snapshot_id for c in checks if c.snapshot_id < complete[0] and c.snapshot_id not in keep)
        for sid in doomed:
            snap_dir = self.snapshot_dir(sid)
            manifest = f"{snap_dir}/{MANIFEST_NAME}"
            if self._fs.get_file_info(manifest).type == pafs.FileType.File:
                self._fs.delete_file(manifest)
            self._fs.delete_dir(snap_dir)
            logger.info("snapshot %d pruned (keeping %s)", sid, sorted(keep, reverse=True))
        return doomed

    # ---------------------------------------------------------------- scanning

    def _listing(self) -> dict[int, dict[str, int]]:
        """One recursive listing: snapshot id -> {path relative to its directory: size in bytes}."""
        snaps: dict[int, dict[str, int]] = {}
        sel = pafs.FileSelector(self._root, recursive=True, allow_not_found=True)
        prefix = self._root.rstrip("/") + "/"
        for info in self._fs.get_file_info(sel):
            if not info.path.startswith(prefix):
                continue
            head, _, rest = info.path[len(prefix) :].partition("/")
            m = _SNAP_DIR.match(head)
            if m is None:
                continue
            files = snaps.setdefault(int(m.group(1)), {})
            if rest and info.type == pafs.FileType.File:
                files[rest] = info.size
        return snaps

    def _scan(self, *, verify: bool, warn: bool) -> Iterator[_Check]:
        """Every snapshot directory, newest first, with its verdict; lazily, so latest() stops early."""
        listing = self._listing()
        for sid in sorted(listing, reverse=True):
            check = self._check(sid, listing[sid], verify)
            if check.manifest is None and warn:
                logger.warning("snapshot %d in %s skipped: %s", sid, self._uri, check.reason)
            yield check

    def _check(self, sid: int, files: Mapping[str, int], verify: bool) -> _Check:
        snap_dir = self.snapshot_dir(sid)
        if MANIFEST_NAME not in files:
            return _Check(sid, None, f"no {MANIFEST_NAME} (still being written, or torn before its commit)")
        path = f"{snap_dir}/{MANIFEST_NAME}"
        try:
            with self._fs.open_input_stream(path, compression=None) as f:
                manifest = Manifest.from_json(json.loads(f.read()))
        except FileNotFoundError:
            return _Check(sid, None, f"{path} vanished while reading (pruned concurrently)")
        except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return _Check(sid, None, f"{path} is unusable: {e}")
        if manifest.snapshot_id != sid:
            return _Check(sid, None, f"{path} names snapshot {manifest.snapshot_id}, not {sid}")
        for part in manifest.parts:
            problem = _file_problem(part, files)
            if problem:
                return _Check(sid, None, f"{snap_dir}/{problem}")
        if verify:
            for part in manifest.parts:
                for a in part.arrays:
                    try:
                        self._read_checked(f"{snap_dir}/part-{part.partition}/{a.file}", a)
                    except SnapshotError as e:
                        return _Check(sid, None, str(e))
        return _Check(sid, manifest)


# -------------------------------------------------------------------- helpers


def _file_problem(part: PartInfo, files: Mapping[str, int]) -> str:
    """Why the listing does not hold this part's files as recorded ('' if it does)."""
    for a in part.arrays:
        rel = f"part-{part.partition}/{a.file}"
        size = files.get(rel)
        if size is None:
            return f"{rel} is missing"
        if size != a.size_bytes:
            return f"{rel} has {size} bytes, the manifest says {a.size_bytes}"
    return ""


def _check_parts(sid: int, parts: Sequence[PartInfo], n: int) -> tuple[PartInfo, ...]:
    """The parts in partition order, if they are exactly 0..n-1 once each, of snapshot sid, at one round."""
    counts = collections.Counter(p.partition for p in parts)
    missing = [p for p in range(n) if p not in counts]
    duplicated = sorted(p for p, c in counts.items() if c > 1)
    extra = sorted(p for p in counts if p >= n)
    if missing or duplicated or extra:
        raise SnapshotError(
            f"snapshot {sid} needs partitions 0..{n - 1} once each: missing {missing}, "
            f"duplicated {duplicated}, out of range {extra}"
        )
    foreign = {p.partition: p.snapshot_id for p in parts if p.snapshot_id != sid}
    if foreign:
        raise SnapshotError(f"snapshot {sid}: parts of other snapshots (partition: snapshot) {foreign}")
    rounds = {p.partition: p.round_id for p in parts}
    if len(set(rounds.values())) != 1:
        raise SnapshotError(
            f"snapshot {sid} is not a consistent cut: parts at different rounds "
            f"(partition: round) {dict(sorted(rounds.items()))}"
        )
    return tuple(sorted(parts, key=lambda p: p.partition))


def _check_id(snapshot_id: int) -> int:
    sid = _nonneg(snapshot_id, "snapshot_id")
    if sid > MAX_SNAPSHOT_ID:
        raise ValueError(f"snapshot_id must be <= {MAX_SNAPSHOT_ID}, got {snapshot_id!r}")
    return sid


def _nonneg(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}") from None
    if v < 0:
        raise ValueError(f"{what} must be an int >= 0, got {value!r}")
    return v


def _expect_keys(d: Any, keys: set[str], what: str) -> None:
    if not isinstance(d, Mapping) or not keys <= d.keys():
        got = sorted(d) if isinstance(d, Mapping) else d
        raise ValueError(f"{what} must have keys {sorted(keys)}, got {got!r}")


def _json_object(meta: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``meta`` as it will read back from JSON (numpy scalars become numbers); rejects what JSON cannot hold."""

    def default(o: Any) -> Any:
        if isinstance(o, (np.integer, np.floating, np.bool_)):
            return o.item()
        raise TypeError(f"{type(o).__name__} {o!r}")

    try:
        return json.loads(json.dumps(dict(meta or {}), default=default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable (no NaN/inf): {e}") from None


def _check_array_name(name: Any) -> str:
    if not isinstance(name, str) or not _ARRAY_NAME.match(name):
        raise ValueError(f"array name must match {_ARRAY_NAME.pattern} (it becomes a file name), got {name!r}")
    return name


def _check_array(name: str, arr: Any) -> np.ndarray:
    """A native-endian, C-contiguous copy or view of ``arr`` with a supported dtype."""
    a = np.asarray(arr)
    if a.dtype.name not in SUPPORTED_DTYPES:
        raise ValueError(f"array {name!r}: dtype {a.dtype.name!r} is not one of {sorted(SUPPORTED_DTYPES)}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return a if a.flags.c_contiguous else a.copy(order="C")  # np.ascontiguousarray would make 0-d arrays 1-d


def _encode(name: str, arr: np.ndarray) -> pa.Buffer:
    """One Arrow IPC file holding ``arr`` as one column; shape and dtype also in the schema's metadata.

    2-D and higher arrays become nested FixedSizeList columns (one row per leading index) so other Arrow
    readers see their structure; a zero-width trailing dimension cannot be a FixedSizeList (pyarrow rejects
    list_size 0), so such an array, which has no elements anyway, is stored flat.  The reader always
    reshapes from the recorded shape.
    """
    col: pa.Array = pa.array(arr.reshape(-1))
    if arr.ndim >= 2 and all(d > 0 for d in arr.shape[1:]):
        for d in reversed(arr.shape[1:]):
            col = pa.FixedSizeListArray.from_arrays(col, d)
    metadata = {_SHAPE_KEY: json.dumps(list(arr.shape)).encode(), _DTYPE_KEY: arr.dtype.name.encode()}
    schema = pa.schema([pa.field(name, col.type, nullable=False)], metadata=metadata)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, schema) as writer:
        writer.write_batch(pa.record_batch([col], schema=schema))
    return sink.getvalue()


def _decode(buf: pa.Buffer, a: ArrayFile) -> np.ndarray:
    table = ipc.open_file(buf).read_all()
    md = table.schema.metadata or {}
    shape = tuple(json.loads(md.get(_SHAPE_KEY, b"null")) or ())
    dtype = md.get(_DTYPE_KEY, b"").decode()
    if shape != a.shape or dtype != a.dtype:
        raise ValueError(f"file holds {dtype} {shape}, the manifest says {a.dtype} {a.shape}")
    col = table.column(0).combine_chunks()
    while pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    values = col.to_numpy(zero_copy_only=False)
    if values.size != int(np.prod(shape)):
        raise ValueError(f"file holds {values.size} values, shape {shape} needs {int(np.prod(shape))}")
    if not values.flags.writeable:  # a view of the read buffer: copy so the caller owns a writable array
        values = values.copy()
    return values.astype(np.dtype(dtype), copy=False).reshape(shape)
