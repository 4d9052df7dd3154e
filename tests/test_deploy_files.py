"""docker-compose.yml is valid compose-spec and runs the same export + serve as the local path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import dockerfile_entrypoint

from bge_triton.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_validates_against_the_compose_spec() -> None:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    out = subprocess.run(
        [exe, "--builtin-schema", "vendor.compose-spec", str(ROOT / "docker-compose.yml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_exports_for_the_gpu_target_and_serves_that_repository() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    export, triton = compose["services"]["export"], compose["services"]["triton"]
    assert "--target=container-gpu" in export["command"]
    # its own folder, not `bge-triton export`'s default ./model_repository (local target, unloadable in NGC)
    assert "${BGE_REPOSITORY:-./model_repository-gpu}:/models" in export["volumes"]
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert "--model-repository=/models" in triton["command"]
    assert "${BGE_REPOSITORY:-./model_repository-gpu}:/models:ro" in triton["volumes"]
    assert "trt-cache:/trt-cache" in triton["volumes"] and "trt-cache" in compose["volumes"]
    # one Triton with every GPU (Triton spreads KIND_GPU instances over them): `count: 1` on a replicated service
    # gives every replica GPU 0
    [gpus] = triton["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["capabilities"] == ["gpu"] and gpus["count"] == "all"
    assert "replicas" not in triton["deploy"]
    # Docker's default 10 s is shorter than Triton's exit timeout: in-flight batches would be SIGKILLed
    assert _seconds(triton["stop_grace_period"]) > int(_flag(triton["command"], "--exit-timeout-secs"))
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert "ports" not in triton  # replicas are reached through the balancer only
    lb = compose["services"]["lb"]
    assert lb["depends_on"]["triton"]["condition"] == "service_healthy"
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert {p.rsplit(":", 1)[1] for p in lb["ports"]} == {"8080", "8001", "8000"}
    assert lb["image"].startswith("nginx:1.28")  # the config's `server ... resolve` needs nginx >= 1.27.3
    proxy = compose["services"]["proxy"]
    assert proxy["build"]["dockerfile"] == "deploy/proxy.Dockerfile"
    assert proxy["deploy"]["replicas"] == "${PROXY_REPLICAS:-2}"
    args = build_parser().parse_args([*dockerfile_entrypoint(ROOT / "deploy/proxy.Dockerfile")[1:], *proxy["command"]])
    expected = ("serve-proxy", ["http://lb:8000"], "0.0.0.0", 8080)  # Triton over HTTP, through the balancer
    assert (args.command, args.triton_url, args.host, args.proxy_port) == expected
    assert "/ready" in " ".join(proxy["healthcheck"]["test"])
    base = (ROOT / "deploy/triton.Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:" in base and "tokenizers" in base  # the tokenizer model's import


def _seconds(duration: str) -> int:
    assert duration.endswith("s"), duration
    return int(duration[:-1])


def _flag(command: list[str], name: str) -> str:
    return next(arg.split("=", 1)[1] for arg in command if arg.startswith(f"{name}="))


def test_compose_nginx_uses_the_http2_directive() -> None:
    """`listen ... http2` is deprecated since nginx 1.25.1; the compose image is 1.28."""
    conf = (ROOT / "deploy/nginx/nginx.conf").read_text()
    assert "http2 on;" in conf and " http2;" not in conf.replace("http2 on;", "")


def test_ruff_is_clean() -> None:
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([exe, "check", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout


def test_proxy_image_needs_no_model_tooling() -> None:
    """deploy/proxy.Dockerfile installs only deploy/proxy-requirements.txt: the proxy must import without
    torch, transformers, onnx(runtime), tokenizers or pytriton, and those requirements must match pyproject."""
    blocked = ["torch", "transformers", "onnxruntime", "onnx", "tokenizers", "pytriton", "safetensors"]
    probe = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from bge_triton.cli import build_parser\n"
        "import bge_triton.client.proxy.server, bge_triton.client.proxy.app\n"
        "build_parser().parse_args(['serve-proxy', '--triton-url=lb:8001'])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [
        line.strip() for line in (ROOT / "deploy/proxy-requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    assert wanted and set(wanted) <= {d.split("#")[0].strip() for d in pyproject}
    dockerfile = (ROOT / "deploy/proxy.Dockerfile").read_text()
    assert "pip install -c constraints.txt -r proxy-requirements.txt" in dockerfile
    assert "pip install --no-deps ." in dockerfile


@pytest.mark.parametrize("dockerfile", ["deploy/tools.Dockerfile", "deploy/proxy.Dockerfile"])
def test_images_copy_every_folder_the_package_is_built_from(dockerfile: str) -> None:
    """`pip install .` inside the image needs every package-dir folder of pyproject.toml (and the metadata)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {path.split("/")[0] for path in setuptools["package-dir"].values()}
    copied = {
        source.rstrip("/")
        for line in (ROOT / dockerfile).read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]  # COPY SRC... DEST
    }
    assert folders | {"pyproject.toml", "README.md", "LICENSE", "constraints.txt"} <= copied, sorted(folders - copied)
    installs = [
        line
        for line in (ROOT / dockerfile).read_text().splitlines()
        if "pip install" in line and "--no-deps" not in line
    ]
    assert installs and all("-c constraints.txt" in line for line in installs), installs  # the pinned versions
