"""The committed generated code is what scripts/gen_proto.py generates from proto/ now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gen_proto():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_code_is_current() -> None:
    gen = _gen_proto()
    fresh = gen.generate()
    committed = {p.name: p.read_text() for p in gen.OUT_DIR.glob("*.py*")}
    assert set(committed) == set(fresh), "run scripts/gen_proto.py"
    stale = [name for name, text in fresh.items() if committed[name] != text]
    assert not stale, f"{stale} differ from a fresh generation: run scripts/gen_proto.py"
    assert gen.main(["--check"]) == 0


def test_generated_imports_are_package_relative() -> None:
    text = (ROOT / "actors/gateway/_gen/clustergnn_pb2_grpc.py").read_text()
    assert "from . import clustergnn_pb2" in text
    assert "from clustergnn.v1" not in text


def test_proto_package_and_services() -> None:
    from actors.gateway._gen import clustergnn_pb2 as pb

    assert pb.DESCRIPTOR.package == "clustergnn.v1"
    assert pb.DESCRIPTOR.name == "clustergnn/v1/clustergnn.proto"
    assert set(pb.DESCRIPTOR.services_by_name) == {"EmbeddingService", "MutationService", "AdminService"}
    watch = pb.DESCRIPTOR.services_by_name["EmbeddingService"].methods_by_name["Watch"]
    assert watch.server_streaming and not watch.client_streaming


def test_proto_mutation_kinds_track_the_core() -> None:
    from actors.gateway._gen import clustergnn_pb2 as pb
    from clustergnn.mutations import MutationKind

    for k in MutationKind:
        assert pb.MutationKind.Value(f"MUTATION_KIND_{k.name}") == int(k) + 1
