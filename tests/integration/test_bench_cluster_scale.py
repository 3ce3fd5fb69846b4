"""``scripts/bench_cluster_scale.py`` end to end on a tiny R-MAT graph: its produce worker writes the graph to
the embedded broker, P = 4 owners load it through Kafka, a short update stream runs, and the sampled
final rows match DGL's forward (its two worker subprocesses included).  Nothing here judges a time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_bench_cluster_scale_tiny_run_loads_serves_and_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_cluster_scale.py"), "--scale", "10", "--edge-factor", "8",
           "--features", "12", "--hidden", "16", "--out", "5", "--rates", "400", "--seconds", "1",
           "--samples", "100", "--tmpdir", str(tmp_path), "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    p = r["produce"]
    assert p["vertices"] == 1024 and p["mutations"] == p["vertices"] + p["edges"]
    owners = [o for o in r["owners"] if "partition" in o]
    assert [o["partition"] for o in owners] == [0, 1, 2, 3]
    assert sum(o["vertices"] for o in owners) == 1024
    for o in owners:  # the status's memory: every kind, the caches hold at least the owned rows
        assert set(o["memory_bytes"]) == {"cache", "per_slot", "structure", "scratch", "model"}
        assert o["memory_bytes"]["cache"] >= o["vertices"] * 4 * (12 + 16 + 5)
        assert o["rss_bytes"] > 0
    assert r["load"]["load_s"] > 0 and r["load"]["peak_total_rss_bytes"] > 0
    assert {"driver", "broker", "owner0", "owner1", "owner2", "owner3"} <= set(r["rss_after_load"])  # by process
    (rate,) = r["rates"]
    assert rate["mutations"] > 0 and rate["drained"]
    assert r["dgl"]["final_edges"] > 0
    assert r["max_rel_error_sampled"] <= 1e-5
    assert "relative error vs DGL" in proc.stdout
