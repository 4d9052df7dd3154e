"""The systems compared: each can start, embed one request of texts, and name the processes it runs.

In-process engines (onnxruntime, sentence-transformers) run their blocking call in a thread;
servers (Triton via our client, the OpenAI proxy, infinity-emb) are called over loopback, the HTTP ones through
one lean load generator (http_load.py). perf_analyzer drives Triton itself and is handled by the runner.

Every system embeds the same strings: what the client library and the proxy send for a passage, the model's
passage instruction in front of each text (multilingual-e5's "passage: "; none for bge's passages or MiniLM).
The engines that take raw strings (in-process onnxruntime, sentence-transformers, the torch engine, infinity)
get the instruction prepended here; before issue 19 they embedded the bare text, 3 tokens fewer per e5 query.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import httpx

from bge_triton.client.triton_client import with_instruction
from bge_triton.launcher import TritonOptions, TritonServer, free_port
from bge_triton.model_facts import ModelFacts, read_facts

from .http_load import BlockingJsonPoster, JsonPoster

BENCH_DIR = Path(__file__).resolve().parent
INFINITY_BIN = BENCH_DIR / ".venv-infinity" / "bin" / "infinity_emb"


@dataclass
class Spec:
    checkpoint: Path
    repository: Path
    model: str
    threads: int
    work_dir: Path
    device: str = "cpu"  # cuda: the in-process torch systems run FP16 on the GPU


def _gpu_memory_mb() -> int | None:
    """Peak GPU memory this process allocated through PyTorch (None without CUDA)."""
    import torch

    return torch.cuda.max_memory_allocated() // 2**20 if torch.cuda.is_available() else None


@dataclass
class System:
    spec: Spec
    name: str = "system"
    pids: list[int] = field(default_factory=list)  # processes whose RSS counts, this one included

    def start(self) -> None:
        self.pids = [os.getpid()]

    async def embed(self, texts: list[str]) -> None:
        raise NotImplementedError

    # Most systems also have `embed_now(texts)`, the blocking call from the calling thread, for runs that send one
    # request at a time (paired_latency.py): in-process engines without embed()'s thread hop, servers through
    # their leanest client (the sync gRPC client; http.client), so the run times the servers, not the bench.

    async def close(self) -> None:
        """Releases what embed() bound to the measurement's event loop (called inside it, at the end)."""

    def stop(self) -> None:
        pass

    @cached_property
    def facts(self) -> ModelFacts:
        return read_facts(self.spec.repository / self.spec.model)

    def as_passages(self, texts: list[str]) -> list[str]:
        """`texts` as the client library sends a passage: with the model's passage instruction."""
        return with_instruction(texts, self.facts, query=False)


class OnnxRuntimeSystem(System):
    """The exported graphs in-process with onnxruntime: the limit of this stack on CPU."""

    def start(self) -> None:
        from bge_triton.export.parity import OnnxPipeline

        repo, name = self.spec.repository, self.spec.model
        facts = read_facts(repo / name)
        self.pipeline = OnnxPipeline(
            repo / f"{name}-tokenizer/1/tokenizer.json",
            repo / f"{name}-encoder/1/model.onnx",
            repo / f"{name}-pooling/1/model.onnx",
            facts,
            threads=self.spec.threads,
        )
        self._serial = asyncio.Lock()
        super().start()

    def embed_now(self, texts: list[str]) -> None:
        self.pipeline.embed(self.as_passages(texts), len(texts))

    async def embed(self, texts: list[str]) -> None:
        # One onnxruntime session runs one batch at a time (as Triton's single encoder instance does): concurrent
        # session.run calls would each start their intra-op threads and oversubscribe the cores (on 2 cores bge-m3
        # at 512 tokens fell from ~590 to 338 tokens/s that way).
        async with self._serial:
            await asyncio.to_thread(self.embed_now, texts)


class SentenceTransformersSystem(System):
    def start(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(self.spec.threads)
        self.model = SentenceTransformer(str(self.spec.checkpoint), device=self.spec.device)
        if self.spec.device == "cuda":
            self.model.half()  # what users run on a GPU: FP16
        self.model.max_seq_length = read_facts(self.spec.repository / self.spec.model).max_tokens
        super().start()

    def embed_now(self, texts: list[str]) -> None:
        self.model.encode(self.as_passages(texts), batch_size=len(texts), normalize_embeddings=True)

    async def embed(self, texts: list[str]) -> None:
        await asyncio.to_thread(self.embed_now, texts)

    def gpu_memory_mb(self) -> int | None:
        return _gpu_memory_mb()


class TorchEngineSystem(System):
    """The torch engine in-process (tokenizer -> transformers encoder -> numpy pooling, the same runners the Triton
    models run): the limit of the torch path, as onnxruntime in-process is of the ONNX path."""

    def start(self) -> None:
        import torch

        from bge_triton.export.onnx_export import encoder_input_names
        from bge_triton.export.parity import OnnxPipeline
        from bge_triton.triton_models.numpy_pooling import numpy_pooling_runner
        from bge_triton.triton_models.torch_runner import torch_runner

        torch.set_num_threads(self.spec.threads)
        repo, name = self.spec.repository, self.spec.model
        facts = read_facts(repo / name)
        dtype = "fp16" if self.spec.device == "cuda" else "fp32"
        encoder = torch_runner(
            self.spec.checkpoint, encoder_input_names(facts), device=self.spec.device, dtype=dtype,
            pad_values={"input_ids": facts.pad_token_id},
        )  # fmt: skip
        pooling = numpy_pooling_runner(facts.pooling, facts.normalize)
        tokenizer_json = repo / f"{name}-tokenizer/1/tokenizer.json"
        self.pipeline = OnnxPipeline(tokenizer_json, None, None, facts, encoder=encoder, pooling=pooling)
        self._serial = asyncio.Lock()
        super().start()

    def embed_now(self, texts: list[str]) -> None:
        self.pipeline.embed(self.as_passages(texts), len(texts))

    async def embed(self, texts: list[str]) -> None:
        async with self._serial:  # one encoder, one batch at a time (as one Triton instance)
            await asyncio.to_thread(self.embed_now, texts)

    def gpu_memory_mb(self) -> int | None:
        return _gpu_memory_mb()


class TritonSystem(System):
    """Triton started on the repository, called with the client library over `protocol` (async for the runs,
    sync for the side-by-side single queries)."""

    protocol: Literal["grpc", "http"] = "grpc"

    @property
    def client_url(self) -> str:
        return self.options.grpc_url if self.protocol == "grpc" else self.options.http_url

    def start(self) -> None:
        os.environ["BGE_TRITON_ORT_THREADS"] = str(self.spec.threads)
        self.options = TritonOptions(
            self.spec.repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )
        self.server = TritonServer(self.options, log_file=self.spec.work_dir / f"triton-{self.name}.log")
        self.server.start()
        self.server.wait_ready(600)
        assert self.server.process is not None
        self.pids = [self.server.process.pid]
        self.client = None
        self.sync_client = None

    async def embed(self, texts: list[str]) -> None:
        if self.client is None:
            from bge_triton.client import AsyncEmbeddingClient

            # 8192-token texts take over a minute each on CPU: the default 30 s per call would cut them off.
            self.client = AsyncEmbeddingClient(
                self.client_url, self.protocol, model=self.spec.model, max_concurrency=64, timeout_s=900
            )
        await self.client.embed(texts)

    def embed_now(self, texts: list[str]) -> None:
        """The sync client from the calling thread (paired_latency.py: one request at a time)."""
        if self.sync_client is None:
            from bge_triton.client import EmbeddingClient

            self.sync_client = EmbeddingClient(self.client_url, self.protocol, model=self.spec.model, timeout_s=900)
        self.sync_client.embed(texts)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.sync_client is not None:
            self.sync_client.close()
            self.sync_client = None

    def stop(self) -> None:
        self.server.stop()


class TritonHttpSystem(TritonSystem):
    """The same Triton called over its HTTP/REST endpoint (client/http_inference.py) instead of gRPC."""

    protocol: Literal["grpc", "http"] = "http"


class JsonOverHttp:
    """A server's embeddings endpoint called with JSON bodies (`body()`), through the bench's HTTP clients."""

    def connect_http(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.http = JsonPoster()
        self.blocking_http = BlockingJsonPoster()

    def body(self, texts: list[str]) -> dict[str, object]:
        raise NotImplementedError

    async def embed(self, texts: list[str]) -> None:
        await self.http.post(self.endpoint, self.body(texts))

    def embed_now(self, texts: list[str]) -> None:
        self.blocking_http.post(self.endpoint, self.body(texts))

    async def close(self) -> None:
        await self.http.close()
        self.blocking_http.close()
        await super().close()  # type: ignore[misc]  # the System's own (the proxy's Triton clients)


class ProxySystem(JsonOverHttp, TritonSystem):
    """Triton plus the OpenAI proxy, called over HTTP with base64 (what the openai SDK asks for); the proxy talks
    HTTP to Triton, as `bge-triton serve` wires it."""

    # The peers are compared on embedding work: repeated texts must reach Triton (cached: CachedProxySystem)
    cache_args: tuple[str, ...] = ("--no-cache",)

    def start(self) -> None:
        super().start()
        port = free_port()
        self.proxy = _spawn(
            [sys.executable, "-m", "bge_triton", "serve-proxy", "--triton-url", self.options.http_url,
             "--port", str(port), "--max-in-flight", "1024", *self.cache_args],
            self.spec.work_dir / "proxy.log",
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        _wait(f"{self.url}/ready", self.proxy)
        self.pids.append(self.proxy.pid)
        self.connect_http(f"{self.url}/v1/embeddings")

    def body(self, texts: list[str]) -> dict[str, object]:
        return {"model": self.spec.model, "input": texts, "encoding_format": "base64"}

    def stop(self) -> None:
        self.proxy.terminate()
        self.proxy.wait(30)
        super().stop()


class CachedProxySystem(ProxySystem):
    """The proxy with its vector cache on (the default --cache-mb): repeated texts skip Triton."""

    cache_args = ()


class InfinitySystem(JsonOverHttp, System):
    """infinity-emb's server (torch engine) from its own venv (bench/install_infinity.sh)."""

    def start(self) -> None:
        if not INFINITY_BIN.is_file():
            raise RuntimeError(f"{INFINITY_BIN} missing: run bench/install_infinity.sh")
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.spec.threads), "HF_HUB_OFFLINE": "1",
               "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}  # fmt: skip
        self.process = _spawn(
            [str(INFINITY_BIN), "v2", "--model-id", str(self.spec.checkpoint), "--served-model-name",
             self.spec.model, "--engine", "torch", "--device", "cpu", "--port", str(port), "--host", "127.0.0.1",
             "--batch-size", "32", "--no-model-warmup"],
            self.spec.work_dir / "infinity.log", env=env,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        _wait(f"{self.url}/health", self.process, timeout_s=600)
        self.pids = [self.process.pid]
        self.connect_http(f"{self.url}/embeddings")

    def body(self, texts: list[str]) -> dict[str, object]:
        return {"model": self.spec.model, "input": self.as_passages(texts), "encoding_format": "float"}

    def stop(self) -> None:
        process = getattr(self, "process", None)  # none when start() failed before spawning it
        if process is None:
            return
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


SYSTEMS: dict[str, type[System]] = {
    "onnxruntime": OnnxRuntimeSystem,
    "triton": TritonSystem,
    "triton-http": TritonHttpSystem,
    "proxy": ProxySystem,
    "sentence-transformers": SentenceTransformersSystem,
    "infinity": InfinitySystem,
    "torch": TorchEngineSystem,
}


def _spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)


def _wait(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")
