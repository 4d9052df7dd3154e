# bge-triton's Python tooling (export, and the OpenAI proxy) on a slim Python image.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# CPU torch is enough to export (the GPU runs the ONNX graph inside Triton).
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch>=2.4"
COPY pyproject.toml README.md ./
COPY bge_triton ./bge_triton
COPY export ./export
COPY client ./client
COPY bench ./bench
RUN pip install .
ENTRYPOINT ["bge-triton"]
