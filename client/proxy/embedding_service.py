"""Texts (or token ids) in, vectors out: the one path every embedding route of the proxy goes through.

A route (OpenAI's `/v1/embeddings`, TEI's `/embed`, ...) parses its own request shape, then asks
`EmbeddingService.embed` for vectors and formats them its own way. What happens in between lives here, once:
resolving the model, the input checks, token-id handling, instructions (query/passage), fair slicing through
Triton, the metrics, and the `dimensions` cut.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np

from ..compact_vectors import first_dimensions
from ..long_texts import TextChunks, Truncation
from ..triton_client import EmbeddingResult
from .errors import ProxyError
from .fair_share import FairGate, embed_in_slices
from .inputs import check_request_size, normalise_input
from .long_inputs import embed_beyond_window
from .metrics import ProxyMetrics
from .registry import InputType, ModelRegistry, Resolved
from .settings import ProxySettings
from .token_ids import TiktokenDecoder, load_cl100k, refuse_token_ids
from .vector_cache import CacheScope, embed_cached, export_identity, vector_cache

InputKind = Literal["text", "ids"]


@dataclass(frozen=True)
class Embedded:
    """What a route formats: one L2-normalised row per input, in input order."""

    name: str  # the served model (after aliases and -query/-passage names)
    vectors: np.ndarray  # float32 [inputs, dim or dimensions]
    tokens: int  # tokens embedded, all inputs together (usage)
    inputs: int
    chunks: list[TextChunks] | None = None  # truncation "chunk": per input its windows (long_inputs.py)


class EmbeddingService:
    def __init__(self, registry: ModelRegistry, settings: ProxySettings, metrics: ProxyMetrics) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = metrics
        self.decoder = TiktokenDecoder(load_cl100k()) if settings.token_ids == "tiktoken" else None
        self._gates: dict[str, FairGate] = {}  # model -> its Triton calls' turns (fair_share.py)
        self.cache = vector_cache(settings, metrics)  # None with --no-cache

    async def embed(
        self,
        model: str,
        raw_input: object,
        *,
        input_type: InputType | None = None,
        truncate: bool = True,
        dimensions: int | None = None,
        param: str = "input",
        state: Any = None,
        model_ids: bool = False,
        truncation: Truncation | None = None,
    ) -> Embedded:
        """`raw_input` (a string, a list of strings, token ids or lists of them) embedded with `model`.

        `state` (a request's `request.state`) gets `model`, `inputs` and `tokens` for the access log as soon as
        each is known. Raises ProxyError (404 unknown model, 400 bad input, 413 too large, 503 Triton
        unavailable ...)."""
        state = state if state is not None else SimpleNamespace()
        # `truncation` (end, start, none, chunk: long_inputs.py) overrides the boolean `truncate` (end / none)
        mode: Truncation = truncation or ("end" if truncate else "none")
        truncate = mode != "none"
        target = await self.registry.resolve(model)
        name, replicas = target.name, target.replicas
        state.model = name
        facts = replicas.facts
        chosen = _input_type(input_type, target)
        kind, items = normalise_input(raw_input, self.settings.max_inputs)
        state.inputs = len(items)
        check_request_size(items, self.settings.max_request_chars, param=param)
        if dimensions is not None and dimensions > facts.dim:
            raise ProxyError(400, f"dimensions must be at most {facts.dim} for {name}", param="dimensions",
                             code="invalid_value")  # fmt: skip
        if kind == "ids":
            if self.settings.token_ids == "off" and not model_ids:  # model_ids: TEI's ids are the model's own
                raise refuse_token_ids()
            if self.decoder is not None and not model_ids:  # OpenAI cl100k_base ids: embed the text they encode
                kind, items = "text", self.decoder.decode(items, model)
            elif input_type or target.input_type:
                instruction = facts.query_instruction if chosen == "query" else facts.passage_instruction
                _check_no_instruction(chosen, instruction, name)
        started = time.perf_counter()
        gate = self._gates.get(name) or self._gates.setdefault(
            name, FairGate(self.settings.triton_tokens * len(replicas.clients))
        )
        instruction = (
            "" if kind == "ids" else facts.query_instruction if chosen == "query" else facts.passage_instruction
        )
        scope = CacheScope(name, export_identity(facts), instruction, repr(truncate), kind, facts.dim)

        async def triton(part: list) -> EmbeddingResult:  # only the inputs the vector cache lacks
            return await embed_in_slices(
                replicas, gate, part, ids=kind == "ids", query=chosen == "query", truncate=truncate,
                slice_tokens=self.settings.slice_tokens,
            )  # fmt: skip

        chunks = None
        if mode in ("start", "chunk"):  # texts over the window: their end, or every window (long_inputs.py)
            if kind == "ids":
                raise ProxyError(400, f"truncate {mode.upper()} takes text input, not token ids", param="input",
                                 code="unsupported_for_token_ids")  # fmt: skip
            long = await embed_beyond_window(
                replicas, items, query=chosen == "query", truncation=mode, max_chunks=self.settings.max_chunks,
                embed_texts=lambda part: embed_cached(self.cache, scope, part, triton),
            )  # fmt: skip
            result, chunks = long.result, long.chunks
        else:
            result = await embed_cached(self.cache, scope, items, triton)
        self.metrics.triton_seconds.labels(name).observe(time.perf_counter() - started)
        tokens = state.tokens = result.total_tokens
        self.metrics.inputs.labels(name).observe(len(items))
        self.metrics.tokens.labels(name).observe(tokens)
        vectors = first_dimensions(result.vectors, dimensions)
        return Embedded(name=name, vectors=vectors, tokens=tokens, inputs=len(items), chunks=chunks)

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()


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
