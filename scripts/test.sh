#!/usr/bin/env bash
# The test suite (README's test command; .ci/run runs exactly this).  Extra args go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec python -m pytest -q "$@"
