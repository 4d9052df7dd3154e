#!/usr/bin/env bash
# Create .venv and install bge-triton (with its test extras) into it.
#   ./install.sh                      the service and its tests
#   ./install.sh --with-bench-tools   also the benchmark peers (NVIDIA perf_analyzer, infinity-emb) and
#                                     Debian's nginx for the load-balancer test and Debian's chromium for
#                                     the web page's browser test
# torch is pinned first so pip takes the local CPU wheel where one exists (TORCH_SPEC overrides it).
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$torch_spec" -e ".[test]"
echo "installed bge-triton into $(pwd)/.venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
if [ "${1:-}" = "--with-bench-tools" ]; then
  PATH="$(pwd)/.venv/bin:$PATH" bash bench/install_perf_analyzer.sh
  bash bench/install_infinity.sh
  bash deploy/install_debian_packages.sh nginx chromium fonts-wqy-microhei
fi
