"""`POST /tokenize`: every token of each input, in text-embeddings-inference's response shape.

Body `{"inputs": str | [str], "model"?: str, "input_type"?: "query" | "passage", "add_special_tokens"?: true}`
(`input` is accepted for `inputs`). The answer is a list per input of
`{"id", "text", "special", "start", "stop", "token"}`:
- the tokenization is the model's own (the `NAME-tokenize` Triton model, the same tokenizer as the embedding
  ensemble) and is NOT truncated: a text over the model's window (`max_tokens` in `/v1/models`, also sent as the
  `X-Max-Tokens` header) lists all its tokens, and the model embeds only the first `max_tokens` of them;
- the model's query or passage instruction is put in front first, as `/v1/embeddings` does for that
  `input_type`, so `start` / `stop` are character offsets (Python `str` indices, Unicode code points) into the
  text as sent, i.e. instruction + input: `(instruction + input)[start:stop]` is the token's `text`. TEI's own
  offsets are UTF-8 byte offsets; they agree for ASCII text;
- special tokens ([CLS], </s>...) have `special: true`, `start` / `stop` null and their vocabulary string as
  `text`, as in TEI; `token` (an addition to TEI's shape) is the vocabulary string of every token ("##ing").
`model` may be left out when the proxy serves one model.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import FastAPI, Request, Response
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictStr

from ..errors import EmbeddingError
from ..triton_client import TokenizedText
from .admission import admitted
from .errors import ProxyError
from .inputs import check_request_size, normalise_texts
from .json_response import OrjsonResponse
from .metrics import ProxyMetrics
from .registry import ModelRegistry
from .replicas import ReplicaSet
from .settings import ProxySettings


class TokenizeRequest(BaseModel):
    """`POST /tokenize` (TEI's body, plus `model` and `input_type`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    inputs: StrictStr | list[StrictStr] = Field(
        validation_alias=AliasChoices("inputs", "input"), description="A string or strings."
    )
    model: StrictStr | None = Field(default=None, description="A served model (default: the only one).")
    input_type: Literal["query", "passage"] = Field(
        default="passage", description="Which of the model's instructions is put in front, as /v1/embeddings does."
    )
    add_special_tokens: bool = True
    prompt_name: Literal["query", "passage", "document"] | None = Field(
        default=None, description="TEI's field: the query or passage (document) instruction; wins over input_type."
    )


class SimpleToken(BaseModel):
    """One token, as text-embeddings-inference answers it (+ `token`)."""

    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None
    token: str


def token_rows(tokenized: TokenizedText) -> list[dict[str, object]]:
    """One input's tokens in TEI's shape."""
    rows: list[dict[str, object]] = []
    for i, token_id in enumerate(tokenized.ids.tolist()):
        piece = tokenized.tokens[i]
        if tokenized.special[i]:
            rows.append({"id": token_id, "text": piece, "special": True, "start": None, "stop": None, "token": piece})
            continue
        start, stop = (int(v) for v in tokenized.offsets[i])
        rows.append(
            {"id": token_id, "text": tokenized.text[start:stop], "special": False, "start": start, "stop": stop,
             "token": piece}
        )  # fmt: skip
    return rows


def install_tokenize_route(
    app: FastAPI, registry: ModelRegistry, settings: ProxySettings, metrics: ProxyMetrics
) -> None:

    async def resolve(requested: str | None, request: Request) -> tuple[str, ReplicaSet]:
        if requested is None:
            try:
                await registry.discover()
            except EmbeddingError as exc:
                raise ProxyError(503, f"Triton is not available: {exc.message}", code="triton_unavailable") from None
            served = list(registry.clients)
            if len(served) != 1:
                raise ProxyError(400, f"pass 'model'; served models: {', '.join(served) or 'none'}", param="model",
                                 code="model_required")  # fmt: skip
            requested = served[0]
        name, replicas = await registry.get(requested)
        request.state.model = name
        return name, replicas

    @app.post(
        "/tokenize",
        response_model=list[list[SimpleToken]],
        responses={status: {"description": "OpenAI error JSON"} for status in (400, 401, 404, 408, 413, 429, 503)},
    )
    async def tokenize(body: TokenizeRequest, request: Request) -> Response:
        """Every token of each input (untruncated), with character offsets into instruction + input."""
        async with admitted(app, settings.max_in_flight, metrics):
            name, replicas = await resolve(body.model, request)
            texts = normalise_texts(body.inputs, settings.max_inputs, param="inputs")
            request.state.inputs = len(texts)
            check_request_size(texts, settings.max_request_chars, param="inputs")
            started = time.perf_counter()
            query = (body.prompt_name or body.input_type) == "query"
            result = await replicas.tokenize(texts, query=query, add_special_tokens=body.add_special_tokens)
            metrics.triton_seconds.labels(name).observe(time.perf_counter() - started)
            request.state.tokens = sum(len(t) for t in result)
            payload = [token_rows(t) for t in result]
            return OrjsonResponse(payload, headers={"X-Max-Tokens": str(replicas.facts.max_tokens)})
