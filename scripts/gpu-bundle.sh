#!/usr/bin/env bash
# scripts/gpu-bundle.sh — everything a GPU check needs, in one folder to carry to a GPU machine that has
# no Rust toolchain and no network (README, "Checking on a GPU"). Runs here; needs no GPU.
#
# Builds with nvcc (fatbin: SASS sm_80/86/89/90 + PTX compute_80) in release mode:
#   - the `pepler-cuda` binary;
#   - every test executable whose source has GPU-only tests (`*_on_cuda`), plus the emulator's tests;
#   - the kernel and training-step benchmark executables;
# strips them, and puts them with the test fixtures, the tokenizer asset, the PyTorch reference scripts and
# scripts/gpu-check.sh into one folder (default target/gpu-bundle, ignored by git). Checks that the folder
# is under 48 MiB and prints the highest GLIBC_ symbol version the executables need (must be <= 2.35, the
# GPU machine's Ubuntu 22.04 glibc).
#
# Usage: scripts/gpu-bundle.sh [out-dir]     then: copy the folder over and run ./gpu-check.sh in it
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-target/gpu-bundle}
max_mib=48
max_glibc=2.35

# the pinned nvcc, as scripts/test.sh installs it
cache="${PEPLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pepler-cuda}"
if [ -z "${NVCC:-}" ]; then
  NVCC=$(ls "$cache"/nvcc-13.0/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1 || true)
fi
if [ -z "${NVCC:-}" ] || [ ! -x "$NVCC" ]; then
  echo "gpu-bundle: no nvcc (set NVCC, or run scripts/test.sh once to install CUDA 13.0 from PyPI)" >&2
  exit 1
fi
export NVCC
echo "== nvcc: $NVCC ($("$NVCC" --version | tail -n 1))"

# test targets with GPU-only tests, and the emulator's tests (its test kernels also run on the GPU)
# (a test binary is tests/<name>.rs or a folder tests/<name>/ with a main.rs; tests/common is shared code)
mapfile -t test_targets < <( (grep -rl "_on_cuda" tests --include='*.rs'; echo tests/emulator.rs) \
  | sed -E 's#^tests/([^/]+)/.*#\1#; s#^tests/##; s#\.rs$##' | grep -vx common | sort -u)
bench_targets=(kernels train_step)
echo "== test targets: ${test_targets[*]}; benches: ${bench_targets[*]}"

t0=$(date +%s)
cargo_args=()
for t in "${test_targets[@]}"; do cargo_args+=(--test "$t"); done
for b in "${bench_targets[@]}"; do cargo_args+=(--bench "$b"); done
echo "== cargo build --release (binary, tests, benches)"
cargo build --release --bin pepler-cuda
# one cargo invocation lists every executable it built (profile release for tests and benches)
cargo test --release --no-run "${cargo_args[@]}" --message-format=json-render-diagnostics >target/gpu-bundle.json
echo "   built in $(( $(date +%s) - t0 ))s"

rm -rf "$out"
mkdir -p "$out/bin" "$out/tests" "$out/benches"
python3 - "$out" target/gpu-bundle.json <<'EOF'
import json, os, shutil, sys
out = sys.argv[1]
for line in open(sys.argv[2]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if not exe:
        continue
    kind = m["target"]["kind"][0]
    name = m["target"]["name"]
    dest = {"test": "tests", "bench": "benches"}.get(kind)
    if dest:
        shutil.copy2(exe, os.path.join(out, dest, name))
EOF
cp target/release/pepler-cuda "$out/bin/"
# the executables and their tests find fixtures under the crate directory they were built in;
# gpu-check.sh links that path to the bundle when it does not exist on the GPU machine
mkdir -p "$out/tests/fixtures" "$out/assets" "$out/scripts/reference"
cp -r tests/fixtures/. "$out/tests/fixtures/"
cp -r assets/. "$out/assets/"
cp scripts/reference/*.py scripts/reference/requirements.txt "$out/scripts/reference/"
cp scripts/gpu-check.sh "$out/gpu-check.sh"
chmod +x "$out/gpu-check.sh"
echo "$root" >"$out/manifest_dir.txt"
git rev-parse HEAD >"$out/commit.txt" 2>/dev/null || echo unknown >"$out/commit.txt"
"$NVCC" --version | tail -n 1 >"$out/nvcc.txt"

exes=("$out"/bin/* "$out"/tests/[!f]* "$out"/benches/*)
strip --strip-all "${exes[@]}"

# highest GLIBC_ symbol version any executable needs (dynamic symbol table)
glibc=$(for f in "${exes[@]}"; do objdump -T "$f"; done | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
glibcxx=$(for f in "${exes[@]}"; do objdump -T "$f"; done | grep -o 'GLIBCXX_[0-9][0-9.]*' | sed 's/GLIBCXX_//' | sort -uV | tail -n 1)
echo "== bundle: $out"
for f in "${exes[@]}"; do printf '   %-40s %6s KiB\n' "${f#"$out"/}" "$(du -k "$f" | cut -f1)"; done
printf '   %-40s %6s KiB\n' "fixtures + assets + scripts" "$(du -sk "$out/tests/fixtures" "$out/assets" "$out/scripts" | awk '{s+=$1} END {print s}')"
echo "   unpacked: $(du -sm "$out" | cut -f1) MiB"
# Every executable embeds the same fatbin and emulated kernels: one xz archive holds them once
# (about 6x smaller). gpu-check.sh unpacks it next to itself on the GPU machine (tar and xz are in
# every Ubuntu). The folder keeps only the archive and the check script.
tar -C "$out" -cf - bin tests benches assets scripts manifest_dir.txt commit.txt nvcc.txt \
  | xz -T0 -6 >"$out.tar.xz.tmp"
find "$out" -mindepth 1 -maxdepth 1 ! -name gpu-check.sh -exec rm -rf {} +
mv "$out.tar.xz.tmp" "$out/bundle.tar.xz"
size_kib=$(du -sk "$out" | cut -f1)
echo "   packed:   $out/bundle.tar.xz + gpu-check.sh"
echo "== size: $(( size_kib / 1024 )) MiB ($size_kib KiB; limit $max_mib MiB)"
echo "== highest GLIBC_ version required: $glibc (limit $max_glibc); highest GLIBCXX_: ${glibcxx:-none}"
fail=0
if [ "$size_kib" -ge $(( max_mib * 1024 )) ]; then echo "!! bundle too large"; fail=1; fi
if [ "$(printf '%s\n%s\n' "$glibc" "$max_glibc" | sort -V | tail -n 1)" != "$max_glibc" ]; then
  echo "!! the executables need glibc $glibc > $max_glibc"; fail=1
fi
exit $fail
