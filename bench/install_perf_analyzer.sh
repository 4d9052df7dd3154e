#!/usr/bin/env bash
# Install NVIDIA's perf_analyzer for benchmarking the local tritonserver, without a container.
#
# The PyPI `perf-analyzer` wheels need glibc >= 2.38 (Debian 12 has 2.36). tritonclient wheels up to 2.46
# ship a perf_analyzer binary (in tritonclient-X.data/data/bin) that needs only glibc 2.34, Debian's
# libb64-0d and a libcudart.so.12 (linked, though unused without --shared-memory=cuda). This script:
#   1. downloads the tritonclient==2.46.0 manylinux x86_64 wheel (pip download --no-deps) into the cache,
#   2. extracts just the perf_analyzer binary,
#   3. installs libb64-0d with apt-get when missing (as root; otherwise prints the command),
#   4. pip-installs nvidia-cuda-runtime-cu12 (libcudart.so.12) into the venv,
#   5. writes the wrapper <venv>/bin/perf_analyzer (sets LD_LIBRARY_PATH to that venv's libcudart, execs the
#      cached binary) and checks --help. The wrapper lives in the venv it points into, so clones don't share it.
# Idempotent: every step is skipped when already done. Prints the wrapper's path last.
#
# Environment: BGE_TRITON_HOME (cache root; default ${XDG_CACHE_HOME:-~/.cache}/bge-triton, as in
# bge_triton.paths.data_home), PERF_ANALYZER_CACHE (the folder itself), PYTHON (the venv's python, default
# <repo>/.venv/bin/python), TRITONCLIENT_VERSION (default 2.46.0).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
version=${TRITONCLIENT_VERSION:-2.46.0}
cache=${PERF_ANALYZER_CACHE:-${BGE_TRITON_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/bge-triton}/perf_analyzer}
binary=$cache/tritonclient-$version/perf_analyzer
wrapper=$(dirname "$python")/perf_analyzer

log() { echo "install_perf_analyzer: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "the tritonclient wheel's perf_analyzer is x86_64 only (this is $(uname -m))"
[ -x "$python" ] || die "no python at $python (run ./install.sh first, or set PYTHON)"
mkdir -p "$cache/wheels" "$(dirname "$binary")"

# 1-2. The binary from the tritonclient wheel.
if [ ! -x "$binary" ]; then
  log "downloading tritonclient==$version (manylinux x86_64 wheel, no deps) into $cache/wheels"
  "$python" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
    --dest "$cache/wheels" "tritonclient==$version"
  wheels=("$cache/wheels"/tritonclient-"$version"-*manylinux*x86_64*.whl)
  wheel=${wheels[0]}
  [ -f "$wheel" ] || die "pip download left no tritonclient-$version manylinux wheel in $cache/wheels"
  log "extracting perf_analyzer from $(basename "$wheel")"
  "$python" - "$wheel" "$binary" "$version" <<'PY'
import os
import shutil
import sys
import zipfile

wheel, target, version = sys.argv[1:4]
member = f"tritonclient-{version}.data/data/bin/perf_analyzer"
with zipfile.ZipFile(wheel) as zf:
    if member not in zf.namelist():
        sys.exit(f"{member} is not in {wheel}")
    partial = target + ".part"
    with zf.open(member) as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst)
os.chmod(partial, 0o755)
os.replace(partial, target)
PY
  rm -f "$wheel"  # 12 MB; the extracted binary is what the next run checks for
else
  log "perf_analyzer $version already extracted: $binary"
fi

# 3. libb64.so.0d from Debian/Ubuntu's libb64-0d.
if ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; then
  log "libb64-0d already installed"
elif [ "$(id -u)" -eq 0 ]; then
  log "installing libb64-0d with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends libb64-0d >/dev/null
  fi
else
  log "libb64.so.0d is missing and this is not root; run:"
  log "  sudo apt-get update && sudo apt-get install -y libb64-0d"
fi

# 4. libcudart.so.12 from the PyPI package nvidia-cuda-runtime-cu12.
cudart_lib_dir() {
  "$python" - <<'PY'
import importlib.util
import pathlib
import sys

try:
    spec = importlib.util.find_spec("nvidia.cuda_runtime")
except ModuleNotFoundError:  # no `nvidia` namespace package at all
    spec = None
if spec is None or not spec.submodule_search_locations:
    sys.exit(1)
for location in spec.submodule_search_locations:
    lib = pathlib.Path(location) / "lib"
    if (lib / "libcudart.so.12").exists():
        print(lib)
        sys.exit(0)
sys.exit(1)
PY
}
if ! lib_dir=$(cudart_lib_dir); then
  log "installing nvidia-cuda-runtime-cu12 into $("$python" -c 'import sys; print(sys.prefix)')"
  "$python" -m pip install --quiet "nvidia-cuda-runtime-cu12>=12,<13"
  lib_dir=$(cudart_lib_dir) || die "nvidia-cuda-runtime-cu12 installed but libcudart.so.12 not found"
else
  log "libcudart.so.12 already installed: $lib_dir"
fi

# 5. The wrapper.
partial=$wrapper.part
cat >"$partial" <<EOF
#!/bin/sh
# Written by bench/install_perf_analyzer.sh: perf_analyzer $version from the tritonclient wheel.
export LD_LIBRARY_PATH="$lib_dir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$binary" "\$@"
EOF
chmod 755 "$partial"
mv -f "$partial" "$wrapper"

# perf_analyzer exits non-zero after printing its usage, so judge --help by its text, not its status.
help_text=$("$wrapper" --help 2>&1) || true
if ! grep -q -- '--concurrency-range' <<<"$help_text"; then
  log "$wrapper --help failed:"
  printf '%s\n' "$help_text" | tail -n 20 >&2
  exit 1
fi
log "ok: $wrapper --help works"
echo "$wrapper"
