#!/usr/bin/env bash
# The main job (README's first command): for now the engine benchmark on facebook-wosn-links.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec python scripts/bench_engine.py --quick "$@"
