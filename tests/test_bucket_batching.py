"""Padding buckets make Triton's dynamic batcher batch on a backend without ragged batching (issue 16 §5).

Triton's onnxruntime backend (the container-gpu target) cannot merge requests of different shapes: the dynamic
batcher sends the pending batch at the first request whose shape differs. A local-target repository chained as
container-gpu chains it (tokenizer -> encoder -> pooling: on local the encoder step would tokenize itself, and its
TEXT input batches whatever the lengths) whose encoder and pooling are configured without `allow_ragged_batch`
behaves the same way, so this measures, with Triton's own
statistics (`inference_count` rows over `execution_count` runs of the encoder), the same 96 single-text requests
of 8 to 60 tokens against two copies of one model: padded to a multiple of 8 (per request, as before) and padded to
the container-gpu buckets 16/32/64/... (consecutive requests of one tokenizer execution sharing a width).
"""

from __future__ import annotations

import dataclasses
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from bge_triton.export.ensemble_configs import ensemble_config
from bge_triton.export.exporter import ExportResult
from bge_triton.export.gpu_target import default_buckets
from bge_triton.export.model_configs import BatchingOptions, config_text
from bge_triton.export.onnx_export import encoder_input_names
from bge_triton.export.repository import write_repository
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import ModelFacts

REQUESTS = 96
CLIENTS = 16
WORDS = "the model serves text embeddings for search and the service batches requests on one gpu"
QUEUE_DELAY_US = 20_000  # both copies wait as long to fill a batch: only the shapes differ


def _chained_in_three_steps(folder: Path, facts: ModelFacts, input_names: list[str]) -> None:
    """The ensemble's steps as container-gpu has them: the tokenizer model pads, the encoder runs its ids."""
    path = folder / "config.pbtxt"
    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    chain = ensemble_config(facts, BatchingOptions(), input_names, folded=False)
    config.ensemble_scheduling.CopyFrom(chain.ensemble_scheduling)
    path.write_text(config_text(config), encoding="utf-8")


def _without_ragged_batching(folder: Path) -> None:
    """Make a local model batch like the onnxruntime backend: equal shapes only."""
    path = folder / "config.pbtxt"
    config = text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())
    for tensor in config.input:
        tensor.allow_ragged_batch = False
    path.write_text(config_text(config), encoding="utf-8")


@pytest.fixture(scope="module")
def fixed_shape_triton(exported: ExportResult, tmp_path_factory: pytest.TempPathFactory):
    source, facts = exported.ensemble_dir.parent, exported.facts
    repository = tmp_path_factory.mktemp("fixed-shape")
    for name, buckets in (("per-request", ()), ("bucketed", default_buckets(facts.max_tokens))):
        write_repository(
            repository,
            dataclasses.replace(facts, name=name),
            tokenizer_json=source / f"{facts.name}-tokenizer/1/tokenizer.json",
            encoder_onnx=source / f"{facts.name}-encoder/1/model.onnx",
            pooling_onnx=source / f"{facts.name}-pooling/1/model.onnx",
            input_names=encoder_input_names(facts),
            target="local",
            opts=BatchingOptions(pad_buckets=buckets, max_queue_delay_us=QUEUE_DELAY_US, preferred_batch_sizes=()),
        )
        renamed = dataclasses.replace(facts, name=name)
        _chained_in_three_steps(repository / name, renamed, encoder_input_names(facts))
        for model in (f"{name}-encoder", f"{name}-pooling"):
            _without_ragged_batching(repository / model)
    options = TritonOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(options, log_file=tmp_path_factory.mktemp("triton") / "tritonserver.log"):
        yield options


def _texts() -> list[str]:
    """96 texts of 8 to 60 tokens in random order (all-MiniLM-L6-v2: one token per short English word)."""
    rng = random.Random(16)
    words = WORDS.split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 58))) for _ in range(REQUESTS)]


def _encoder_stats(url: str, model: str) -> tuple[int, int]:
    stats = httpx.get(f"{url}/v2/models/{model}-encoder/stats", timeout=10).json()["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def _run(url: str, model: str, texts: list[str]) -> list[np.ndarray]:
    def one(text: str) -> np.ndarray:
        body = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [text]}]}
        answer = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)
        answer.raise_for_status()
        out = next(o for o in answer.json()["outputs"] if o["name"] == "EMBEDDING")
        return np.array(out["data"], dtype=np.float32)

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(one, texts))


def test_buckets_batch_requests_of_mixed_lengths(fixed_shape_triton: TritonOptions) -> None:
    url, texts = fixed_shape_triton.http_url, _texts()
    results = {}
    for model in ("per-request", "bucketed"):
        before = _encoder_stats(url, model)
        vectors = _run(url, model, texts)
        rows, runs = (a - b for a, b in zip(_encoder_stats(url, model), before, strict=True))
        results[model] = (rows, runs, vectors)
    (rows_a, runs_a, vec_a), (rows_b, runs_b, vec_b) = results["per-request"], results["bucketed"]
    print(f"per-request padding: {rows_a} rows in {runs_a} encoder executions ({rows_a / runs_a:.2f} per run)")
    print(f"bucketed padding:    {rows_b} rows in {runs_b} encoder executions ({rows_b / runs_b:.2f} per run)")
    assert rows_a == rows_b == REQUESTS
    # the same vectors: padding never changes an embedding
    np.testing.assert_allclose(np.stack(vec_a), np.stack(vec_b), atol=1e-5)
    # buckets 16/32/64 leave 3 shapes where multiples of 8 leave 8, and the requests one tokenizer execution
    # answers share a width: far fewer, fuller encoder executions (measured: 83-88 -> 48-50 runs)
    assert runs_a >= 0.8 * REQUESTS  # without buckets almost every request runs alone
    assert runs_b * 4 <= runs_a * 3, (runs_a, runs_b)
