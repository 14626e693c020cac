#!/usr/bin/env bash
# The project's test command (README, CI): installs the pinned CUDA 13.0 compiler from PyPI into a cache
# outside the repo when it is missing, builds every kernel with it (fatbin for sm_80/86/89/90 + PTX),
# runs the whole test suite (the kernels run on the emulated device), and runs the GPU-only tests when
# nvidia-smi finds a GPU. Without pip it still runs the tests, without the nvcc build, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${PEPLER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pepler-cuda}"
venv="$cache/nvcc-13.0"
nvcc_packages=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
               nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85)

find_venv_nvcc() { ls "$venv"/lib/python3.*/site-packages/nvidia/cu13/bin/nvcc 2>/dev/null | head -n 1; }

if [ -z "${NVCC:-}" ]; then
  nvcc_path=$(find_venv_nvcc || true)
  if [ -z "$nvcc_path" ]; then
    if command -v python3 >/dev/null && python3 -m venv --help >/dev/null 2>&1; then
      echo "== installing the CUDA 13.0 compiler from PyPI into $venv (once; ~300 MB)"
      mkdir -p "$cache"
      if python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check "${nvcc_packages[@]}"; then
        nvcc_path=$(find_venv_nvcc || true)
      else
        echo "!! pip could not install the CUDA compiler: building without nvcc (emulated kernels only)"
        rm -rf "$venv"
      fi
    else
      echo "!! python3 venv/pip unavailable: building without nvcc (emulated kernels only)"
    fi
  fi
  [ -n "$nvcc_path" ] && export NVCC="$nvcc_path"
fi
if [ -n "${NVCC:-}" ]; then
  echo "== nvcc: $NVCC ($("$NVCC" --version | tail -n 1))"
else
  echo "== no nvcc: kernels are built for the emulated device only"
fi

echo "== cargo build (kernels: nvcc fatbin + emulated)"
cargo build --all-targets

# the kernel tests run on the emulated device in strict mode (memcheck, initcheck, synccheck and the
# determinism rules; docs/emulator.md): the default, pinned here so the environment cannot turn it off
export PEPLER_EMU_STRICT=1
echo "== cargo test (emulated kernels in strict mode)"
cargo test

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "== GPU found ($(nvidia-smi -L | head -n 1)): running the GPU-only tests"
  cargo test -- --ignored _on_cuda
else
  echo "== no GPU (nvidia-smi found none): GPU-only tests (#[ignore]) not run"
fi
