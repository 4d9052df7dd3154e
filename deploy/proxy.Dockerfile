# The OpenAI-compatible proxy alone, on a slim Python image (~300 MB; no torch, no onnxruntime).
#   docker build -f deploy/proxy.Dockerfile -t bge-triton/proxy .
#   docker run -p 8080:8080 bge-triton/proxy --triton-url=http://triton:8000
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
# The versions install.sh pins (constraints.txt), so the image runs what the tests ran.
COPY deploy/proxy-requirements.txt constraints.txt ./
RUN pip install -c constraints.txt -r proxy-requirements.txt
COPY pyproject.toml README.md LICENSE ./
COPY bge_triton ./bge_triton
COPY export ./export
COPY client ./client
COPY bench ./bench
# --no-deps: the proxy's own requirements above, not the exporter's (torch, transformers, onnx, pytriton).
RUN pip install --no-deps . && useradd --system --uid 10001 proxy
USER proxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ready', timeout=2)"]
ENTRYPOINT ["bge-triton", "serve-proxy", "--host=0.0.0.0", "--port=8080"]
CMD ["--triton-url=http://triton:8000"]
