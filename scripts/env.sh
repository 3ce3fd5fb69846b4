#!/usr/bin/env bash
# Creates (or refreshes) the project's virtualenv in .venv, then puts it first on PATH.
# Sourced by scripts/test.sh and scripts/demo.sh, so each works on a fresh machine by itself.
# torch is pinned to 2.13.0 in pyproject.toml: pip takes the CPU wheel that lies on these machines
# instead of resolving a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLUSTERGNN_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[env] creating $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.clustergnn-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[env] installing clustergnn and its pinned dependencies (first time: a minute or two)" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test,plot]" 2>&1 \
    | grep -v -E "^WARNING: Location .* is ignored" >&2 || true
  "$VENV/bin/python" -c "import torch, ray, grpc, kafka, pyarrow; import clustergnn._dgl" \
    || { echo "[env] install failed" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_AUTH_MODE=disabled DGLBACKEND=pytorch
