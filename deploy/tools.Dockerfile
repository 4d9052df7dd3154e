# bge-triton's Python tooling (export, and the OpenAI proxy) on a slim Python image.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# The versions install.sh pins (constraints.txt). CPU torch is enough to export (the GPU runs the ONNX graph in Triton).
COPY constraints.txt ./
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu torch
COPY pyproject.toml README.md LICENSE ./
COPY bge_triton ./bge_triton
COPY export ./export
COPY client ./client
COPY bench ./bench
RUN pip install -c constraints.txt .
ENTRYPOINT ["bge-triton"]
