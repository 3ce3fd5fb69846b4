"""Smoke test of ``scripts/bench_memory.py`` with tiny sizes: it runs, prints its tables and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_memory_tiny_run_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench_memory.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_memory.py"), "--sizes-mb", "1", "--steps", "10000"]
    cmd += ["--rows", "50,200", "--table-rows", "4096", "--width", "5", "--repeats", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ns per dependent load" in proc.stdout and "ns per row" in proc.stdout
    res = json.loads(out.read_text())
    assert [(r["mb"], r["huge"]) for r in res["latency"]] == [(1, False), (1, True)]
    assert all(r["ns"] > 0 for r in res["latency"])
    # two row counts (distinct rows of 50 and 200 draws), each without and with the prefetch, per page size
    assert len(res["rows"]) == 8 and all(0 < r["rows"] <= 200 and r["median_us"] > 0 for r in res["rows"])
    assert {r["ahead"] for r in res["rows"]} == {0, 16}
