"""docker-compose.yml is valid compose-spec and runs the same export + serve as the local path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

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
    assert "./model_repository:/models" in export["volumes"]
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"
    assert "--model-repository=/models" in triton["command"]
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    proxy = compose["services"]["proxy"]
    assert proxy["depends_on"]["triton"]["condition"] == "service_healthy"
    assert proxy["command"][:2] == ["serve-proxy", "--triton-url=triton:8001"]
    assert "/ready" in " ".join(proxy["healthcheck"]["test"])
    base = (ROOT / "deploy/triton.Dockerfile").read_text()
    assert "nvcr.io/nvidia/tritonserver:" in base and "tokenizers" in base  # the tokenizer model's import


def test_ruff_is_clean() -> None:
    exe = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    out = subprocess.run([exe, "check", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout
