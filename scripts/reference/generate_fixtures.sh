#!/usr/bin/env bash
# Regenerates tests/fixtures/parity/*.safetensors and SHA256SUMS bit for bit (one command), and the
# autocast-bf16 dump in tests/fixtures/parity/bf16/ (its own SHA256SUMS; docs/parity-format.md).
# Usage: scripts/reference/generate_fixtures.sh [OUT_DIR]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT="${1:-$ROOT/tests/fixtures/parity}"
PY="$("$HERE/setup.sh" | tail -n1)"
# Single-threaded BLAS/OpenMP so reductions are ordered the same way on every run.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0
"$PY" "$HERE/dump.py" --all --out "$OUT"
"$PY" "$HERE/dump.py" --case continuous_hf_adamw --autocast bf16 --out "$OUT/bf16"
