"""The start-up canary: vectors stored at export are embedded again through each Triton replica before the proxy
routes requests there; a replica that gives other numbers is never used and `/ready` says why."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.canary import CANARY_TEXTS, Canary
from bge_triton.export.exporter import ExportResult
from bge_triton.export.parity import TorchReference
from bge_triton.launcher import TritonOptions, TritonServer, free_port

if TYPE_CHECKING:
    from conftest import Service

MODEL = "all-MiniLM-L6-v2"


def test_canary_round_trip_and_check() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(CANARY_TEXTS), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    canary = Canary.from_text(Canary(CANARY_TEXTS, vectors, 0.999).to_text())
    assert canary.texts == CANARY_TEXTS and canary.floor == 0.999
    np.testing.assert_array_equal(canary.vectors, vectors)
    assert canary.check(vectors * 3).passed  # a cosine: the scale does not matter
    noisy = vectors + 0.05 * rng.normal(size=vectors.shape)
    result = canary.check(noisy)
    assert not result.passed and 0.9 < result.min_cosine < 0.999
    assert not canary.check(vectors[:, :4]).passed  # another shape is never a pass
    assert not canary.check(vectors[::-1]).passed  # rows swapped (a batching bug)


def test_export_stores_the_pytorch_vectors(exported: ExportResult, reference: TorchReference) -> None:
    canary = Canary.from_text(exported.facts.canary)
    assert canary.texts == CANARY_TEXTS and canary.floor == 0.9999  # fp32's parity floor
    expected = reference.embed([exported.facts.passage_instruction + t for t in canary.texts])
    np.testing.assert_allclose(canary.vectors, expected, atol=1e-6)


def _tamper(repository: Path, folder: Path) -> Path:
    """A copy of the repository whose ensemble carries a canary with rows rotated (as if the served numbers
    were wrong)."""
    copy = folder / "repository"
    shutil.copytree(repository, copy)
    config_path = copy / MODEL / "config.pbtxt"
    config = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    canary = Canary.from_text(config.parameters["canary"].string_value)
    rotated = Canary(canary.texts, np.roll(canary.vectors, 1, axis=0), canary.floor)
    config.parameters["canary"].string_value = rotated.to_text()
    config_path.write_text(text_format.MessageToString(config))
    return copy


def test_a_replica_failing_its_canary_is_never_used(
    repository: Path, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    options = TritonOptions(
        repository=_tamper(repository, tmp_path), http_port=free_port(), grpc_port=free_port(),
        metrics_port=free_port(),
    )  # fmt: skip
    with TritonServer(options, log_file=tmp_path / "tritonserver.log"):
        port = free_port()
        proxy = spawn(["serve-proxy", f"--triton-url=127.0.0.1:{options.grpc_port}", "--port", str(port)], port=port)
        body = {"model": MODEL, "input": ["a vector that must not be served"]}
        response = httpx.post(f"{proxy.url}/v1/embeddings", json=body, timeout=30)
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "canary_failed"
        assert "canary FAILED" in response.json()["error"]["message"]
        assert response.headers["retry-after"]
        deadline = time.monotonic() + 10
        while (ready := httpx.get(f"{proxy.url}/ready", timeout=5)).status_code != 503 or "wrong" not in ready.text:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert "gives wrong vectors" in ready.json()["error"]["message"]
        assert "canary FAILED" in proxy.log_text()
        proxy.stop()


@pytest.mark.usefixtures("triton")
def test_a_replica_passing_its_canary_is_ready(triton: TritonOptions, spawn: Callable[..., Service]) -> None:
    port = free_port()
    proxy = spawn(["serve-proxy", f"--triton-url=127.0.0.1:{triton.grpc_port}", "--port", str(port)], port=port,
                  ready_path="/ready")  # fmt: skip
    log = proxy.log_text()
    assert f"{MODEL} on 127.0.0.1:{triton.grpc_port}: canary passed: min cosine 1.0000" in log, log
    proxy.stop()
