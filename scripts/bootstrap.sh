#!/usr/bin/env bash
# Creates ./.venv and installs the project into it (idempotent, quiet when up to date).
# Sourced by scripts/run.sh and scripts/test.sh; needs only python3 >= 3.11 on the machine.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
EXTRAS="${1:-}"
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "error: Python 3.11+ is required (found $("$PY" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  "$ROOT/.venv/bin/python" -m pip install -q --upgrade pip
  if [ -n "$EXTRAS" ]; then
    "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]"
  else
    "$ROOT/.venv/bin/python" -m pip install -q -e "$ROOT"
  fi
  touch "$STAMP"
fi
