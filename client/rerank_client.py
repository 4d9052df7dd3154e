"""Python clients of a served reranker (a cross-encoder export, `task: "rerank"`), over tritonclient.

`RerankClient.rerank(query, documents, top_n=None)` (threads) and `AsyncRerankClient.rerank` (asyncio) send the
documents to the `<name>` rerank ensemble (QUERY, DOCUMENT -> SCORE, `export/rerank_repository.py`) in requests of
the ensemble's `max_batch_size` rows (similar lengths together), the query repeated on each row, and answer the
documents ranked by score, best first. `score` is the model's raw logit, `relevance_score` its sigmoid (what
FlagReranker's `normalize=True`, sentence-transformers' `CrossEncoder.predict` and TEI without `raw_scores` give).

They reuse the embedding clients' transport, retries, concurrency bound and error mapping; the embedding methods
(`embed`, `tokenize`, ...) do not apply to a reranker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bge_triton.model_facts import FactsError, ModelFacts

from .errors import InputTooLong, InvalidInput, ModelNotFound, ModelNotReady, ServerError
from .triton_client import (
    AsyncEmbeddingClient,
    EmbeddingClient,
    _ClientCore,
    _estimated_tokens,
    _parameters,
    _unsorted,
    as_text_list,
)

RERANK_INPUTS: tuple[str, ...] = ("QUERY", "DOCUMENT")
RERANK_OUTPUTS: tuple[str, ...] = ("SCORE", "TOKEN_COUNT", "FULL_TOKEN_COUNT")


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class RankedDocument:
    index: int  # the document's position in the caller's list
    score: float  # the raw logit
    relevance_score: float  # sigmoid(score), in (0, 1)
    document: str
    tokens: int  # tokens of the (query, document) pair the model read


@dataclass(frozen=True)
class RerankScores:
    """Scores of every document against the query, in input order."""

    scores: np.ndarray  # float32 [n]: raw logits
    token_counts: np.ndarray  # int64 [n]: tokens of each pair after truncation, special tokens included
    full_token_counts: np.ndarray  # int64 [n]: tokens of each whole pair

    @property
    def total_tokens(self) -> int:
        return int(self.token_counts.sum())

    def ranked(self, documents: list[str], top_n: int | None = None) -> list[RankedDocument]:
        """Best first (ties: the earlier document first); the first `top_n` when given."""
        order = sorted(range(len(documents)), key=lambda i: (-float(self.scores[i]), i))
        if top_n is not None:
            order = order[: max(0, top_n)]
        return [
            RankedDocument(i, float(self.scores[i]), sigmoid(float(self.scores[i])), documents[i],
                           int(self.token_counts[i]))
            for i in order
        ]  # fmt: skip


def rerank_models(configs: dict[str, dict[str, Any] | None]) -> dict[str, ModelFacts]:
    """The rerank ensembles among `{name: model config}` (QUERY and DOCUMENT inputs, facts with task rerank)."""
    found = {}
    for name, config in configs.items():
        if config is None:
            continue
        inputs = {i.get("name") for i in config.get("input") or []}
        params = _parameters(config)
        if not set(RERANK_INPUTS) <= inputs or params.get("task") != "rerank":
            continue
        try:
            facts = ModelFacts.from_parameters(params)
        except (FactsError, ValueError, TypeError):
            continue
        if facts.name == name:
            found[name] = facts
    return found


def check_documents(query: str, documents: str | Iterable[str]) -> list[str]:
    if not isinstance(query, str):
        raise InvalidInput(f"query must be a str, not {type(query).__name__}")
    as_text_list(query)  # valid Unicode
    return as_text_list(documents)


def _adopt(core: _ClientCore, configs: dict[str, Any], not_ready: list[str]) -> ModelFacts:
    """Pick the reranker among `{name: config}`, as `_ClientCore.adopt` picks an embedding model."""
    found = rerank_models(configs)
    if core.requested_model is not None:
        if core.requested_model not in found:
            raise ModelNotFound(f"model {core.requested_model!r} is not a rerank ensemble (QUERY, DOCUMENT -> SCORE)")
        name = core.requested_model
    elif len(found) == 1:
        name = next(iter(found))
    elif not found and not_ready:
        raise ModelNotReady(f"no ready reranker on {core.url}; not ready: {', '.join(not_ready)}")
    elif not found:
        raise ModelNotFound(f"no reranker on {core.url} (export a cross-encoder with `bge-triton export`)")
    else:
        raise InvalidInput(f"several rerankers on {core.url} ({', '.join(sorted(found))}): pass model=")
    batch = int((configs[name] or {}).get("max_batch_size") or 0)
    if batch < 1:
        raise ServerError(f"model {name!r} has max_batch_size {batch}: the client needs a batching ensemble")
    core.model, core.facts, core.max_batch_size = name, found[name], batch
    return found[name]


class _Chunks:
    """The requests for one rerank call: [k, 1] QUERY / DOCUMENT BYTES arrays, k <= max_batch_size."""

    def __init__(self, core: _ClientCore, query: str, documents: list[str]) -> None:
        assert core.max_batch_size is not None
        self.order = core._length_order([_estimated_tokens(d) for d in documents])
        ordered = documents if self.order is None else [documents[i] for i in self.order]
        encoded_query = query.encode("utf-8")
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(ordered), core.max_batch_size):
            rows = ordered[start : start + core.max_batch_size]
            queries = np.empty((len(rows), 1), dtype=np.object_)
            queries[:, 0] = [encoded_query] * len(rows)
            docs = np.empty((len(rows), 1), dtype=np.object_)
            docs[:, 0] = [d.encode("utf-8") for d in rows]
            self.chunks.append((queries, docs))

    def call(self, core: _ClientCore, transport: Any, chunk: tuple[np.ndarray, np.ndarray]) -> Any:
        module = core.module
        tensors = []
        for name, array in zip(RERANK_INPUTS, chunk, strict=True):
            tensor = module.InferInput(name, list(array.shape), "BYTES")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in RERANK_OUTPUTS]
        assert core.model is not None
        return lambda: transport.infer(core.model, tensors, outputs)

    @staticmethod
    def parse(core: _ClientCore, result: Any, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        columns = [result.as_numpy(name) for name in RERANK_OUTPUTS]
        if any(c is None for c in columns):
            raise ServerError(f"model {core.model!r} did not return {', '.join(RERANK_OUTPUTS)}")
        scores, counts, full = (np.asarray(c).reshape(-1) for c in columns)
        if not len(scores) == len(counts) == len(full) == rows:
            raise ServerError(f"model {core.model!r} answered {len(scores)} scores for {rows} documents")
        return scores.astype(np.float32), counts.astype(np.int64), full.astype(np.int64)

    def assemble(self, core: _ClientCore, parts: list[tuple[np.ndarray, ...]], *, truncate: bool) -> RerankScores:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return RerankScores(np.zeros(0, dtype=np.float32), empty, empty)
        columns = [np.concatenate([part[k] for part in parts]) for k in range(3)]
        if self.order is not None:
            columns = [_unsorted(column, self.order) for column in columns]
        result = RerankScores(*columns)
        facts = core.require_facts()
        if not truncate:
            over = np.flatnonzero(result.full_token_counts > facts.max_tokens)
            if len(over):
                index = int(over[0])
                raise InputTooLong(index, int(result.full_token_counts[index]), facts.max_tokens)
        return result


class RerankClient(EmbeddingClient):
    """Reranks documents against a query with a served reranker; thread-safe, requests sent from a pool."""

    def connect(self) -> ModelFacts:
        core = self._core
        if core.facts is not None:
            return core.facts
        with self._connect_lock:
            if core.facts is None:
                _adopt(core, *self._configs())
        return core.require_facts()

    def list_models(self) -> dict[str, ModelFacts]:
        """The rerank ensembles the server serves, with their facts."""
        return rerank_models(self._configs()[0])

    def scores(self, query: str, documents: str | Iterable[str], *, truncate: bool = True) -> RerankScores:
        """Every document's raw score against `query`, in input order (InputTooLong past the window when
        `truncate` is False)."""
        docs = check_documents(query, documents)
        self.connect()
        core = self._core
        plan = _Chunks(core, query, docs)

        def infer(chunk: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
            return plan.parse(core, self._call(plan.call(core, self._transport, chunk)), len(chunk[0]))

        return plan.assemble(core, self._map(infer, plan.chunks), truncate=truncate)  # type: ignore[arg-type]

    def rerank(
        self, query: str, documents: str | Iterable[str], top_n: int | None = None, *, truncate: bool = True
    ) -> list[RankedDocument]:
        """The documents ranked by relevance to `query`, best first; the best `top_n` when given."""
        docs = check_documents(query, documents)
        return self.scores(query, docs, truncate=truncate).ranked(docs, top_n)


class AsyncRerankClient(AsyncEmbeddingClient):
    """The asyncio reranking client (same methods as `RerankClient`, awaited)."""

    async def connect(self) -> ModelFacts:
        import asyncio

        core = self._core
        if core.facts is not None:
            return core.facts
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if core.facts is None:
                _adopt(core, *await self._configs())
        return core.require_facts()

    async def list_models(self) -> dict[str, ModelFacts]:
        return rerank_models((await self._configs())[0])

    async def scores(self, query: str, documents: str | Iterable[str], *, truncate: bool = True) -> RerankScores:
        docs = check_documents(query, documents)
        await self.connect()
        core = self._core
        plan = _Chunks(core, query, docs)

        async def infer(chunk: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
            result = await self._call(plan.call(core, self._transport, chunk))
            return plan.parse(core, result, len(chunk[0]))

        return plan.assemble(core, await self._map(infer, plan.chunks), truncate=truncate)  # type: ignore[arg-type]

    async def rerank(
        self, query: str, documents: str | Iterable[str], top_n: int | None = None, *, truncate: bool = True
    ) -> list[RankedDocument]:
        docs = check_documents(query, documents)
        return (await self.scores(query, docs, truncate=truncate)).ranked(docs, top_n)


async def list_rerankers_async(url: str, protocol: str = "grpc") -> dict[str, ModelFacts]:
    """The rerank ensembles a Triton serves (what the proxy's rerank routes discover)."""
    client = AsyncRerankClient(url, protocol, retries=0)  # type: ignore[arg-type]
    try:
        return await client.list_models()
    finally:
        await client.close()
