"""Fixtures for gateway tests: throwaway TLS certificates, tokens, and gateways on 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.gateway.server import GatewayServer
from clustergnn.config import GatewayConfig
from tests.gateway.fakes import FakeBackend

TOKENS = ("token-alpha-0123456789", "token-beta-9876543210")


@dataclass(frozen=True)
class Certs:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def make_certs(root: Path) -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("clustergnn test CA")
    _, other_cert = ca("some other CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    out = Certs(root / "ca.pem", root / "server.pem", root / "server.key", root / "other-ca.pem")
    out.ca.write_bytes(ca_cert.public_bytes(pem))
    out.other_ca.write_bytes(other_cert.public_bytes(pem))
    out.cert.write_bytes(cert.public_bytes(pem))
    out.key.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return out


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pytest.importorskip("cryptography", reason="TLS tests need the 'cryptography' package (test extra)")
    return make_certs(tmp_path_factory.mktemp("certs"))


GatewayFactory = Callable[..., GatewayServer]


@pytest.fixture
def make_gateway() -> Iterator[GatewayFactory]:
    """``make_gateway(backend=None, **config_fields)``: a started gateway, stopped after the test.
    Defaults: any free port, no metrics endpoint, plaintext, no tokens (``insecure_local``), fast health
    and watch polling."""
    started: list[GatewayServer] = []

    def make(backend: Any = None, **fields: Any) -> GatewayServer:
        fields.setdefault("port", 0)
        fields.setdefault("metrics_port", None)
        fields.setdefault("insecure_local", True)
        fields.setdefault("health_poll_interval_s", 0.05)
        fields.setdefault("watch_poll_interval_s", 0.01)
        gw = GatewayServer(backend if backend is not None else FakeBackend(), GatewayConfig(**fields)).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop(grace_s=0.2)


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()
