"""The FastAPI application: `/v1/embeddings`, `/v1/models`, `/health`, `/ready`, `/metrics`."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bge_triton import __version__

from ..triton_client import EmbeddingResult
from .access_log import AccessLog
from .admission import admitted
from .auth import ApiKeyAuth
from .body_limits import BodyLimits
from .errors import ProxyError, install_error_handlers
from .fair_share import FairGate, embed_in_slices
from .inputs import check_request_size, normalise_input
from .m3_routes import install_m3_routes
from .metrics import ProxyMetrics
from .registry import InputType, ListedName, ModelRegistry, Resolved
from .schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse, ModelCard, ModelList
from .settings import ProxySettings
from .token_ids import TiktokenDecoder, load_cl100k, refuse_token_ids
from .ui_routes import install_ui_routes

log = logging.getLogger("bge_triton.proxy")
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 401, 404, 408, 413, 429, 503)}


class OrjsonResponse(JSONResponse):
    """JSON with numpy arrays written directly (embeddings are most of the bytes)."""

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def create_app(settings: ProxySettings) -> FastAPI:
    registry = ModelRegistry(settings)
    metrics = ProxyMetrics()
    decoder = TiktokenDecoder(load_cl100k()) if settings.token_ids == "tiktoken" else None
    gates: dict[str, FairGate] = {}  # model -> its Triton calls' turns (fair_share.py)

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

    app = FastAPI(
        title="bge-triton OpenAI-compatible embeddings",
        version=__version__,
        lifespan=lifespan,
        default_response_class=OrjsonResponse,
    )
    app.state.registry = registry
    app.state.metrics = metrics
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
        target = await registry.resolve(body.model)
        name, client = target.name, target.replicas
        request.state.model = name
        facts = client.facts
        input_type = _input_type(body.input_type, target)
        kind, items = normalise_input(body.input, settings.max_inputs)
        request.state.inputs = len(items)
        check_request_size(items, settings.max_request_chars)
        if body.dimensions is not None and body.dimensions > facts.dim:
            raise ProxyError(400, f"dimensions must be at most {facts.dim} for {name}", param="dimensions",
                             code="invalid_value")  # fmt: skip
        if kind == "ids":
            if settings.token_ids == "off":
                raise refuse_token_ids()
            if decoder is not None:  # OpenAI cl100k_base ids: embed the text they encode
                kind, items = "text", decoder.decode(items, body.model)
            elif body.input_type or target.input_type:
                instruction = facts.query_instruction if input_type == "query" else facts.passage_instruction
                _check_no_instruction(input_type, instruction, name)
        started = time.perf_counter()
        gate = gates.get(name) or gates.setdefault(name, FairGate(settings.triton_tokens * len(client.clients)))
        result = await embed_in_slices(
            client, gate, items, ids=kind == "ids", query=input_type == "query", truncate=body.truncate,
            slice_tokens=settings.slice_tokens,
        )  # fmt: skip
        metrics.triton_seconds.labels(name).observe(time.perf_counter() - started)
        tokens = result.total_tokens
        request.state.tokens = tokens
        metrics.inputs.labels(name).observe(len(items))
        metrics.tokens.labels(name).observe(tokens)
        vectors = _shorten(result, body.dimensions)
        if body.encoding_format == "base64":
            data = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = list(vectors)
        payload = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)],
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return OrjsonResponse(payload)

    install_m3_routes(app, registry, settings, metrics)
    install_ui_routes(app, registry, settings, metrics)

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
        try:
            await registry.discover()
        except ProxyError:
            raise
        except Exception as exc:
            raise ProxyError(503, f"Triton is not available: {exc}", code="triton_unavailable") from None

    return app


def _card(listed: ListedName) -> ModelCard:
    facts = listed.facts
    return ModelCard(
        id=listed.id, dimensions=facts.dim, max_tokens=facts.max_tokens, pooling=facts.pooling,
        query_instruction=facts.query_instruction, passage_instruction=facts.passage_instruction, m3=facts.m3_heads,
        parent=listed.parent, input_type=listed.input_type, score_bands=facts.score_bands_dict(),
    )  # fmt: skip


def _input_type(explicit: InputType | None, target: Resolved) -> InputType:
    """The body's `input_type`, else the one the model name's suffix implies, else passage."""
    if explicit is not None and target.input_type is not None and explicit != target.input_type:
        raise ProxyError(
            400, f"input_type '{explicit}' contradicts the model name, which selects '{target.input_type}': "
            f"leave input_type out, or use the model '{target.name}'", param="input_type", code="input_type_conflict",
        )  # fmt: skip
    return explicit or target.input_type or "passage"


def _check_no_instruction(input_type: InputType, instruction: str, name: str) -> None:
    """Token ids (--token-ids model) are embedded as given: an instruction asked for cannot be put in front."""
    if instruction:
        raise ProxyError(
            400, f"token ids are embedded as given, so {name}'s {input_type} instruction ({instruction!r}) cannot be "
            f"put in front of them: send text, or include the instruction's tokens in the ids and leave out "
            f"input_type and the '-{input_type}' model name", param="input_type",
            code="instruction_with_token_ids",
        )  # fmt: skip


def _shorten(result: EmbeddingResult, dimensions: int | None) -> np.ndarray:
    vectors = result.vectors
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    short = vectors[:, :dimensions]
    norms = np.linalg.norm(short, axis=1, keepdims=True)
    return (short / np.maximum(norms, 1e-12)).astype(np.float32)
