"""Shared fixtures: the embedded MiniLM exported once, and one real tritonserver for the session."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bge_triton.export.checkpoint import MINILM_ID, MINILM_NAME, minilm_dir
from bge_triton.export.exporter import ExportResult, export_model
from bge_triton.export.parity import TorchReference
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import ModelFacts

MODEL = MINILM_NAME


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """all-MiniLM-L6-v2 (real weights) exported to a fresh `local` repository."""
    repository = tmp_path_factory.mktemp("model_repository")
    return export_model(MINILM_ID, repository, name=MODEL)


@pytest.fixture(scope="session")
def repository(exported: ExportResult) -> Path:
    return exported.ensemble_dir.parent


@pytest.fixture(scope="session")
def facts(exported: ExportResult) -> ModelFacts:
    return exported.facts


@pytest.fixture(scope="session")
def reference(facts: ModelFacts) -> TorchReference:
    return TorchReference(minilm_dir(), facts)


@pytest.fixture(scope="session")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonOptions]:
    """A real tritonserver on free loopback ports serving the exported repository."""
    options = TritonOptions(
        repository=repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(options, log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log"):
        yield options


@dataclass
class Service:
    """A process of ours (proxy or `bge-triton serve`) with its log file."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="session")
def spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Service]]:
    """Start `python -m bge_triton ARGS...`, wait until `ready_path` answers 200 on `port`."""
    started: list[Service] = []
    logs = tmp_path_factory.mktemp("services")

    def _spawn(args: list[str], *, port: int, ready_path: str = "/health", timeout_s: float = 180,
               env: dict[str, str] | None = None) -> Service:  # fmt: skip
        log = logs / f"{args[0]}-{port}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "bge_triton", *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        service = Service(f"http://127.0.0.1:{port}", log, process)
        started.append(service)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {process.returncode}:\n{service.log_text()[-4000:]}")
            try:
                if httpx.get(service.url + ready_path, timeout=2).status_code == 200:
                    return service
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        service.stop()
        raise RuntimeError(f"{args[0]} not ready after {timeout_s} s:\n{service.log_text()[-4000:]}")

    yield _spawn
    for service in started:
        service.stop()


def dockerfile_entrypoint(dockerfile: Path) -> list[str]:
    """The exec-form ENTRYPOINT of a Dockerfile (the last one wins, as in docker)."""
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT ")]
    assert lines, f"{dockerfile} has no ENTRYPOINT"
    return list(json.loads(lines[-1].removeprefix("ENTRYPOINT ")))


# -- a bge-zh-shaped model (its tokenizer and query instruction, random weights) next to MiniLM ---------------
BGE = "bge-small-zh-v1.5"  # a shrunken random-init model with bge-zh's tokenizer and query instruction
BGE_INSTRUCTION = "为这个句子生成表示以用于检索相关文章："


@pytest.fixture(scope="session")
def bge_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bge_triton.export.bench_model import make_bench_model
    from bge_triton.package_data import model_config_dir

    config_dir = tmp_path_factory.mktemp("bge-config")
    shutil.copytree(model_config_dir("bge-large-zh-v1.5"), config_dir, dirs_exist_ok=True)
    cfg = json.loads((config_dir / "config.json").read_text())
    cfg |= {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    (config_dir / "config.json").write_text(json.dumps(cfg))
    return make_bench_model(config_dir, tmp_path_factory.mktemp("ckpt") / BGE)


@pytest.fixture(scope="session")
def bge_reference(bge_checkpoint: Path) -> TorchReference:
    return TorchReference(bge_checkpoint, ModelFacts.from_checkpoint(bge_checkpoint, name=BGE, source=BGE))


@pytest.fixture(scope="session")
def two_model_triton(
    repository: Path, bge_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonOptions]:
    """A second tritonserver serving MiniLM and the bge-zh-shaped model side by side."""
    repo = tmp_path_factory.mktemp("two_models")
    for folder in repository.iterdir():
        shutil.copytree(folder, repo / folder.name)
    export_model(str(bge_checkpoint), repo)
    options = TritonOptions(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(options, log_file=tmp_path_factory.mktemp("triton2") / "tritonserver.log"):
        yield options


# -- bge-m3 (issue 8): a tiny random-init M3 checkpoint, its export and a tritonserver serving it ---------------
M3_MODEL = "bge-m3-tiny"


@pytest.fixture(scope="session")
def m3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bge-m3's architecture scaled down (2 layers, hidden 64, 4 heads; vocab 250002, 8194 positions) in the M3
    layout, random weights with a fixed seed."""
    from bge_triton.export.m3_checkpoint import make_m3_checkpoint

    return make_m3_checkpoint(tmp_path_factory.mktemp("m3") / M3_MODEL, num_layers=2, hidden_size=64, seed=0)


@pytest.fixture(scope="session")
def m3_export(m3_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """The tiny bge-m3 exported (with its parity check) to a fresh `local` repository as `bge-m3-tiny`."""
    return export_model(str(m3_checkpoint), tmp_path_factory.mktemp("m3_repository"), name=M3_MODEL)


@pytest.fixture(scope="session")
def m3_triton(m3_export: ExportResult, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonOptions]:
    """A real tritonserver on free loopback ports serving the tiny bge-m3 repository."""
    options = TritonOptions(
        repository=m3_export.ensemble_dir.parent, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(options, log_file=tmp_path_factory.mktemp("m3_triton") / "tritonserver.log"):
        yield options


@contextmanager
def background_load(url: str, body: dict[str, Any], *, workers: int = 4) -> Iterator[Counter[object]]:
    """`workers` threads POSTing `body` to `url` back to back while the block runs; yields the live tally of
    answers by HTTP status (a request that got no answer counts under its exception's name)."""
    statuses: Counter[object] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    statuses[client.post(url, json=body).status_code] += 1
                except httpx.HTTPError as exc:  # a lost request
                    statuses[type(exc).__name__] += 1

    threads = [threading.Thread(target=load) for _ in range(workers)]
    for t in threads:
        t.start()
    try:
        yield statuses
    finally:
        stop.set()
        for t in threads:
            t.join()
