#!/usr/bin/env bash
# Pack what the GPU check needs on a host that has CUDA, PyTorch, transformers, tokenizers and grpcio but no network,
# no tritonserver and no bge-triton, into bench/gpu/carry/ (git-ignored; the device tool carries at most 64 MiB):
#   triton.tar.xz   pytriton/tritonserver (bin, the Python backend, the Python 3.12 stub) + nvidia_pytriton.libs,
#                   in the wheel's relative layout (the binary's RPATH is $ORIGIN/../../../nvidia_pytriton.libs)
#   wheels/         bge-triton itself and the pure-Python packages the client and the proxy import, at the versions
#                   pinned in constraints.txt
# Run from the repository root after ./install.sh: bash bench/gpu/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=bench/gpu/carry
py=${STUB_PYTHON:-3.12}
rm -rf "$carry" && mkdir -p "$carry/wheels"
site=$(.venv/bin/python -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent.parent)')
tar -C "$site" -cJf "$carry/triton.tar.xz" \
  pytriton/tritonserver/bin pytriton/tritonserver/backends pytriton/tritonserver/caches \
  "pytriton/tritonserver/python_backend_stubs/$py" nvidia_pytriton.libs
.venv/bin/python -m pip wheel --quiet --no-deps -w "$carry/wheels" .
pure=(tritonclient protobuf python-rapidjson fastapi starlette pydantic pydantic-core typing-inspection annotated-types
      uvicorn h11 anyio sniffio click orjson prometheus-client httpx httpcore certifi idna psutil)
pins=()
for name in "${pure[@]}"; do
  pins+=("$(grep -i -E "^${name//-/[-_]}==" constraints.txt)")
done
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$py" \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/wheels" "${pins[@]}"
du -sh "$carry" "$carry/triton.tar.xz" "$carry/wheels"
