"""numba kernels compiled cold (a fresh machine or clone: an empty on-disk cache) give exact answers, and
building an engine compiles every kernel its batches use.

A warm cache once hid a kernel signature that was compiled only at a partition owner's first write
(float32 sums, ``sum_rows``: 7-16 s on one core), so that write missed the gateway's verdict window on
every fresh clone and the contract tests that followed compared against a single engine it never
reached (docs/engine.md, "Kernels compiled cold").  This runs ``tests/core/cold_kernels.py`` in a
subprocess with an empty ``NUMBA_CACHE_DIR``: no test before it, and no earlier run, can have warmed it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clustergnn import cpu_kernels

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not cpu_kernels.AVAILABLE, reason="numba is not installed: no kernels to compile")
def test_kernels_compiled_cold_are_exact_and_all_compiled_when_the_engine_is_built(tmp_path: Path) -> None:
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CLUSTERGNN_KERNELS"}
    env.update(NUMBA_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.core.cold_kernels"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert any(cache.rglob("*.nbi")), "the kernels were not compiled into the empty cache"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["max_error"] <= 1e-5, f"relative error {out['max_error']:.2e} vs DGL ({out['where']}), compiled cold"
    assert not out["late"], "compiled after the engines were built (cpu_kernels.warm_up misses them):\n" + "\n".join(
        out["late"]
    )
