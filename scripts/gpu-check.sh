#!/usr/bin/env bash
# gpu-check.sh — the whole GPU check, from the folder scripts/gpu-bundle.sh built (README, "Checking on a
# GPU"). Runs on the GPU machine: no cargo, no network; needs bash, coreutils `timeout`, nvidia-smi,
# compute-sanitizer (CUDA 13.0) and python3 with torch + transformers. Fits in 8 minutes of wall time:
# every part has its own time limit, so one hang cannot eat the rest.
#
# Parts (each reports ok / FAIL / TIMEOUT / skipped / not available yet):
#   gpu          GPU, driver, clocks (nvidia-smi)
#   tests:<x>    every GPU-only test (`*_on_cuda`) of each test executable: `<exe> --ignored _on_cuda`
#   san:<tool>   compute-sanitizer memcheck, racecheck, initcheck, synccheck over the kernel tests
#   san-step     compute-sanitizer memcheck over one training step (`train --device cuda`, 1 epoch)
#   bench:kernels    the kernel benchmarks (criterion, cuda/* rows)
#   bench:step       the batch-128 GPT-2-small training-step benchmark on the GPU backend, fp32
#   bench:step-bf16  the same in bf16 mixed precision; bench:xl-bf16 the XL shape (peak memory too)
#   torch:step       the same step in PyTorch eager on the same GPU (scripts/reference/bench_step.py),
#                    fp32; torch:step-bf16 with bf16 autocast
#   train        the default `pepler-cuda train --device cuda` vs `--device cpu`: metrics tables compared
# Parts that need the GPU backend (not built yet) report "not available yet" from the binary's own
# refusal. Without a GPU every part says so, and the report is still written.
#
# Output: <out>/report.md (logs per part, the table of results last), <out>/results.json, <out>/logs/.
# Usage: ./gpu-check.sh [out-dir]        (default gpu-report-<UTC time>)
# Env: PEPLER_CHECK_BUDGET_S (default 470), PEPLER_CHECK_FORCE=1 (run GPU parts without a GPU).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
# gpu-bundle.sh packs the executables, fixtures and scripts into one archive: unpack it once
if [ -f bundle.tar.xz ] && [ ! -d bin ]; then
  echo "== unpacking bundle.tar.xz"
  tar -xJf bundle.tar.xz || { echo "gpu-check: cannot unpack bundle.tar.xz" >&2; exit 1; }
fi
out=${1:-gpu-report-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
budget=${PEPLER_CHECK_BUDGET_S:-470}  # all parts together, seconds (< 8 minutes with the set-up)
t_start=$(date +%s)
names=(); statuses=(); walls=(); notes=()

have_gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then have_gpu=1; fi
# PEPLER_CHECK_FORCE=1: run every part even without a GPU (to exercise this script's own logic: the
# parts then fail or report "not available yet", which is what they must do)
[ "${PEPLER_CHECK_FORCE:-0}" = 1 ] && have_gpu=1
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1 || true)

# The test executables look for fixtures under the crate directory they were built in: make that path
# point here when it does not exist on this machine.
if [ -f manifest_dir.txt ]; then
  mdir=$(cat manifest_dir.txt)
  if [ ! -e "$mdir" ]; then mkdir -p "$(dirname "$mdir")" 2>/dev/null && ln -s "$here" "$mdir" 2>/dev/null || true; fi
fi

record() {  # name status wall note
  names+=("$1"); statuses+=("$2"); walls+=("$3"); notes+=("$4")
  printf '%-16s %-17s %5ss  %s\n' "$1" "$2" "$3" "$4"
}

remaining() { echo $(( budget - ($(date +%s) - t_start) )); }

# part NAME LIMIT_S NEEDS_GPU(0/1) COMMAND... — runs with its own timeout, log in logs/NAME.log
part() {
  local name=$1 limit=$2 needs_gpu=$3; shift 3
  local log="$out/logs/${name//[:\/]/_}.log"
  if [ "$needs_gpu" = 1 ] && [ $have_gpu = 0 ]; then
    echo "no GPU on this machine (nvidia-smi found none): $name skipped" >"$log"
    record "$name" "skipped (no GPU)" 0 "needs a CUDA GPU"
    return
  fi
  local left; left=$(remaining)
  if [ "$left" -lt 5 ]; then
    echo "time budget spent: $name not run" >"$log"
    record "$name" "skipped (budget)" 0 "the ${budget}s budget was spent"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0 rc; t0=$(date +%s)
  { echo "\$ $*"; timeout --kill-after=5 "$limit" "$@"; } >"$log" 2>&1
  rc=$?
  local wall=$(( $(date +%s) - t0 ))
  if [ $rc -eq 0 ]; then
    record "$name" ok "$wall" "$(summary_of "$log")"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    record "$name" TIMEOUT "$wall" "killed after ${limit}s"
  elif grep -q "not built yet\|unknown argument\|unexpected argument" "$log"; then
    record "$name" "not available yet" "$wall" "$(grep -m1 -o 'the GPU backend[^—]*\|unknown argument[^,]*\|unexpected argument[^,]*' "$log" | head -c 120)"
  else
    record "$name" FAIL "$wall" "exit $rc: $(grep -m1 -E 'panicked|error|FAILED|ERROR SUMMARY' "$log" | head -c 120)"
  fi
}

# a one-line result from a log: test counts, sanitizer summary, or the last line
summary_of() {
  grep -hE '^test result:|ERROR SUMMARY|RACECHECK SUMMARY|median_step_s|^gpu:' "$1" | tail -n 3 | tr '\n' ' ' | head -c 160
}

echo "== pepler-cuda GPU check: bundle $(cat commit.txt 2>/dev/null), $(cat nvcc.txt 2>/dev/null); report in $out"
[ $have_gpu = 0 ] && echo "!! no GPU found: every part that needs one is skipped (dry run)"

# 1. the GPU
part gpu 15 1 nvidia-smi --query-gpu=name,driver_version,compute_cap,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,memory.total,power.limit,pstate --format=csv

# 2. every GPU-only test
for exe in tests/*; do
  [ -f "$exe" ] && [ -x "$exe" ] || continue
  part "tests:$(basename "$exe")" 60 1 "$exe" --ignored _on_cuda --test-threads=1
done

# Is there a GPU backend? (`train --device cuda` refused with "not built yet" before it existed.) The parts
# that need it are reported "not available yet" without running.
backend_note=""
if [ $have_gpu = 1 ]; then
  probe=$(timeout 30 bin/pepler-cuda train --device cuda --epochs 0 --out "$out/run-probe" 2>&1)
  if grep -q "not built yet" <<<"$probe"; then
    backend_note=$(grep -m1 -o 'the GPU backend[^—]*' <<<"$probe" | head -c 120)
  fi
fi
na() {  # name: record a part that needs the GPU backend as not available
  echo "$backend_note" >"$out/logs/${1//[:\/]/_}.log"
  record "$1" "not available yet" 0 "$backend_note"
}

# 3. compute-sanitizer over the kernel tests and one training step
if [ -z "$san" ] && [ $have_gpu = 1 ]; then
  record "san" FAIL 0 "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
else
  for tool in memcheck racecheck initcheck synccheck; do
    part "san:$tool" 40 1 "${san:-compute-sanitizer}" --tool "$tool" --error-exitcode 99 \
      tests/kernels --ignored _on_cuda --test-threads=1
  done
  if [ -n "$backend_note" ]; then na san-step; else
  part san-step 40 1 "${san:-compute-sanitizer}" --tool memcheck --error-exitcode 99 \
    bin/pepler-cuda train --device cuda --epochs 1 --stop-after 1 --out "$out/run-san"
  fi
fi

# 4. benchmarks: kernels (criterion, GPU rows), the batch-128 step on the GPU backend, PyTorch eager
part bench:kernels 60 1 benches/kernels --bench cuda/ --warm-up-time 1 --measurement-time 3
# the bench skips (exit 0) the cuda rows when the device is not usable: that is a failure here
if [ "${statuses[${#statuses[@]}-1]}" = ok ] && ! grep -q "time:" "$out/logs/bench_kernels.log"; then
  statuses[${#statuses[@]}-1]=FAIL
  notes[${#notes[@]}-1]="no cuda/* timing: $(grep -m1 'skipped' "$out/logs/bench_kernels.log" | head -c 100)"
  echo "bench:kernels    -> FAIL (${notes[${#notes[@]}-1]})"
fi
if [ -n "$backend_note" ]; then na bench:step; else
  part bench:step 45 1 benches/train_step --device cuda --precision fp32 --batch 128 --iters 5 --warmup 2
  # the step bench must have run on the GPU backend, not fallen back to the CPU one
  if [ "${statuses[${#statuses[@]}-1]}" = ok ] && ! grep -q '"backend":"cuda"' "$out/logs/bench_step.log"; then
    statuses[${#statuses[@]}-1]=FAIL; notes[${#notes[@]}-1]="the step bench did not report backend cuda"
  fi
  # bf16 mixed precision: GPT-2 small and the XL shape at batch 128 (ms/step, MFU, peak memory)
  part bench:step-bf16 45 1 benches/train_step --device cuda --precision bf16 --batch 128 --iters 5 --warmup 2
  part bench:xl-bf16 90 1 benches/train_step --device cuda --precision bf16 --model xl --batch 128 --iters 3 --warmup 2
fi
part torch:step 60 1 python3 scripts/reference/bench_step.py --device cuda --batch 128 --iters 5 --warmup 2
# the user's best plain-PyTorch alternative on a GPU: bf16 autocast
part torch:step-bf16 60 1 python3 scripts/reference/bench_step.py --device cuda --autocast bf16 --batch 128 --iters 5 --warmup 2

# 5. the default training run on the GPU backend vs the CPU backend, same seed
if [ -n "$backend_note" ]; then na train:cuda; else
  part train:cuda 60 1 bin/pepler-cuda train --device cuda --out "$out/run-cuda"
fi
if [ "${statuses[${#statuses[@]}-1]}" = ok ]; then
  part train:cpu 90 0 bin/pepler-cuda train --device cpu --out "$out/run-cpu"
  part train:compare 10 0 python3 - "$out/run-cpu/metrics.json" "$out/run-cuda/metrics.json" <<'EOF'
import json, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
def flat(d, pre=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, pre + k + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield pre + k, float(v)
a, b = dict(flat(cpu)), dict(flat(gpu))
worst = 0.0
print(f"{'metric':<32} {'cpu':>12} {'cuda':>12} {'rel diff':>10}")
for k in sorted(a.keys() & b.keys()):
    d = abs(a[k] - b[k]) / max(abs(a[k]), 1e-12)
    worst = max(worst, d)
    print(f"{k:<32} {a[k]:>12.6g} {b[k]:>12.6g} {d:>10.2e}")
print(f"largest relative difference: {worst:.2e}")
EOF
else
  record train:cpu "skipped" 0 "runs only when train:cuda succeeded"
fi

# ratio of the two step benchmarks, measured in this run
ours=$(grep -ho '"median_step_s": *[0-9.]*' "$out/logs/bench_step.log" 2>/dev/null | grep -o '[0-9.]*$' | tail -n 1)
theirs=$(grep -ho '"median_step_s": *[0-9.]*' "$out/logs/torch_step.log" 2>/dev/null | grep -o '[0-9.]*$' | tail -n 1)
ratio=""
if [ -n "$ours" ] && [ -n "$theirs" ]; then ratio=$(python3 -c "print(f'{$theirs/$ours:.2f}')"); fi
# and in bf16: ours against PyTorch with bf16 autocast (the user's best alternative)
ours16=$(grep -ho '"median_step_s": *[0-9.]*' "$out/logs/bench_step-bf16.log" 2>/dev/null | grep -o '[0-9.]*$' | tail -n 1)
theirs16=$(grep -ho '"median_step_s": *[0-9.]*' "$out/logs/torch_step-bf16.log" 2>/dev/null | grep -o '[0-9.]*$' | tail -n 1)
ratio16=""
if [ -n "$ours16" ] && [ -n "$theirs16" ]; then ratio16=$(python3 -c "print(f'{$theirs16/$ours16:.2f}')"); fi
# what the whole-step graph saves (the bf16 step bench runs with --graph both: off, then on)
graph_line=$(grep -h 'the step graph saves' "$out/logs/bench_step-bf16.log" 2>/dev/null | tail -n 1)

# the report: markdown (logs first, table last) and JSON
total=$(( $(date +%s) - t_start ))
{
  echo "# pepler-cuda GPU check"
  echo
  echo "bundle commit $(cat commit.txt 2>/dev/null), $(cat nvcc.txt 2>/dev/null), host $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  [ $have_gpu = 0 ] && echo && echo "**No GPU on this machine (nvidia-smi found none): a dry run; every GPU part is skipped.**"
  for i in "${!names[@]}"; do
    f="$out/logs/${names[$i]//[:\/]/_}.log"
    echo
    echo "## ${names[$i]}: ${statuses[$i]} (${walls[$i]} s)"
    echo
    echo '```'
    [ -f "$f" ] && tail -n 40 "$f"
    echo '```'
  done
  echo
  echo "## Results"
  echo
  [ -n "$ratio" ] && echo "Training step, batch 128: pepler-cuda ${ours} s, PyTorch eager ${theirs} s: PyTorch / pepler-cuda = ${ratio}" && echo
  [ -n "$ratio16" ] && echo "Training step, batch 128, bf16: pepler-cuda ${ours16} s, PyTorch bf16 autocast ${theirs16} s: PyTorch / pepler-cuda = ${ratio16}" && echo
  [ -n "$graph_line" ] && echo "Training step, batch 128, bf16: ${graph_line}" && echo
  echo "| part | status | wall s | note |"
  echo "|---|---|---|---|"
  for i in "${!names[@]}"; do
    echo "| ${names[$i]} | ${statuses[$i]} | ${walls[$i]} | ${notes[$i]//|//} |"
  done
  echo
  echo "total wall time ${total} s (budget ${budget} s)"
} >"$out/report.md"
python3 - "$out/results.json" "$have_gpu" "$total" "${ratio:-}" "${names[@]}" --- "${statuses[@]}" --- "${walls[@]}" --- "${notes[@]}" <<'EOF'
import json, sys
path, gpu, total, ratio, *rest = sys.argv[1:]
cols, cur = [], []
for x in rest + ["---"]:
    if x == "---":
        cols.append(cur); cur = []
    else:
        cur.append(x)
names, statuses, walls, notes = cols[:4]
json.dump({"gpu": gpu == "1", "total_wall_s": int(total), "step_ratio_torch_over_ours": float(ratio) if ratio else None,
           "parts": [{"name": n, "status": s, "wall_s": int(w), "note": t}
                     for n, s, w, t in zip(names, statuses, walls, notes)]}, open(path, "w"), indent=1)
EOF
echo "== report: $out/report.md ($total s)"
grep -q "FAIL\|TIMEOUT" <(printf '%s\n' "${statuses[@]}") && exit 1
exit 0
