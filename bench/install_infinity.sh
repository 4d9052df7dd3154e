#!/usr/bin/env bash
# infinity-emb (a peer embedding server) in its own venv: it pins sentence-transformers<4, which
# conflicts with this project's. torch==2.13.0 first so pip takes the local CPU wheel; the versions are pinned in
# infinity-constraints.txt (../install.sh --relock regenerates it).
set -euo pipefail
cd "$(dirname "$0")"
venv=${INFINITY_VENV:-.venv-infinity}
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "pip==26.3"
"$venv/bin/python" -m pip install --quiet -c infinity-constraints.txt "${TORCH_SPEC:-torch==2.13.0}" \
  "infinity-emb[server,torch]==0.0.78"
echo "infinity-emb installed: $(pwd)/$venv/bin/infinity_emb"
