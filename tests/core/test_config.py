"""The ``snapshot`` config section: defaults, bad values named, unknown and retired keys rejected."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from clustergnn import config as config_module
from clustergnn.config import Config, ConfigError, SnapshotConfig


def test_defaults_are_snapshots_off() -> None:
    sc = Config().snapshot
    assert sc == SnapshotConfig(uri=None, interval_s=10.0, interval_mutations=0, retention=3)


def test_a_valid_section_round_trips(tmp_path: Path) -> None:
    cfg = Config.from_dict(
        {"snapshot": {"uri": "s3://bucket/prefix", "interval_s": 2.5, "interval_mutations": 1000, "retention": 5}}
    )
    assert cfg.snapshot.uri == "s3://bucket/prefix" and cfg.snapshot.retention == 5
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert SnapshotConfig(uri=tmp_path).uri == str(tmp_path)  # a Path is stored as str
    assert cfg.replace(snapshot={"interval_s": 1}).snapshot.interval_s == 1


@pytest.mark.parametrize(
    "values,message",
    [
        ({"uri": ""}, "snapshot.uri must be a non-empty path or URI, or null, got ''"),
        ({"uri": 5}, "snapshot.uri must be a non-empty path or URI, or null, got 5"),
        ({"interval_s": 0}, "snapshot.interval_s must be a finite number > 0, got 0"),
        ({"interval_s": float("inf")}, "snapshot.interval_s must be a finite number > 0, got inf"),
        ({"interval_s": "10"}, "snapshot.interval_s must be a finite number > 0, got '10'"),
        ({"interval_mutations": -1}, r"snapshot.interval_mutations must be an integer >= 0 \(0 = off\), got -1"),
        ({"interval_mutations": 1.5}, r"snapshot.interval_mutations must be an integer >= 0 \(0 = off\), got 1.5"),
        ({"retention": 0}, "snapshot.retention must be an integer >= 1, got 0"),
        ({"retention": True}, "snapshot.retention must be an integer >= 1, got True"),
    ],
)
def test_bad_values_are_named(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_dict({"snapshot": values})


def test_unknown_keys_are_rejected_with_the_allowed_set() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['dir'\] in config.snapshot; allowed: \['interval_m"):
        Config.from_dict({"snapshot": {"dir": "/x"}})


def test_the_retired_cluster_snapshot_dir_points_at_snapshot_uri() -> None:
    with pytest.raises(ConfigError, match=r"config.cluster.snapshot_dir was replaced by snapshot.uri .* got '/snaps'"):
        Config.from_dict({"cluster": {"snapshot_dir": "/snaps"}})
    with pytest.raises(ConfigError, match="replaced by snapshot.uri"):
        Config().replace(cluster={"snapshot_dir": None})


def test_every_field_of_every_section_is_documented() -> None:
    tree = ast.parse(inspect.getsource(config_module))
    documented: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names = set()
            for a, b in zip(node.body, node.body[1:], strict=False):
                is_doc = (
                    isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)
                )
                if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and is_doc:
                    names.add(a.target.id)
            documented[node.name] = names
    for section in (type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)):
        missing = {f.name for f in dataclasses.fields(section)} - documented[section.__name__]
        assert not missing, f"{section.__name__} fields without a docstring: {sorted(missing)}"


@pytest.mark.parametrize("bad", [-1, 20, 1.5, True, "0"])
def test_a_bad_owner_niceness_is_named(bad: object) -> None:
    from clustergnn.config import Config

    with pytest.raises(ConfigError, match=rf"cluster.owner_niceness must be an integer in 0..19, got {bad!r}"):
        Config.from_dict({"cluster": {"owner_niceness": bad}})
    assert Config.from_dict({"cluster": {"owner_niceness": 7}}).cluster.owner_niceness == 7


@pytest.mark.parametrize("bad", ["Lean", "tcmalloc", 1, None])
def test_a_bad_owner_malloc_is_named(bad: object) -> None:
    with pytest.raises(ConfigError, match=rf"cluster.owner_malloc must be 'default' or 'lean', got {bad!r}"):
        Config.from_dict({"cluster": {"owner_malloc": bad}})
    assert Config.from_dict({"cluster": {"owner_malloc": "lean"}}).cluster.owner_malloc == "lean"


def test_spare_owners_is_a_small_count_and_the_old_switch_points_to_it() -> None:
    assert Config.from_dict({}).cluster.spare_owners == 2
    assert Config.from_dict({"cluster": {"spare_owners": 0}}).cluster.spare_owners == 0
    for bad in (-1, 9, True, 1.5):
        with pytest.raises(ConfigError, match="cluster.spare_owners must be an integer in 0..8"):
            Config.from_dict({"cluster": {"spare_owners": bad}})
    with pytest.raises(ConfigError, match="cluster.spare_owner was replaced by config.cluster.spare_owners"):
        Config.from_dict({"cluster": {"spare_owner": True}})
