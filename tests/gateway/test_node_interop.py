"""Interop with an independent client: Node's @grpc/grpc-js + @grpc/proto-loader, loading
proto/clustergnn/v1/clustergnn.proto at run time, calling the Python gateway over TLS with a token.

Needs ``node`` and ``npm`` on PATH; installs tests/gateway/node/node_modules from the committed
package-lock.json (``npm ci``) on first use.  Skips, saying why, only if node or npm is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.gateway.conftest import TOKENS, Certs, GatewayFactory
from tests.gateway.fakes import FakeBackend

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = Path(__file__).resolve().parent / "node"
PROTO = ROOT / "proto" / "clustergnn" / "v1" / "clustergnn.proto"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node_client() -> Path:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip(f"Node interop needs node and npm on PATH (node={node}, npm={npm})")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        cmd = [npm, "ci", "--no-audit", "--no-fund"]
        done = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR / "client.js"


def _call(
    client: Path, target: str, method: str, request: dict[str, Any], token: str | None, root: Path | None
) -> dict:
    spec = {"method": method, "request": request, "token": token, "rootCert": str(root) if root else None}
    done = subprocess.run(
        ["node", str(client), str(PROTO), target, json.dumps(spec)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_node_get_embeddings(node_client: Path, make_gateway: GatewayFactory, certs: Certs) -> None:
    fake = FakeBackend(dims=(8, 5))
    gw = make_gateway(fake, tls_cert=certs.cert, tls_key=certs.key, tokens=TOKENS, insecure_local=False)
    # ids as strings: int64 is not exact in a JS number
    out = _call(
        node_client,
        gw.target,
        "GetEmbeddings",
        {"vertex_ids": ["3", "9"], "max_staleness_ms": 100},
        TOKENS[0],
        certs.ca,
    )
    assert out["ok"], out
    resp = out["response"]
    assert resp["vertex_ids"] == ["3", "9"] and resp["versions"] == ["0", "0"]
    assert resp["layer"] == 1 and resp["embeddings"]["format"] == "EMBEDDING_FORMAT_RAW_F32"
    assert resp["embeddings"]["rows"] == 2 and resp["embeddings"]["dim"] == 5
    assert resp["staleness_ms"] == 0 and resp["watermark"] == {"0": "0", "1": "0"}
    assert resp["bound_met"] is True  # a read without answer_now answers only when its bound holds
    np.testing.assert_array_equal(
        np.asarray(resp["matrix"], dtype=np.float32), np.stack([fake.expected(3), fake.expected(9)])
    )
    far = {"vertex_ids": ["3"], "min_offsets": {"offsets": {"0": "1000000000"}}, "answer_now": True}
    now = _call(node_client, gw.target, "GetEmbeddings", far, TOKENS[0], certs.ca)
    assert now["ok"], now  # answered at once, though the bound does not hold
    assert now["response"]["bound_met"] is False and now["response"]["watermark"] == {"0": "0", "1": "0"}


def test_node_errors_and_other_services(node_client: Path, make_gateway: GatewayFactory, certs: Certs) -> None:
    gw = make_gateway(FakeBackend(), tls_cert=certs.cert, tls_key=certs.key, tokens=TOKENS, insecure_local=False)
    denied = _call(node_client, gw.target, "GetEmbeddings", {"vertex_ids": ["3"]}, None, certs.ca)
    assert not denied["ok"] and denied["codeName"] == "UNAUTHENTICATED"
    bad = _call(node_client, gw.target, "GetEmbeddings", {"vertex_ids": ["31337"], "layer": 0}, TOKENS[1], certs.ca)
    assert bad["codeName"] == "INVALID_ARGUMENT" and "31337" in bad["details"]
    assert bad["errorKind"] == "UnknownVertexError"
    applied = _call(
        node_client,
        gw.target,
        "Apply",
        {"mutations": [{"kind": "MUTATION_KIND_UPDATE_FEATURES", "src": "5", "features": [1, 2, 3, 4, 5, 6, 7, 8]}]},
        TOKENS[0],
        certs.ca,
    )
    assert applied["ok"], applied
    assert applied["response"]["offsets"] == {"1": "0"} and applied["response"]["num_mutations"] == "1"
    ryw = _call(
        node_client,
        gw.target,
        "GetEmbeddings",
        {"vertex_ids": ["5"], "min_offsets": {"offsets": applied["response"]["offsets"]}},
        TOKENS[0],
        certs.ca,
    )
    assert ryw["ok"] and ryw["response"]["versions"] == ["1"]
    status = _call(node_client, gw.target, "Status", {}, TOKENS[0], certs.ca)
    assert status["ok"] and status["response"]["healthy"] is True
    assert [p["partition"] for p in status["response"]["partitions"]] == [0, 1]
