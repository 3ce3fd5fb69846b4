"""The gateway's configuration: one frozen value, validated on construction, and the one place that
reads the gateway's environment variables."""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# The environment variables the gateway and its client read (and nothing else does).
ENV_TOKENS = "CLUSTERGNN_GATEWAY_TOKENS"  # comma-separated bearer tokens
ENV_TOKEN = "CLUSTERGNN_TOKEN"  # the client's token
ENV_TARGET = "CLUSTERGNN_GATEWAY"  # the client's default target, host:port


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway listens, secures and limits itself.

    TLS and bearer-token authentication are both required unless ``insecure_local`` is set, which
    only a loopback ``host`` may use; with it, either may still be given and is then enforced.
    """

    host: str = "127.0.0.1"
    """Address to bind.  Anything but loopback requires TLS and tokens."""
    port: int = 0
    """TCP port; 0 picks a free one (read it back from ``GatewayServer.port``)."""
    tls_cert_path: Path | None = None
    """PEM certificate chain of the server; together with ``tls_key_path`` turns TLS on."""
    tls_key_path: Path | None = None
    """PEM private key of the server."""
    tokens: tuple[str, ...] | None = None
    """Accepted bearer tokens (``authorization: Bearer <token>``); None disables authentication."""
    insecure_local: bool = False
    """Explicitly allow running without TLS and/or tokens, on a loopback host only."""
    max_ids_per_request: int = 10_000
    """Largest ``vertex_ids`` list a GetEmbeddings or Watch request may carry."""
    max_mutations_per_request: int = 1_000_000
    """Largest number of mutations one Apply may carry."""
    max_message_bytes: int = 64 * 1024 * 1024
    """gRPC send/receive message limit."""
    metrics_port: int | None = None
    """Port of the Prometheus endpoint on 127.0.0.1; 0 picks a free one, None disables it."""
    default_deadline_s: float = 5.0
    """Longest a read may wait for its freshness bound; a shorter client gRPC deadline wins."""
    max_workers: int = 32
    """Server threads; each in-flight unary call and each open Watch holds one."""
    max_watches: int = 16
    """Concurrent Watch streams; more are refused with RESOURCE_EXHAUSTED so reads keep threads."""
    watch_poll_interval_s: float = 0.05
    """How often a Watch re-reads its vertices to detect new versions."""
    health_poll_interval_s: float = 0.5
    """How often the health monitor asks ``backend.status()``."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be in [0, 65535] or None, got {self.metrics_port}")
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError(
                f"TLS needs both tls_cert_path and tls_key_path, got cert={self.tls_cert_path}, key={self.tls_key_path}"
            )
        if self.tokens is not None and (not self.tokens or not all(t.strip() for t in self.tokens)):
            raise ValueError(f"tokens must be a non-empty tuple of non-blank strings or None, got {len(self.tokens)} token(s)")
        if not self.insecure_local:
            missing = [name for name, off in (("TLS", not self.tls_enabled), ("tokens", self.tokens is None)) if off]
            if missing:
                raise ValueError(
                    f"the gateway requires TLS and bearer tokens; missing {missing}. "
                    "Set insecure_local=True to run without them on a loopback host"
                )
        elif not is_loopback(self.host):
            raise ValueError(f"insecure_local is only allowed on a loopback host, got host={self.host!r}")
        for name in ("max_ids_per_request", "max_mutations_per_request", "max_message_bytes", "max_workers", "max_watches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("default_deadline_s", "watch_poll_interval_s", "health_poll_interval_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert_path is not None

    @property
    def auth_enabled(self) -> bool:
        return self.tokens is not None


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_tokens(text: str) -> tuple[str, ...]:
    """Tokens from a file's text or an environment value: separated by newlines or commas; blank
    entries and ``#`` comment lines are skipped."""
    out: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        out.extend(t.strip() for t in line.split(",") if t.strip())
    return tuple(out)


def load_tokens(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """Accepted tokens from ``path`` (if given) plus ``$CLUSTERGNN_GATEWAY_TOKENS``; None if neither
    holds any (then the config must say ``insecure_local`` to start)."""
    environ = os.environ if environ is None else environ
    tokens: list[str] = []
    if path is not None:
        tokens.extend(parse_tokens(Path(path).read_text()))
    tokens.extend(parse_tokens(environ.get(ENV_TOKENS, "")))
    return tuple(dict.fromkeys(tokens)) or None


def client_defaults(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The client's default (target, token) from ``$CLUSTERGNN_GATEWAY`` and ``$CLUSTERGNN_TOKEN``."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_TARGET) or None, environ.get(ENV_TOKEN) or None
