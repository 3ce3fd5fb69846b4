#!/usr/bin/env bash
# The main job (README's first command): a local cluster (embedded Kafka broker, local Ray, gRPC gateway
# on 127.0.0.1) streaming a real dataset while it is queried; prints live latency/staleness, checks the
# final embeddings against a single-process engine, writes results/demo.{json,png}.  Args go to
# `clustergnn demo` (e.g. --dataset facebook-wosn-links --rate 5000 --seconds 30).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ROOT"
exec python -m actors.cli demo "$@"
