"""The owners' round profile (issue 12 item 2): phase and call times inside an owner, and how
``scripts/bench_cluster.py`` sets them against the coordinator's step times."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from actors.owner import PhaseTimes, _timed


class _Owner:
    def __init__(self) -> None:
        self.phases = PhaseTimes()

    @_timed("layer")
    def layer(self, li: int, sleep_s: float) -> int:
        with self.phases(f"layer{li}"):
            time.sleep(sleep_s)
        return li


def test_phase_and_call_times_are_recorded_per_name() -> None:
    o = _Owner()
    assert o.layer(0, 0.03) == 0 and o.layer(0, 0.0) == 0
    s = o.phases.summary()
    assert set(s) == {"layer0", "call:layer"}
    assert s["layer0"]["n"] == 2 and s["call:layer"]["n"] == 2
    assert s["call:layer"]["p99"] >= 20.0  # the sleep is inside both: a call is timed around its phases
    with pytest.raises(KeyError), o.phases("broken"):
        {}["missing"]
    assert o.phases.summary()["broken"]["n"] == 1  # a phase that raises is still timed


def _bench():
    path = Path(__file__).resolve().parents[2] / "scripts" / "bench_cluster.py"
    spec = importlib.util.spec_from_file_location("bench_cluster", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_profile_sets_each_step_against_the_owner_call_behind_it() -> None:
    bench = _bench()
    steps = {"ingest": 1.0, "structure": 6.0, "layer0": 8.0, "layer1": 25.0}
    profiles = [
        {"call:structure": {"p50": 0.5}, "call:layer": {"p50": 1.0}, "call:finish_round_then_ingest": {"p50": 12.0},
         "call:ingest": {"p50": 0.7}, "poll": {"p50": 6.0}},
        {"call:structure": {"p50": 0.9}, "call:layer": {"p50": 0.8}, "call:finish_round_then_ingest": {"p50": 10.0},
         "call:ingest": {"p50": 0.2}, "poll": {"p50": 4.0}},
    ]  # fmt: skip
    prof = bench.round_profile(steps, profiles, num_layers=2)
    assert prof["steps"]["structure"]["in_owner_ms_p50_slowest"] == 0.9
    assert prof["steps"]["layer0"]["in_owner_ms_p50_slowest"] == 1.0
    assert prof["steps"]["layer1"]["in_owner_ms_p50_slowest"] == 12.0  # the fused last layer + next ingest
    assert prof["steps"]["layer1"]["outside_owners_ms"] == 13.0
    assert prof["phases_ms_p50"] == {"poll": 5.0}
