"""Shared fixtures: the embedded MiniLM exported once, and one real tritonserver for the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bge_triton.export.checkpoint import EMBEDDED_DEFAULT_ID, EMBEDDED_DEFAULT_NAME, embedded_default_dir
from bge_triton.export.exporter import ExportResult, export_model
from bge_triton.export.parity import TorchReference
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import ModelFacts

MODEL = EMBEDDED_DEFAULT_NAME
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """all-MiniLM-L6-v2 (real weights) exported to a fresh `local` repository."""
    repository = tmp_path_factory.mktemp("model_repository")
    return export_model(EMBEDDED_DEFAULT_ID, repository, name=MODEL)


@pytest.fixture(scope="session")
def repository(exported: ExportResult) -> Path:
    return exported.ensemble_dir.parent


@pytest.fixture(scope="session")
def facts(exported: ExportResult) -> ModelFacts:
    return exported.facts


@pytest.fixture(scope="session")
def reference(facts: ModelFacts) -> TorchReference:
    return TorchReference(embedded_default_dir(), facts)


@pytest.fixture(scope="session")
def triton(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonOptions]:
    """A real tritonserver on free loopback ports serving the exported repository."""
    options = TritonOptions(
        repository=repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
    )
    log_file = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(options, log_file=log_file)
    server.start()
    try:
        server.wait_ready(180)
        yield options
    finally:
        server.stop()
