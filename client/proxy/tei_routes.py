"""text-embeddings-inference's HTTP API beside the OpenAI one: `/embed`, `/embed_all`, `/similarity`, `/info`,
`/decode`, and `POST /` (+ `/invocations`) routed as TEI routes it.

Request and response shapes are TEI's (router/src/http/types.rs), and so are the errors on these paths
(`tei_errors.py`). What differs, and why:
- TEI serves one model; this proxy may serve several. A body may name one in `model` (an addition); without
  it the proxy's only model is used, and with several served a 422 says which to name.
- `prompt_name` picks the model's `query` or `passage` (alias `document`) instruction. Without it the passage
  instruction is used (as a TEI started with `--default-prompt-name passage`), so `/embed` gives the very vectors
  `/v1/embeddings` gives. `truncation_direction: Left` keeps the end of a text and its instruction
  (`truncation="start"` of the embedding service), where TEI would cut the instruction first.
- `normalize: false` (and `/embed_all`) pool the encoder's token states here (`token_states.py`): the
  served ensembles normalise inside Triton.
- `POST /` is `/embed` (TEI's default for an embedding model), `/similarity` for a body whose `inputs` is
  `{source_sentence, sentences}` (what TEI serves at `/` with `TASK=sentence-similarity`), and rerank for
  `{query, texts}`: answered by `app.state.tei_rerank` when a reranker route registered one, else a 404.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator

from bge_triton import __version__

from ..triton_client import as_text_list
from .admission import admitted
from .embedding_service import EmbeddingService
from .errors import ProxyError
from .inputs import MAX_TOKEN_ID, check_request_size, normalise_input
from .json_response import OrjsonResponse
from .metrics import ProxyMetrics
from .registry import InputType, ModelRegistry
from .replicas import ReplicaSet
from .settings import ProxySettings
from .token_states import decode_ids, pool, token_states

TeiInput = StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
Direction = Literal["Left", "Right"]
PROMPTS: dict[str, InputType] = {"query": "query", "passage": "passage", "document": "passage"}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TEI_PATHS = ("/embed", "/embed_all", "/similarity", "/info", "/decode", "/", "/invocations")
# A reranker's handler for TEI's rerank body at `POST /` ({query, texts, ...}); set by the rerank routes.
RerankHandler = Callable[[dict[str, Any], Request], Awaitable[Response]]


def _direction(value: object) -> object:
    """TEI's TruncationDirection: Left / Right, any case."""
    if isinstance(value, str) and value.lower() in ("left", "right"):
        return value.capitalize()
    return value


class TeiRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    truncate: bool | None = Field(default=None, description="Default true (TEI's auto_truncate).")
    truncation_direction: Direction = "Right"
    prompt_name: StrictStr | None = None
    model: StrictStr | None = Field(default=None, description="A served model (default: the only one).")

    _norm_direction = field_validator("truncation_direction", mode="before")(_direction)


class EmbedAllRequest(TeiRequest):
    """`POST /embed_all`."""

    inputs: TeiInput


class EmbedRequest(EmbedAllRequest):
    """`POST /embed`."""

    normalize: bool = True
    dimensions: Annotated[int, Field(gt=0)] | None = None


class SimilarityInput(BaseModel):
    model_config = ConfigDict(strict=True)

    source_sentence: StrictStr
    sentences: list[StrictStr]


class SimilarityParameters(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    truncate: bool | None = None
    truncation_direction: Direction = "Right"
    prompt_name: StrictStr | None = None

    _norm_direction = field_validator("truncation_direction", mode="before")(_direction)


class SimilarityRequest(BaseModel):
    """`POST /similarity`: cosine of `source_sentence` with each of `sentences`."""

    model_config = ConfigDict(extra="ignore", strict=True)

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None
    model: StrictStr | None = None


class DecodeRequest(BaseModel):
    """`POST /decode`: token ids (one list, or a list of lists) back to text."""

    model_config = ConfigDict(extra="ignore", strict=True)

    ids: list[StrictInt] | list[list[StrictInt]]
    skip_special_tokens: bool = True
    model: StrictStr | None = None


def install_tei_routes(app: FastAPI, registry: ModelRegistry, settings: ProxySettings, metrics: ProxyMetrics) -> None:
    service: EmbeddingService = app.state.embedding_service
    app.state.tei_paths.update(TEI_PATHS)
    app.state.tei_rerank = None

    async def served(requested: str | None, request: Request) -> tuple[str, ReplicaSet]:
        if requested is None:
            await _discover()
            names = list(registry.clients)
            if len(names) != 1:
                raise ProxyError(422, f"this server serves several models ({', '.join(names) or 'none'}): name one "
                                 "in the body's \"model\" (an addition to TEI's API)", param="model",
                                 code="model_required")  # fmt: skip
            requested = names[0]
        name, replicas = await registry.get(requested)
        request.state.model = name
        return name, replicas

    async def _discover() -> None:
        await registry.discover_or_503()

    def input_type(prompt_name: str | None) -> InputType:
        if prompt_name is None:
            return "passage"
        if prompt_name not in PROMPTS:
            raise ProxyError(422, f"`prompt_name` {prompt_name!r} is not one of this model's prompts: "
                             f"{', '.join(PROMPTS)}", param="prompt_name", code="invalid_value")  # fmt: skip
        return PROMPTS[prompt_name]

    def items_of(inputs: object) -> tuple[list, bool]:
        """TEI's Input (a string, token ids, or a batch of them) -> (items, are token ids), checked as every
        embedding route checks its input (ids in range, text UTF-8 encodable, the size limits); TEI's errors."""
        if isinstance(inputs, list) and not inputs:
            raise ProxyError(400, "`inputs` cannot be empty", param="inputs", code="empty")
        if isinstance(inputs, list) and any(isinstance(v, list) and not v for v in inputs):
            raise ProxyError(400, "`input_ids` cannot be empty", param="inputs", code="empty")
        check_batch(1 if isinstance(inputs, str) or all(isinstance(v, int) for v in inputs) else len(inputs))
        kind, items = normalise_input(inputs, settings.max_inputs)
        check_request_size(items, settings.max_request_chars, param="inputs")
        if kind == "text":
            as_text_list(items)  # InvalidInput (400) for a lone surrogate, which UTF-8 cannot encode
        return items, kind == "ids"

    def check_batch(count: int) -> None:
        if count > settings.max_inputs:
            raise ProxyError(422, f"batch size {count} > maximum allowed batch size {settings.max_inputs}",
                             param="inputs", code="too_many_inputs")  # fmt: skip

    async def vectors(body: EmbedRequest, request: Request) -> tuple[np.ndarray, int, int]:
        """(vectors, tokens, characters) of `/embed`."""
        name, replicas = await served(body.model, request)
        items, ids = items_of(body.inputs)
        truncate = True if body.truncate is None else body.truncate
        chosen = input_type(body.prompt_name)
        chars = sum(len(i) for i in items)
        if body.normalize:
            left = truncate and body.truncation_direction == "Left"
            embedded = await service.embed(
                name, items, input_type=None if ids else chosen, truncate=truncate, dimensions=body.dimensions,
                param="inputs", state=request.state, model_ids=ids, truncation="start" if left else None,
            )  # fmt: skip
            unit = embedded.vectors / np.maximum(np.linalg.norm(embedded.vectors, axis=1, keepdims=True), 1e-12)
            return unit.astype(np.float32), embedded.tokens, chars
        if body.truncation_direction == "Left" and truncate:
            raise ProxyError(422, "`normalize: false` with `truncation_direction: Left` is not served: the token "
                             "states are taken from the text's first window; normalise, or send the end",
                             param="truncation_direction", code="invalid_value")  # fmt: skip
        facts = replicas.facts
        if body.dimensions is not None and body.dimensions > facts.dim:
            raise ProxyError(422, f"`dimensions` must be at most {facts.dim}", param="dimensions",
                             code="invalid_value")  # fmt: skip
        states, tokens = await token_states(replicas, items, ids=ids, query=chosen == "query", truncate=truncate)
        pooled = np.stack([pool(s, facts.pooling) for s in states]).astype(np.float32)
        request.state.tokens = tokens
        return pooled[:, : body.dimensions] if body.dimensions else pooled, tokens, chars

    def compute_headers(tokens: int, chars: int) -> dict[str, str]:
        return {"x-compute-type": "triton", "x-compute-tokens": str(tokens), "x-compute-characters": str(chars)}

    async def embed(body: EmbedRequest, request: Request) -> Response:
        async with admitted(app, settings.max_in_flight, metrics):
            out, tokens, chars = await vectors(body, request)
            return OrjsonResponse(out, headers=compute_headers(tokens, chars))

    async def similarity(body: SimilarityRequest, request: Request) -> Response:
        if not body.inputs.sentences:
            raise ProxyError(400, "`inputs.sentences` cannot be empty", param="inputs.sentences", code="empty")
        check_batch(len(body.inputs.sentences) + 1)
        params = body.parameters or SimilarityParameters()
        embed_body = EmbedRequest(
            inputs=[body.inputs.source_sentence, *body.inputs.sentences], truncate=params.truncate,
            truncation_direction=params.truncation_direction, prompt_name=params.prompt_name, model=body.model,
        )  # fmt: skip
        async with admitted(app, settings.max_in_flight, metrics):
            out, tokens, chars = await vectors(embed_body, request)
        scores = (out[1:] @ out[0]).astype(np.float32)  # unit vectors: the cosines
        return OrjsonResponse(scores, headers=compute_headers(tokens, chars))

    @app.post("/embed", response_model=list[list[float]], tags=["TEI"])
    async def embed_route(body: EmbedRequest, request: Request) -> Response:
        """TEI's `/embed`: one vector per input."""
        return await embed(body, request)

    @app.post("/similarity", response_model=list[float], tags=["TEI"])
    async def similarity_route(body: SimilarityRequest, request: Request) -> Response:
        """TEI's `/similarity`: the cosine of `source_sentence` with each of `sentences`."""
        return await similarity(body, request)

    @app.post("/embed_all", response_model=list[list[list[float]]], tags=["TEI"])
    async def embed_all(body: EmbedAllRequest, request: Request) -> Response:
        """TEI's `/embed_all`: per input the encoder's vector of every token (special tokens included)."""
        async with admitted(app, settings.max_in_flight, metrics):
            _, replicas = await served(body.model, request)
            items, ids = items_of(body.inputs)
            truncate = True if body.truncate is None else body.truncate
            if truncate and body.truncation_direction == "Left":
                raise ProxyError(422, "`truncation_direction: Left` is not served by /embed_all: its token states "
                                 "are the text's first window", param="truncation_direction",
                                 code="invalid_value")  # fmt: skip
            chosen = input_type(body.prompt_name)
            states, tokens = await token_states(replicas, items, ids=ids, query=chosen == "query", truncate=truncate)
            request.state.inputs, request.state.tokens = len(items), tokens
            chars = sum(len(i) for i in items)
            return OrjsonResponse(states, headers=compute_headers(tokens, chars))

    @app.post("/decode", response_model=list[str], tags=["TEI"])
    async def decode(body: DecodeRequest, request: Request) -> Response:
        """TEI's `/decode`: token ids (a list, or a list of lists) -> one text per list."""
        if not body.ids:
            raise ProxyError(400, "`ids` cannot be empty", param="ids", code="empty")
        rows: list[list[int]] = [body.ids] if isinstance(body.ids[0], int) else body.ids  # type: ignore[list-item]
        check_batch(len(rows))
        if any(i < 0 or i > MAX_TOKEN_ID for row in rows for i in row):
            raise ProxyError(422, "`ids` must be token ids (integers >= 0)", param="ids", code="invalid_value")
        async with admitted(app, settings.max_in_flight, metrics):
            _, replicas = await served(body.model, request)
            return OrjsonResponse(await decode_ids(replicas, rows, skip_special_tokens=body.skip_special_tokens))

    @app.get("/info", tags=["TEI"])
    async def info(request: Request, model: str | None = None) -> Response:
        """TEI's `/info`: the served model and the router's limits (`?model=` picks one of several)."""
        name, replicas = await served(model, request)
        facts = replicas.facts
        batch = next(iter(replicas.clients.values())).max_batch_size
        return OrjsonResponse({
            "model_id": facts.source or name, "model_sha": None, "model_dtype": DTYPES.get(facts.precision,
            facts.precision), "served_model_name": name, "model_type": {"embedding": {"pooling": facts.pooling}},
            "max_concurrent_requests": settings.max_in_flight, "max_input_length": facts.max_tokens,
            "max_batch_tokens": settings.slice_tokens, "max_batch_requests": batch,
            "max_client_batch_size": settings.max_inputs, "auto_truncate": True, "tokenization_workers": 1,
            "version": __version__, "sha": None, "docker_label": None,
        })  # fmt: skip

    @app.post("/", tags=["TEI"])
    @app.post("/invocations", include_in_schema=False)
    async def root(request: Request) -> Response:
        """TEI's `POST /`: `/embed`, or `/similarity` / rerank by the body's shape."""
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise ProxyError(422, f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise ProxyError(422, "the body must be a JSON object", code="invalid_value")
        if "query" in body and "texts" in body:
            handler: RerankHandler | None = app.state.tei_rerank
            if handler is None:
                raise ProxyError(404, "no reranker is served here: POST / with {query, texts} is TEI's rerank, "
                                 "and this server serves embedding models only", code="model_not_found")  # fmt: skip
            return await handler(body, request)
        try:
            if isinstance(body.get("inputs"), dict):
                return await similarity(SimilarityRequest.model_validate(body), request)
            return await embed(EmbedRequest.model_validate(body), request)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
