"""A short chaos run (``scripts/chaos.py --quick``): owner SIGKILLs, a driver SIGKILL and a SIGTERM restart
of ``clustergnn serve`` while a producer streams through the embedded broker and a client reads over gRPC;
then every mutation is checked against a single-process engine fed the whole log.  The long run is the
script itself (docs/operations.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streams.broker import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_chaos_run_loses_and_doubles_nothing(tmp_path) -> None:
    out = tmp_path / "chaos.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--quick", "--json", str(out)]
    cmd += ["--port", str(free_port()), "--workdir", str(tmp_path / "work"), "--seed", "3"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    tail = (run.stdout + run.stderr)[-4000:]
    assert out.exists(), tail
    res = json.loads(out.read_text())
    kinds = sorted(f["kind"] for f in res["faults"])
    assert kinds == ["driver", "owner", "owner", "owner", "restart"], tail
    assert all(f["to_serving_s"] is not None for f in res["faults"]), tail
    o = res["oracle"]
    assert o["lost"] == 0 and o["doubled"] == 0 and o["updates_lost"] == 0, tail
    assert o["max_rel_error"] <= 1e-5 and o["embeddings_off"] == 0, tail
    assert o["malformed_sent"] > 0 and o["malformed_dead_lettered"] == o["malformed_sent"], tail
    assert o["valid_dead_lettered"] == 0 and o["dead_letter_duplicates"] == 0, tail
    assert res["read_watermark_regressions"] == 0 and res["reads"].get("OK", 0) > 0, tail
    assert run.returncode == 0, tail
