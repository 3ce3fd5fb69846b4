#!/usr/bin/env bash
# The test suite (README's test command; .ci/run runs exactly this): the linter, then pytest.
# Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
echo "[lint] ruff check and ruff format --check" >&2
ruff check --quiet .
ruff format --check --quiet .
exec python -m pytest -q "$@"
