#!/usr/bin/env bash
# Runs the whole system against the local exchange simulator: an embedded Redis when
# REDIS_URL is not set, the simulator, every service, and the dashboard. Args go to `slt up`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/slt" up "$@"
