"""bge-m3's extra endpoints: `/embed_sparse`, `/embed_colbert` (TEI's shapes) and `/v1/similarity`.

Each calls the one ensemble that computes what it returns (`NAME-sparse`, `NAME-colbert`, `NAME-m3`), so a
dense-only caller of `/v1/embeddings` never pays for the heads. `model` may be left out when exactly one
bge-m3 model is served.
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
from fastapi import FastAPI, Request, Response

from ..errors import EmbeddingError
from ..m3_scoring import M3Vectors, M3Weights, Mode, score_passages
from .admission import admitted
from .errors import ProxyError
from .inputs import check_request_size, normalise_texts
from .json_response import OrjsonResponse
from .metrics import ProxyMetrics
from .registry import ModelRegistry
from .replicas import ReplicaSet
from .schemas import ColbertRequest, SimilarityRequest, SimilarityResponse, SparseRequest
from .settings import ProxySettings


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def install_m3_routes(app: FastAPI, registry: ModelRegistry, settings: ProxySettings, metrics: ProxyMetrics) -> None:

    async def m3_model(requested: str | None, request: Request) -> tuple[str, ReplicaSet]:
        if requested is None:
            try:
                await registry.discover()
            except EmbeddingError as exc:
                raise ProxyError(503, f"Triton is not available: {exc.message}", code="triton_unavailable") from None
            m3 = [name for name, facts in registry.facts().items() if facts.m3_heads]
            if len(m3) != 1:
                served = ", ".join(m3) or "none"
                raise ProxyError(400, f"pass 'model'; bge-m3 models served: {served}", param="model",
                                 code="model_required")  # fmt: skip
            requested = m3[0]
        name, replicas = await registry.get(requested)
        request.state.model = name
        if not replicas.facts.m3_heads:
            raise ProxyError(
                400, f"model '{requested}' has no sparse or ColBERT outputs (only bge-m3 exports have them)",
                param="model", code="model_not_supported",
            )  # fmt: skip
        return name, replicas

    async def vectors(
        replicas: ReplicaSet, name: str, texts: list[str], modes: tuple[Mode, ...], *, query: bool
    ) -> M3Vectors:
        started = time.perf_counter()
        result = await replicas.embed_m3(texts, modes=modes, query=query)
        metrics.triton_seconds.labels(name).observe(time.perf_counter() - started)
        metrics.inputs.labels(name).observe(len(texts))
        metrics.tokens.labels(name).observe(int(result.token_counts.sum()))
        return result

    async def one_mode(body: SparseRequest, request: Request, mode: Mode) -> M3Vectors:
        """`/embed_sparse` and `/embed_colbert`: the request's texts through the one-mode ensemble."""
        name, replicas = await m3_model(body.model, request)
        texts = normalise_texts(body.inputs, settings.max_inputs, param="inputs")
        request.state.inputs = len(texts)
        check_request_size(texts, settings.max_request_chars, param="inputs")
        result = await vectors(replicas, name, texts, (mode,), query=(body.prompt_name or body.input_type) == "query")
        request.state.tokens = int(result.token_counts.sum())
        return result

    @app.post("/embed_sparse")
    async def embed_sparse(body: SparseRequest, request: Request) -> Response:
        """Per input its lexical weights: `[{"index": token_id, "value": weight}, ...]` (TEI's shape)."""
        async with admitted(app, settings.max_in_flight, metrics):
            result = await one_mode(body, request, "sparse")
            assert result.sparse is not None
            rows = [sorted(weights.items()) for weights in result.sparse]
            if body.encoding_format == "base64":
                payload: list = [
                    {"indices": _b64(np.array([t for t, _ in row], dtype=np.int64), "<i4"),
                     "values": _b64(np.array([w for _, w in row], dtype=np.float64), "<f4")}
                    for row in rows
                ]  # fmt: skip
            else:
                payload = [[{"index": t, "value": w} for t, w in row] for row in rows]
            return OrjsonResponse(payload)

    @app.post("/embed_colbert")
    async def embed_colbert(body: ColbertRequest, request: Request) -> Response:
        """Per input its ColBERT vectors: a list of unit vectors, one per token after the first."""
        async with admitted(app, settings.max_in_flight, metrics):
            result = await one_mode(body, request, "colbert")
            assert result.colbert is not None
            if body.encoding_format == "base64":
                payload: list = [{"shape": list(v.shape), "data": _b64(v, "<f4")} for v in result.colbert]
            else:
                payload = [v for v in result.colbert]  # orjson writes numpy arrays as nested lists
            return OrjsonResponse(payload)

    @app.post("/v1/similarity", response_model=SimilarityResponse)
    @app.post("/score", include_in_schema=False)
    async def similarity(body: SimilarityRequest, request: Request) -> Response:
        """Dense, sparse, ColBERT and hybrid scores of every passage against the query."""
        async with admitted(app, settings.max_in_flight, metrics):
            name, replicas = await m3_model(body.model, request)
            (query,) = normalise_texts(body.query, 1, param="query")
            passages = normalise_texts(body.passages, settings.max_inputs, param="passages")
            request.state.inputs = 1 + len(passages)
            check_request_size([query, *passages], settings.max_request_chars, param="passages")
            try:
                weights = M3Weights(body.weights.dense, body.weights.sparse, body.weights.colbert)
            except ValueError as exc:
                raise ProxyError(400, str(exc), param="weights", code="invalid_value") from None
            everything: tuple[Mode, ...] = ("dense", "sparse", "colbert")
            q, p = await asyncio.gather(
                vectors(replicas, name, [query], everything, query=True),
                vectors(replicas, name, passages, everything, query=False),
            )
            tokens = int(q.token_counts.sum() + p.token_counts.sum())
            request.state.tokens = tokens
            scores = score_passages(q, p, weights)
            payload = {
                "object": "list",
                "data": [
                    {"index": s.index, "dense": s.dense, "sparse": s.sparse, "colbert": s.colbert,
                     "sparse+dense": s.sparse_dense, "hybrid": s.hybrid}
                    for s in scores
                ],
                "model": body.model or name,
                "weights": body.weights.model_dump(),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }  # fmt: skip
            return OrjsonResponse(payload)
