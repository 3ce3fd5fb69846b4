"""The one place the gateway and its client read environment variables and token files.

The gateway's configuration itself is ``clustergnn.config.GatewayConfig`` (the ``gateway`` section of
the root config); this module turns its ``tokens_file`` into tokens when a gateway starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from clustergnn.config import ConfigError, GatewayConfig

# The environment variables the gateway and its client read (and nothing else does).
ENV_TOKENS = "CLUSTERGNN_GATEWAY_TOKENS"  # comma-separated bearer tokens
ENV_TOKEN = "CLUSTERGNN_TOKEN"  # the client's token
ENV_TARGET = "CLUSTERGNN_GATEWAY"  # the client's default target, host:port


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
    holds any."""
    environ = os.environ if environ is None else environ
    tokens: list[str] = []
    if path is not None:
        tokens.extend(parse_tokens(Path(path).read_text()))
    tokens.extend(parse_tokens(environ.get(ENV_TOKENS, "")))
    return tuple(dict.fromkeys(tokens)) or None


def gateway_tokens(config: GatewayConfig, environ: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The tokens a gateway accepts: ``config.tokens`` plus, when ``config.tokens_file`` is set, that file's
    and ``$CLUSTERGNN_GATEWAY_TOKENS``'s; None when authentication is off."""
    tokens = list(config.tokens or ())
    if config.tokens_file is not None:
        tokens.extend(load_tokens(config.tokens_file, environ) or ())
        if not tokens:
            raise ConfigError(
                f"gateway.tokens_file {config.tokens_file!r} holds no tokens "
                f"(and ${ENV_TOKENS} is empty); give at least 1 token"
            )
    return tuple(dict.fromkeys(tokens)) or None


def client_defaults(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """The client's default (target, token) from ``$CLUSTERGNN_GATEWAY`` and ``$CLUSTERGNN_TOKEN``."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_TARGET) or None, environ.get(ENV_TOKEN) or None
