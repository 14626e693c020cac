#!/usr/bin/env bash
# Creates (idempotently) the Python venv used by scripts/reference/*.py, outside the repo.
# Usage: scripts/reference/setup.sh   -> prints the venv's python path on the last line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEPLER_REF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/pepler-cuda/ref-venv}"
PY="${PYTHON:-python3.11}"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
# Prefer the CPU-only torch wheel index when reachable; fall back to PyPI.
# pip retries an unreachable index for minutes, so probe it first.
CPU_INDEX=https://download.pytorch.org/whl/cpu
if curl -fsS --max-time 10 -o /dev/null "$CPU_INDEX/" 2>/dev/null; then
  "$VENV/bin/python" -m pip install --quiet -r "$REQ" --index-url "$CPU_INDEX" \
    --extra-index-url https://pypi.org/simple >&2
else
  "$VENV/bin/python" -m pip install --quiet -r "$REQ" >&2
fi
echo "$want" > "$STAMP"
echo "$VENV/bin/python"
