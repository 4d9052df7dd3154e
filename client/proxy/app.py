"""The FastAPI application: `/v1/embeddings`, `/v1/models`, `/health`, `/ready`, `/metrics`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from bge_triton import __version__

from .access_log import AccessLog
from .admission import admitted
from .auth import ApiKeyAuth, ApiKeys
from .body_limits import BodyLimits
from .direct_embeddings import DirectEmbeddings
from .embedding_service import EmbeddingService
from .errors import ProxyError, install_error_handlers
from .json_response import OrjsonResponse
from .long_inputs import truncation_of
from .m3_routes import install_m3_routes
from .metrics import ProxyMetrics
from .registry import ListedName, ModelRegistry
from .rerank_routes import install_rerank_routes
from .schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse, ModelCard, ModelList
from .settings import ProxySettings
from .tei_routes import install_tei_routes
from .ui_routes import install_ui_routes
from .vector_encoding import response_items

log = logging.getLogger("bge_triton.proxy")
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 429, 503)}
EMBEDDINGS_PATHS = ("/v1/embeddings", "/embeddings")
TELEMETRY_RECHECK_S = 1.0  # while no OpenTelemetry provider is set, how often the direct entry asks again


class ProxyApp(FastAPI):
    """FastAPI, entered through `direct` (direct_embeddings.py) once `create_app` has set it."""

    direct: DirectEmbeddings | None = None
    _telemetry_on = False
    _telemetry_asked_at = -float("inf")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.direct is not None and not self.root_path:
            await self.direct(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def full_stack(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application as FastAPI serves it: entry, middleware stack, router."""
        await super().__call__(scope, receive, send)

    def telemetry_enabled(self) -> bool:
        """Whether FastAPI's own OpenTelemetry instrumentation wraps requests (a provider is configured).

        FastAPI asks OpenTelemetry on every request (~10 us: environment lookups). A provider, once set, stays
        (OpenTelemetry refuses to replace one), so a yes is kept; a no is asked again at most once per
        TELEMETRY_RECHECK_S, so requests are traced within a second of a provider being set."""
        if self._telemetry_on:
            return True
        now = time.monotonic()
        if now - self._telemetry_asked_at < TELEMETRY_RECHECK_S:
            return False
        self._telemetry_asked_at = now
        telemetry = getattr(self, "_native_telemetry", None)
        self._telemetry_on = telemetry is not None and bool(telemetry.enabled())
        return self._telemetry_on


def create_app(settings: ProxySettings) -> ProxyApp:
    registry = ModelRegistry(settings)
    metrics = ProxyMetrics()
    service = EmbeddingService(registry, settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        registry.start_refresh()
        try:
            await registry.discover()
        except Exception as exc:  # Triton may start after us; /ready says so meanwhile
            log.warning(
                "Triton at %s not available yet (%s); will retry on demand", ", ".join(settings.triton_urls), exc
            )
        yield
        await registry.close()
        await service.close()

    app = ProxyApp(
        title="bge-triton OpenAI-compatible embeddings",
        version=__version__,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.embedding_service = service
    app.state.in_flight = 0
    install_error_handlers(app, settings.retry_after_s)
    app.add_middleware(BodyLimits, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys, protect_metrics=settings.protect_metrics)
    app.add_middleware(AccessLog, router=app.router, metrics=metrics)  # added last: the outermost

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    @app.post("/embeddings", include_in_schema=False)
    async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
        async with admitted(app, settings.max_in_flight, metrics):
            return await _embed(body, request)

    async def _embed(body: EmbeddingRequest, request: Request) -> Response:
        truncation = truncation_of(body.truncate)
        if body.return_chunks and truncation != "chunk":
            raise ProxyError(400, "return_chunks needs truncate CHUNK", param="return_chunks",
                             code="return_chunks_without_chunk")  # fmt: skip
        embedded = await service.embed(
            body.model, body.input, input_type=body.input_type, truncation=truncation, dimensions=body.dimensions,
            state=request.state,
        )  # fmt: skip
        tokens = embedded.tokens
        data = response_items(
            embedded.vectors, embedded.chunks if body.return_chunks else None, dimensions=body.dimensions,
            embedding_type=body.embedding_type, encoding_format=body.encoding_format,
        )  # fmt: skip
        payload = {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return OrjsonResponse(payload)

    # The common request (complete, valid JSON) answered from the entry; every other through the stack above
    app.direct = DirectEmbeddings(
        app, app.full_stack, {path: _post_route(app, path) for path in EMBEDDINGS_PATHS}, EmbeddingRequest,
        embeddings, keys=ApiKeys(settings.api_keys), max_body_bytes=settings.max_body_bytes,
        body_timeout_s=settings.body_timeout_s, metrics=metrics, telemetry_enabled=app.telemetry_enabled,
    )  # fmt: skip

    install_m3_routes(app, registry, settings, metrics)
    install_tei_routes(app, registry, settings, metrics)
    install_ui_routes(app, registry, settings, metrics)
    install_rerank_routes(app, registry, settings, metrics)  # after the TEI routes: sets their rerank handler

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        await _discover_or_503()
        return ModelList(data=[_card(listed) for listed in registry.listing()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=ERROR_RESPONSES)
    async def get_model(model_id: str) -> ModelCard:
        target = await registry.resolve(model_id)
        parent = model_id.removesuffix(f"-{target.input_type}") if target.input_type else None
        return _card(ListedName(model_id, target.replicas.facts, parent=parent, input_type=target.input_type))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", responses=ERROR_RESPONSES)
    async def ready() -> Response:
        try:  # a load balancer needs an answer in time, whatever Triton does (a stopped Triton never answers)
            ok, reason, replicas = await asyncio.wait_for(registry.ready(), settings.ready_check_timeout_s)
        except TimeoutError:
            raise ProxyError(
                503,
                f"Triton did not answer the readiness checks within {settings.ready_check_timeout_s:g} s",
                code="not_ready",
            ) from None
        if not ok:
            raise ProxyError(503, reason, code="not_ready")
        return OrjsonResponse({"status": "ready", "models": list(registry.clients), "replicas": replicas})

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _discover_or_503() -> None:
        await registry.discover_or_503()

    return app


def _post_route(app: FastAPI, path: str) -> APIRoute:
    return next(r for r in app.routes if isinstance(r, APIRoute) and r.path == path and "POST" in r.methods)


def _card(listed: ListedName) -> ModelCard:
    facts = listed.facts
    return ModelCard(
        id=listed.id, dimensions=facts.dim, max_tokens=facts.max_tokens, pooling=facts.pooling,
        query_instruction=facts.query_instruction, passage_instruction=facts.passage_instruction, m3=facts.m3_heads,
        parent=listed.parent, input_type=listed.input_type, score_bands=facts.score_bands_dict(),
    )  # fmt: skip
