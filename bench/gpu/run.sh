#!/usr/bin/env bash
# The GPU check, on the GPU host (issue 15): unpack the carried tritonserver, install the carried wheels into a venv
# that sees the host's PyTorch/transformers, and run `python -m bge_triton.bench.gpu_check`.
#   bash bench/gpu/run.sh OUT_DIR [--dry-run] [gpu_check options...]
# Made for one run of at most 8 minutes; everything it writes goes under OUT_DIR.
set -euo pipefail
out=$(realpath -m "${1:?usage: run.sh OUT_DIR [options]}")
shift
here=$(cd "$(dirname "$0")" && pwd)
carry=${BGE_GPU_CARRY:-$here/carry}
work=${BGE_GPU_WORK:-$(mktemp -d)}
mkdir -p "$out" "$work/triton"
python=${PYTHON:-python3}
if [ -f "$carry/triton.tar.xz" ]; then
  tar -C "$work/triton" -xJf "$carry/triton.tar.xz"
  export BGE_TRITON_TRITONSERVER_HOME="$work/triton/pytriton/tritonserver"
fi
if [ -d "$carry/wheels" ]; then
  "$python" -m venv --system-site-packages "$work/venv"
  "$work/venv/bin/python" -m pip install --quiet --no-index --no-deps "$carry"/wheels/*.whl
  python="$work/venv/bin/python"
fi
export BGE_TRITON_HOME="$work/home"
{ "$python" -V; nvidia-smi -L 2>/dev/null || true; } > "$out/host.txt" 2>&1
"$python" -m bge_triton.bench.gpu_check --out "$out" --work "$work/check" "$@" 2>&1 | tee "$out/run.log"
