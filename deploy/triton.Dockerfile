# NGC Triton with what the repository's Python models import (the tokenizer step needs `tokenizers`).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}
RUN pip install --no-cache-dir "tokenizers>=0.20,<1" "numpy<2"
