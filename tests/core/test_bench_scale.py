"""Smoke test of ``scripts/bench_scale.py`` on a tiny R-MAT graph (its DGL worker subprocess included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_scale_tiny_run_writes_its_json(tmp_path: Path) -> None:
    out = tmp_path / "bench_scale.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--scale", "10", "--edge-factor", "8"]
    cmd += ["--features", "12", "--hidden", "16", "--out", "5", "--batch-sizes", "1,100"]
    cmd += ["--scale-batches", "0.05", "--samples", "50", "--dgl-repeats", "1", "--rss-trace"]
    cmd += ["--tmpdir", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "updates (R-MAT stream" in proc.stdout
    (r,) = json.loads(out.read_text())["results"]
    assert r["model"] == "sage-mean" and r["vertices"] == 1024
    assert [u["batch_events"] for u in r["updates"]] == [1, 100]
    assert r["max_rel_error_sampled"] <= 1e-5
    assert r["dgl_forward_s"] > 0 and r["build_peak_rss_gib"] >= r["rss_before_build_gib"] > 0
    mem = r["memory"]
    # widening first layer 12 -> 16: the sum is kept of the 12-wide inputs (float32 under a drift bound)
    assert mem["entries"]["agg0"]["dtype"] == "float32" and mem["entries"]["agg0"]["shape"][1] == 12
    caches = sum(e["bytes"] for e in mem["entries"].values() if e["kind"] == "cache")
    assert abs(mem["cache_bytes_per_vertex"] - caches / r["vertices"]) < 1e-6
    assert any(s["stage"] == "in structure edits" for s in r["build_rss_trace"])
