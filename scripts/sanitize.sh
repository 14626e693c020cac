#!/usr/bin/env bash
# scripts/sanitize.sh — every sanitizer run of the emulated kernels, in one command (docs/emulator.md):
#
#   1. racecheck, by schedule: the kernel tests in strict mode (memcheck + initcheck, the default) under
#      the seeded shuffle schedules PEPLER_EMU_SHUFFLE=1..3 (normal build);
#   2. racecheck, by ThreadSanitizer: the emulator and the kernels built with -fsanitize=thread
#      (PEPLER_EMU_TSAN=1, target dir target/tsan) over the same tests; the emulator's planted race
#      (`missing_syncthreads`) must be reported;
#   3. AddressSanitizer: the emulator runtime and the kernels built with -fsanitize=address
#      (PEPLER_EMU_ASAN=1, target dir target/asan): heap/stack overflows and use-after-free in the
#      emulator itself and in kernels, beyond what strict mode's per-view memcheck covers.
#
# The test files run are $PEPLER_SANITIZE_TESTS (default: every tests/*.rs that launches kernels:
# kernels, attention, emulator, device, and step_graph: whole training steps captured and
# replayed). Prints each part's wall time and the total; exit 1 if any part fails.
# Usage: scripts/sanitize.sh [part...]   (parts: shuffle tsan asan; default all three)
set -uo pipefail
cd "$(dirname "$0")/.."

tests=${PEPLER_SANITIZE_TESTS:-"kernels attention emulator device step_graph"}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(shuffle tsan asan)
test_args=()
for t in $tests; do test_args+=(--test "$t"); done

status=0
summary=()
t_all=$(date +%s)

# The sanitizer builds live in their own target dirs (they must not replace the normal build) but use
# the same dependencies: seed them from target/debug once (cp -a keeps the mtimes cargo compares), so
# only this crate is rebuilt with the sanitizer.
seed_target() {
  if [ ! -d "$1/debug" ] && [ -d target/debug ]; then
    echo "-- seeding $1 from target/debug"
    mkdir -p "$1" && cp -a target/debug "$1/debug"
  fi
}

run_part() {  # name, command...
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "== sanitize: $name"
  if "$@"; then
    summary+=("$(printf '%-8s ok    %4ss' "$name" $(( $(date +%s) - t0 )))")
  else
    summary+=("$(printf '%-8s FAIL  %4ss' "$name" $(( $(date +%s) - t0 )))")
    status=1
  fi
}

part_shuffle() {
  cargo build "${test_args[@]}" -q || return 1
  local seed
  for seed in 1 2 3; do
    echo "-- PEPLER_EMU_SHUFFLE=$seed PEPLER_EMU_STRICT=1"
    # the emulator's own tests pin their schedules; the kernel tests take the seed from the env
    PEPLER_EMU_SHUFFLE=$seed PEPLER_EMU_STRICT=1 cargo test -q "${test_args[@]}" || return 1
  done
}

part_tsan() {
  local env=(-u NVCC PEPLER_EMU_TSAN=1 CARGO_TARGET_DIR=target/tsan
             TSAN_OPTIONS="suppressions=$PWD/kernels/emu/tsan.supp halt_on_error=1")
  seed_target target/tsan
  env "${env[@]}" cargo build "${test_args[@]}" -q || return 1
  env "${env[@]}" cargo test -q "${test_args[@]}" -- --skip missing_syncthreads || return 1
  # the planted race must be found: TSan exits 66 when it reports one
  echo "-- planted race (emu_test_reduce without its barrier) must be reported"
  if env "${env[@]}" cargo test -q --test emulator missing_syncthreads >target/tsan/planted.log 2>&1; then
    echo "!! ThreadSanitizer did not report the planted race"; return 1
  fi
  grep -q "WARNING: ThreadSanitizer: data race" target/tsan/planted.log || {
    echo "!! the planted-race run failed without a race report:"; tail -20 target/tsan/planted.log; return 1; }
  echo "-- reported: $(grep -m1 -A3 'WARNING: ThreadSanitizer: data race' target/tsan/planted.log | tail -1)"
}

part_asan() {
  local libasan; libasan=$(${CXX:-c++} -print-file-name=libasan.so)
  [ -f "$libasan" ] || { echo "!! no libasan.so next to ${CXX:-c++}"; return 1; }
  seed_target target/asan
  # NVCC unset in the sanitizer builds: they test the emulated kernels and need no fatbin
  env -u NVCC PEPLER_EMU_ASAN=1 CARGO_TARGET_DIR=target/asan cargo build "${test_args[@]}" -q || return 1
  # the ASan runtime must be the first library loaded (the Rust side is not instrumented); only the
  # test binaries run under it, not cargo's build
  env -u NVCC PEPLER_EMU_ASAN=1 CARGO_TARGET_DIR=target/asan LD_PRELOAD="$libasan" \
    ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:detect_stack_use_after_return=0" \
    cargo test -q "${test_args[@]}" || return 1
}

for p in "${parts[@]}"; do
  case $p in
    shuffle) run_part "shuffle" part_shuffle ;;
    tsan) run_part "tsan" part_tsan ;;
    asan) run_part "asan" part_asan ;;
    *) echo "unknown part $p (shuffle, tsan, asan)"; exit 2 ;;
  esac
done
echo "== sanitize summary (tests: $tests)"
printf '%s\n' "${summary[@]}"
echo "total wall time: $(( $(date +%s) - t_all ))s"
exit $status
