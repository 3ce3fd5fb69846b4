"""TLS and bearer tokens, each on and off, over real gRPC on 127.0.0.1; and the config rules that keep
them on unless explicitly disabled for local use."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actors.gateway._gen import clustergnn_pb2 as pb
from actors.gateway._gen import clustergnn_pb2_grpc as pb_grpc
from actors.gateway.auth import BearerTokenInterceptor
from actors.gateway.client import GatewayClient
from actors.gateway.env import ENV_TOKENS, client_defaults, gateway_tokens, load_tokens
from actors.gateway.server import GatewayServer
from clustergnn.config import Config, ConfigError, GatewayConfig
from tests.gateway.conftest import TOKENS, Certs, GatewayFactory
from tests.gateway.fakes import FakeBackend


def _secure_fields(certs: Certs, tls: bool, auth: bool) -> dict:
    fields: dict = {"insecure_local": not (tls and auth)}
    if tls:
        fields.update(tls_cert=certs.cert, tls_key=certs.key)
    if auth:
        fields["tokens"] = TOKENS
    return fields


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plaintext"])
@pytest.mark.parametrize("auth", [True, False], ids=["auth", "noauth"])
def test_tls_and_auth_matrix(make_gateway: GatewayFactory, certs: Certs, tls: bool, auth: bool) -> None:
    gw = make_gateway(**_secure_fields(certs, tls, auth))
    root = certs.ca if tls else None
    with GatewayClient(gw.target, token=TOKENS[1] if auth else None, root_cert=root) as c:
        res = c.get_embeddings([3, 4])
        assert res.embeddings.shape == (2, 4)
        assert c.status().healthy
    if auth:
        for token in (None, "wrong-token", TOKENS[0] + "x", TOKENS[0][:-1]):
            with GatewayClient(gw.target, token=token, root_cert=root) as c, pytest.raises(grpc.RpcError) as info:
                c.get_embeddings([3])
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert token is None or token not in info.value.details()  # never echo a token
            with GatewayClient(gw.target, token=token, root_cert=root) as c, pytest.raises(grpc.RpcError) as info:
                c.status()
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_every_service_requires_the_token(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tokens=TOKENS)
    with GatewayClient(gw.target) as c:
        for call in (lambda: c.apply_raw(pb.ApplyRequest()), lambda: next(iter(c.watch([1])))):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_bearer_scheme_is_required(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(tokens=TOKENS)
    with grpc.insecure_channel(gw.target) as ch:
        stub = pb_grpc.AdminServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Status(pb.StatusRequest(), metadata=(("authorization", f"Basic {TOKENS[0]}"),), timeout=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer scheme" in info.value.details()
        ok = stub.Status(pb.StatusRequest(), metadata=(("authorization", f"bearer {TOKENS[0]}"),), timeout=5)
        assert ok.healthy


def test_health_and_reflection_stay_open(make_gateway: GatewayFactory, certs: Certs) -> None:
    gw = make_gateway(**_secure_fields(certs, tls=True, auth=True))
    creds = grpc.ssl_channel_credentials(certs.ca.read_bytes())
    with grpc.secure_channel(gw.target, creds) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
            ProtoReflectionDescriptorDatabase,
        )

        assert "clustergnn.v1.EmbeddingService" in ProtoReflectionDescriptorDatabase(ch).get_services()


def test_plaintext_client_cannot_talk_to_a_tls_gateway(make_gateway: GatewayFactory, certs: Certs) -> None:
    gw = make_gateway(**_secure_fields(certs, tls=True, auth=False))
    with GatewayClient(gw.target) as c, pytest.raises(grpc.RpcError) as info:
        c.get_embeddings([1], timeout_s=2)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_tls_rejects_an_untrusted_server_certificate(make_gateway: GatewayFactory, certs: Certs) -> None:
    gw = make_gateway(**_secure_fields(certs, tls=True, auth=True))
    with GatewayClient(gw.target, token=TOKENS[0], root_cert=certs.other_ca) as c, pytest.raises(grpc.RpcError) as info:
        c.get_embeddings([1], timeout_s=2)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def _serve(config: GatewayConfig) -> None:
    """Build (not start) a gateway: where the TLS-and-tokens requirement is enforced."""
    GatewayServer(FakeBackend(), config)


def test_secure_by_default_config(certs: Certs) -> None:
    with pytest.raises(ConfigError, match=r"missing \['TLS', 'tokens'\].*insecure_local"):
        _serve(GatewayConfig())
    with pytest.raises(ConfigError, match=r"missing \['tokens'\]"):
        _serve(GatewayConfig(tls_cert=certs.cert, tls_key=certs.key))
    with pytest.raises(ConfigError, match=r"missing \['TLS'\]"):
        _serve(GatewayConfig(tokens=TOKENS))
    with pytest.raises(ConfigError, match=r"missing \['TLS'\]"):
        _serve(Config.from_dict({"gateway": {"tokens_file": "/no/such/file"}}).gateway)
    with pytest.raises(ConfigError, match="both gateway.tls_cert and gateway.tls_key"):
        GatewayConfig(tls_cert=certs.cert, tokens=TOKENS)
    with pytest.raises(ConfigError, match="only allowed on a loopback host, got host='0.0.0.0'"):
        GatewayConfig(host="0.0.0.0", insecure_local=True)
    with pytest.raises(ConfigError, match="non-empty tuple"):
        GatewayConfig(tokens=(), insecure_local=True)
    with pytest.raises(ConfigError, match="port must be in"):
        GatewayConfig(port=70000, insecure_local=True)
    with pytest.raises(ConfigError, match="default_deadline_s must be a finite number > 0, got -1"):
        GatewayConfig(default_deadline_s=-1, insecure_local=True)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['tls_cert_path'\] in config.gateway"):
        Config.from_dict({"gateway": {"tls_cert_path": "x"}})
    full = GatewayConfig(host="0.0.0.0", tls_cert=certs.cert, tls_key=certs.key, tokens=TOKENS)
    assert full.tls_enabled and full.auth_enabled and full.tls_cert == str(certs.cert)
    assert "token-alpha" not in repr(full)  # tokens never show in logs
    _serve(full)
    Config()  # a cluster without a gateway needs neither TLS nor tokens


def test_gateway_reads_its_tokens_file(tmp_path: Path, certs: Certs) -> None:
    f = tmp_path / "tokens"
    f.write_text("alpha\n")
    cfg = Config.from_dict(
        {"gateway": {"host": "0.0.0.0", "tls_cert": str(certs.cert), "tls_key": str(certs.key), "tokens_file": str(f)}}
    ).gateway
    assert gateway_tokens(cfg, environ={ENV_TOKENS: "beta"}) == ("alpha", "beta")
    assert gateway_tokens(GatewayConfig(tokens=("x",)), environ={ENV_TOKENS: "ignored"}) == ("x",)
    assert gateway_tokens(GatewayConfig(), environ={ENV_TOKENS: "ignored"}) is None
    f.write_text("# none\n")
    with pytest.raises(ConfigError, match="holds no tokens"):
        gateway_tokens(cfg, environ={})


def test_tokens_from_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "tokens.txt"
    f.write_text("# gateway tokens\nalpha\n\n beta , gamma\n")
    assert load_tokens(f, environ={}) == ("alpha", "beta", "gamma")
    assert load_tokens(f, environ={ENV_TOKENS: "delta,alpha"}) == ("alpha", "beta", "gamma", "delta")
    assert load_tokens(None, environ={ENV_TOKENS: "x"}) == ("x",)
    assert load_tokens(None, environ={}) is None
    assert client_defaults({"CLUSTERGNN_GATEWAY": "h:1", "CLUSTERGNN_TOKEN": "t"}) == ("h:1", "t")


def test_token_compare() -> None:
    auth = BearerTokenInterceptor(TOKENS)
    assert auth.is_valid(TOKENS[0]) and auth.is_valid(TOKENS[1])
    assert not auth.is_valid("") and not auth.is_valid(TOKENS[0] + " ")
    with pytest.raises(ValueError, match="at least 1 token"):
        BearerTokenInterceptor(())


def test_client_refuses_plaintext_token_to_remote_host() -> None:
    with pytest.raises(ValueError, match="plaintext to non-loopback target '10.1.2.3:50051'"):
        GatewayClient("10.1.2.3:50051", token="t")
    GatewayClient("localhost:50051", token="t").close()


def test_an_unauthenticated_call_is_refused_before_its_body_is_read(make_gateway: GatewayFactory) -> None:
    """The refusal never parses the request: bytes that are no protobuf at all still get UNAUTHENTICATED
    (a handler that read the body first would fail to deserialize it: INTERNAL)."""
    gw = make_gateway(tokens=TOKENS)
    with grpc.insecure_channel(gw.target) as ch:
        apply = ch.unary_unary("/clustergnn.v1.MutationService/Apply")  # raw bytes in, raw bytes out
        with pytest.raises(grpc.RpcError) as info:
            apply(b"\xff" * 100_000, timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        read = ch.unary_unary("/clustergnn.v1.EmbeddingService/GetEmbeddings")
        with pytest.raises(grpc.RpcError) as info:
            read(b"\xff\xff\xff", timeout=10, metadata=(("authorization", "Bearer wrong"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        watch = ch.unary_stream("/clustergnn.v1.EmbeddingService/Watch")
        with pytest.raises(grpc.RpcError) as info:
            next(watch(b"\xff\xff", timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
