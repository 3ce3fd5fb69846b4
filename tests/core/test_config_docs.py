"""docs/config.md is generated from clustergnn/config.py, and every ``section.field`` the docs name exists."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

from clustergnn.config import Config

ROOT = Path(__file__).resolve().parents[2]
# names the docs mention on purpose although they are not (or no longer) fields
RETIRED = {"cluster.snapshot_dir"}


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_reference_is_current():
    text = _gen().generate()
    assert (ROOT / "docs" / "config.md").read_text() == text, (
        "docs/config.md differs from clustergnn/config.py: run python scripts/gen_config_docs.py"
    )


def test_every_field_is_in_the_reference():
    text = (ROOT / "docs" / "config.md").read_text()
    for sec in dataclasses.fields(Config):
        assert f"## `{sec.name}`" in text
        for f in dataclasses.fields(sec.default_factory):
            assert f"| `{f.name}` |" in text, f"{sec.name}.{f.name} missing from docs/config.md"


def _known() -> set[str]:
    return {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)}


def test_docs_name_only_real_fields():
    sections = "|".join(f.name for f in dataclasses.fields(Config))
    # `section.field` inside a code span; not `Status.model.dims` (a proto path) nor `model.state_dict()` (code)
    pattern = re.compile(rf"`(?:[^`]*?)?(?<![\w.])((?:{sections})\.[a-z_]+)\b(?![(\w])")
    known = _known() | RETIRED
    bad = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for name in pattern.findall(line):
                if name not in known and not name.endswith(("_pb2", ".py", ".md", ".json", ".yaml")):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {name}")
    assert not bad, "docs name config fields that do not exist:\n" + "\n".join(bad)


def test_the_check_catches_drift(tmp_path, monkeypatch):
    gen = _gen()
    monkeypatch.setattr(gen, "OUT", tmp_path / "config.md")
    (tmp_path / "config.md").write_text(gen.generate().replace("| `topic` |", "| `topik` |"))
    monkeypatch.setattr("sys.argv", ["gen_config_docs.py", "--check"])
    assert gen.main() == 1


def test_every_dead_letter_reason_is_in_the_one_table() -> None:
    from streams.wire import DecodeErrorCode

    text = (ROOT / "docs" / "wire-format.md").read_text()
    rows = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.MULTILINE))
    missing = sorted(c.value for c in DecodeErrorCode if c.value not in rows)
    assert not missing, f"dead-letter reasons missing from docs/wire-format.md's table: {missing}"
