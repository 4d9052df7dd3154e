"""Reranking: TEI's `POST /rerank` and the Cohere / Jina / vLLM / Infinity `POST /v1/rerank`.

Both send the documents through a served reranker (a cross-encoder export, `task: "rerank"`; the `<name>` rerank
ensemble, QUERY + DOCUMENT -> SCORE) with `client/rerank_client.py`, and answer the documents ranked by score,
best first:
- `/rerank` (TEI, router/src/http/types.rs `RerankRequest`): `query`, `texts`, `truncate` (default true, TEI's
  auto-truncate), `truncation_direction` (Right only: the document's end is cut), `raw_scores` (default false:
  the sigmoid of the logit), `return_text` -> `[{"index", "score", "text"?}]`; errors in TEI's shape.
  `RerankHandler` (`tei_rerank`) is the same for TEI's `POST /` with a `{query, texts}` body.
- `/v1/rerank` (Cohere's shape, as vLLM, Jina and Infinity serve it): `model`, `query`, `documents` (strings or
  `{"text"}` objects), `top_n`, `return_documents` (default false, Cohere's), `truncate` (an addition, default
  true) -> `{"id", "model", "results": [{"index", "relevance_score", "document"?: {"text"}}], "usage":
  {"total_tokens"}}`; `relevance_score` is the sigmoid of the logit (what vLLM and Infinity answer for BGE
  rerankers). Errors in OpenAI's shape.

`model` may be left out when exactly one reranker is served. A reranker is no embedding model and an embedding
model no reranker: naming one on the other's routes is a 400 (`model_not_reranker` here, `model_not_embedding` on
the embedding routes through `ModelRegistry.other_tasks`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from bge_triton.model_facts import ModelFacts

from ..errors import EmbeddingError, ModelNotReady, ServerUnavailable
from ..rerank_client import AsyncRerankClient, RankedDocument, RerankScores, list_rerankers_async
from .admission import admitted
from .errors import ProxyError
from .inputs import check_request_size
from .json_response import OrjsonResponse
from .metrics import ProxyMetrics
from .registry import ModelRegistry
from .settings import ProxySettings

log = logging.getLogger("bge_triton.proxy")
TEI_RERANK_PATHS = ("/rerank",)


class TeiRerankRequest(BaseModel):
    """TEI's `POST /rerank` body."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: StrictStr
    texts: list[StrictStr]
    truncate: bool | None = Field(default=None, description="Default true (TEI's auto_truncate).")
    truncation_direction: Literal["Left", "Right"] = "Right"
    raw_scores: bool = False
    return_text: bool = False
    model: StrictStr | None = Field(default=None, description="A served reranker (default: the only one).")

    @field_validator("truncation_direction", mode="before")
    @classmethod
    def _direction(cls, value: object) -> object:
        return value.capitalize() if isinstance(value, str) and value.lower() in ("left", "right") else value


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    text: StrictStr


class RerankRequest(BaseModel):
    """`POST /v1/rerank` (Cohere / Jina / vLLM / Infinity)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    query: StrictStr
    documents: list[StrictStr | RerankDocument]
    model: StrictStr | None = None
    top_n: int | None = Field(default=None, ge=0)
    return_documents: bool = False
    truncate: bool = True


class RerankRegistry:
    """The rerankers Triton serves (found once, like the embedding models), one client per reranker and
    Triton address; a request fails over to the next address when one is unavailable."""

    def __init__(self, registry: ModelRegistry, settings: ProxySettings) -> None:
        self.registry = registry
        self.settings = settings
        self.clients: dict[str, list[AsyncRerankClient]] = {}
        self.facts: dict[str, ModelFacts] = {}
        self._lock = asyncio.Lock()
        self._found = False

    async def discover(self) -> None:
        if self._found:
            return
        async with self._lock:
            if self._found:
                return
            error: Exception | None = None
            for url in self.registry.urls:
                try:
                    found = await list_rerankers_async(url, self.settings.protocol)
                    break
                except EmbeddingError as exc:
                    error = exc
            else:
                raise ProxyError(503, f"Triton is not available: {error}", code="triton_unavailable")
            self.facts = found
            self.clients = {name: [self._client(url, name) for url in self.registry.urls] for name in found}
            self._found = True
            if found:
                log.info("serving rerankers %s", ", ".join(found))

    def _client(self, url: str, name: str) -> AsyncRerankClient:
        return AsyncRerankClient(
            url, self.settings.protocol, name, timeout_s=self.settings.request_timeout_s,  # type: ignore[arg-type]
            max_concurrency=self.settings.triton_concurrency, retries=3 if len(self.registry.urls) == 1 else 0,
        )  # fmt: skip

    async def tasks(self) -> dict[str, str]:
        """{reranker name: "rerank"} (what the embedding routes refuse); {} while Triton does not answer."""
        try:
            await self.discover()
        except (ProxyError, EmbeddingError):
            return {}
        return {name: "rerank" for name in self.facts}

    async def get(self, requested: str | None) -> str:
        """The served reranker `requested` names (a served name or alias; None: the only reranker)."""
        await self.discover()
        if requested is None:
            if len(self.facts) != 1:
                raise ProxyError(400, f"pass 'model'; rerankers served: {', '.join(self.facts) or 'none'}",
                                 param="model", code="model_required")  # fmt: skip
            return next(iter(self.facts))
        name = self.settings.aliases.get(requested, requested)
        if name in self.facts:
            return name
        with contextlib.suppress(Exception):  # no embedding models known: the name is simply not a reranker
            await self.registry.discover()
        if name in self.registry.clients:
            raise ProxyError(400, f"The model '{requested}' is an embedding model, not a reranker: use it with "
                             "/v1/embeddings", param="model", code="model_not_reranker")  # fmt: skip
        raise ProxyError(404, f"The model '{requested}' does not exist; rerankers served: "
                         f"{', '.join(self.facts) or 'none'}", param="model", code="model_not_found")  # fmt: skip

    async def scores(self, name: str, query: str, documents: list[str], *, truncate: bool) -> RerankScores:
        error: EmbeddingError | None = None
        for client in self.clients[name]:
            try:
                return await client.scores(query, documents, truncate=truncate)
            except (ServerUnavailable, ModelNotReady) as exc:
                error = exc
        assert error is not None
        raise error

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for cs in self.clients.values() for c in cs), return_exceptions=True)


class RerankService:
    """What both routes share: model, input checks, the Triton call, metrics."""

    def __init__(self, rerankers: RerankRegistry, settings: ProxySettings, metrics: ProxyMetrics) -> None:
        self.rerankers = rerankers
        self.settings = settings
        self.metrics = metrics

    async def rank(
        self, model: str | None, query: str, documents: list[str], *, truncate: bool, state: Any, param: str,
        empty_code: str = "invalid_value",
    ) -> tuple[str, RerankScores]:  # fmt: skip
        name = await self.rerankers.get(model)
        state.model = name
        if not query.strip():
            raise ProxyError(400, "'query' must not be empty", param="query", code=empty_code)
        if not documents:
            raise ProxyError(400, f"'{param}' must not be empty", param=param, code=empty_code)
        if len(documents) > self.settings.max_inputs:
            raise ProxyError(400, f"'{param}' has {len(documents)} items; at most {self.settings.max_inputs} per "
                             "request", param=param, code="too_many_inputs")  # fmt: skip
        empty = next((i for i, d in enumerate(documents) if not d), None)
        if empty is not None:
            raise ProxyError(400, f"document {empty} is an empty string", param=param, code=empty_code)
        state.inputs = len(documents)
        check_request_size([query, *documents], self.settings.max_request_chars, param=param)
        started = time.perf_counter()
        result = await self.rerankers.scores(name, query, documents, truncate=truncate)
        self.metrics.triton_seconds.labels(name).observe(time.perf_counter() - started)
        self.metrics.inputs.labels(name).observe(len(documents))
        state.tokens = result.total_tokens
        self.metrics.tokens.labels(name).observe(result.total_tokens)
        return name, result


def _validated(model: type[BaseModel], body: object) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def install_rerank_routes(
    app: FastAPI, registry: ModelRegistry, settings: ProxySettings, metrics: ProxyMetrics
) -> RerankService:
    """`POST /rerank`, `POST /v1/rerank` (+ `/rerank` under `/v1`'s Jina spelling), TEI's `POST /` rerank handler,
    and the embedding registry's view of which names are rerankers."""
    rerankers = RerankRegistry(registry, settings)
    service = RerankService(rerankers, settings, metrics)
    app.state.rerank_service = service
    registry.other_tasks = rerankers.tasks
    close_embedders = registry.close

    async def close_all() -> None:  # the app's shutdown closes the registry: the rerankers' clients with it
        await close_embedders()
        await rerankers.close()

    registry.close = close_all  # type: ignore[method-assign]
    if hasattr(app.state, "tei_paths"):
        app.state.tei_paths.update(TEI_RERANK_PATHS)

    async def tei_rerank(body: dict[str, Any], request: Request) -> Response:
        """TEI's rerank (`/rerank`, and `POST /` with a `{query, texts}` body)."""
        parsed: TeiRerankRequest = _validated(TeiRerankRequest, body)
        async with admitted(app, settings.max_in_flight, metrics):
            if parsed.truncation_direction == "Left":
                raise ProxyError(422, "truncation_direction Left is not supported for reranking: the document's end "
                                 "is cut", param="truncation_direction", code="invalid_value")  # fmt: skip
            if not parsed.texts:
                raise ProxyError(400, "`texts` cannot be empty", param="texts", code="empty")
            truncate = True if parsed.truncate is None else parsed.truncate
            _, result = await service.rank(parsed.model, parsed.query, parsed.texts, truncate=truncate,
                                           state=request.state, param="texts", empty_code="empty")  # fmt: skip
            ranked = result.ranked(parsed.texts)
            return OrjsonResponse([_tei_rank(r, parsed.raw_scores, parsed.return_text) for r in ranked])

    app.state.tei_rerank = tei_rerank

    @app.post("/rerank", tags=["TEI"])
    async def rerank_tei(request: Request) -> Response:
        """TEI's rerank: `[{"index", "score", "text"?}]`, best first."""
        return await tei_rerank(await _json_body(request), request)

    @app.post("/v1/rerank")
    async def rerank_v1(body: RerankRequest, request: Request) -> Response:
        """Cohere's rerank shape (vLLM, Jina, Infinity): `results` best first, `top_n` of them."""
        async with admitted(app, settings.max_in_flight, metrics):
            documents = [d if isinstance(d, str) else d.text for d in body.documents]
            name, result = await service.rank(body.model, body.query, documents, truncate=body.truncate,
                                              state=request.state, param="documents")  # fmt: skip
            ranked = result.ranked(documents, body.top_n)
            payload = {
                "id": f"rerank-{uuid.uuid4().hex}",
                "model": body.model or name,
                "results": [_cohere_result(r, body.return_documents) for r in ranked],
                "usage": {"total_tokens": result.total_tokens},
            }
            return OrjsonResponse(payload)

    @app.get("/v1/rerank/models", include_in_schema=False)
    async def rerank_models() -> Response:
        """The served rerankers with their window (what the web page's rerank panel reads)."""
        await rerankers.discover()
        return OrjsonResponse({"data": [{"id": n, "max_tokens": f.max_tokens} for n, f in rerankers.facts.items()]})

    return service


async def _json_body(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except ValueError as exc:
        raise ProxyError(422, f"request body is not valid JSON: {exc}", code="invalid_json") from None


def _tei_rank(ranked: RankedDocument, raw_scores: bool, return_text: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": ranked.index, "score": ranked.score if raw_scores else ranked.relevance_score}
    if return_text:
        out["text"] = ranked.document
    return out


def _cohere_result(ranked: RankedDocument, return_documents: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.relevance_score}
    if return_documents:
        out["document"] = {"text": ranked.document}
    return out
