"""Python clients of the served embedding ensemble, over tritonclient's gRPC or HTTP protocol.

`EmbeddingClient` (threads) and `AsyncEmbeddingClient` (asyncio) share everything but the I/O:
`_ClientCore` validates and prefixes the inputs, cuts them into requests of the model's
`max_batch_size` (similar lengths together, to spare the server padding), puts the answers back
in input order and maps failures to `errors`; `Transport` (triton_transport.py) is the thin layer that calls
tritonclient, whose sync and asyncio clients have the same method names (the asyncio ones return
coroutines, which the async client awaits).

Texts go to the `<name>` ensemble (TEXT), token ids to `<name>-ids` (TOKEN_IDS), texts to be shown as
tokens (`tokenize`) to `<name>-tokenize`. The model's facts
(dimension, token window, instructions) are read from the ensemble's config.pbtxt `parameters`,
as written by the export, and never re-derived here; `list_models` lists the ensembles that
carry them.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Literal, TypeVar

import numpy as np

from bge_triton.model_facts import FactsError, ModelFacts
from bge_triton.model_names import model_names

from . import grpc_inference, http_inference
from .concurrent_calls import gather_or_cancel
from .errors import (
    EmbeddingError,
    InputTooLong,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    ServerError,
    ServerUnavailable,
    from_triton_exception,
)
from .grpc_inference import AsyncGrpcSender, GrpcSender
from .http_inference import AsyncHttpSender, HttpSender
from .m3_scoring import (
    MODE_OUTPUTS,
    MODES,
    M3Vectors,
    M3Weights,
    Mode,
    PassageScores,
    colbert_rows,
    m3_ensemble,
    score_passages,
    sparse_rows,
)
from .triton_transport import Transport

TransportProtocol = Literal["grpc", "http"]
PROTOCOLS: tuple[str, ...] = ("grpc", "http")

INPUT_NAME = "TEXT"
IDS_INPUT_NAME = "TOKEN_IDS"  # the `<name>-ids` ensemble: token ids, rows right-padded with ID_PADDING
ID_PADDING = -1
OUTPUT_NAMES: tuple[str, ...] = ("EMBEDDING", "TOKEN_COUNT", "FULL_TOKEN_COUNT")
# The `<name>-tokenize` model: every token of a text, untruncated (triton_models/tokenize_model.py).
TOKENIZE_OUTPUTS: tuple[str, ...] = ("TOKEN_IDS", "TOKEN_OFFSETS", "TOKEN_SPECIAL", "TOKENS", "TOKEN_COUNT")

T = TypeVar("T")


@dataclass(frozen=True)
class EmbeddingResult:
    """Embeddings of a list of texts, in input order, with their token usage."""

    vectors: np.ndarray  # float32 [n, dim], unit length when the model normalises
    token_counts: np.ndarray  # int64 [n]: tokens embedded (after truncation), special tokens included
    full_token_counts: np.ndarray  # int64 [n]: tokens of the whole text (before truncation)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def total_tokens(self) -> int:
        return int(self.token_counts.sum())


@dataclass(frozen=True)
class TokenizedText:
    """One text's whole tokenization (not cut to the model's window: `len(t) > facts.max_tokens` is a text
    the model truncates, to its first `max_tokens` tokens)."""

    text: str  # the text as tokenized: with the model's query or passage instruction in front
    ids: np.ndarray  # int64 [n]
    offsets: np.ndarray  # int64 [n, 2]: [start, stop) character offsets into `text`; [0, 0] for special tokens
    special: np.ndarray  # bool [n]: [CLS], [SEP], <s>, </s>...
    tokens: list[str]  # the vocabulary's strings ("##ing", "▁hello")

    def __len__(self) -> int:
        return len(self.ids)


def instruction(facts: ModelFacts, *, query: bool) -> str:
    """The text a model wants in front of a query (or of a passage)."""
    return facts.query_instruction if query else facts.passage_instruction


def with_instruction(texts: Sequence[str], facts: ModelFacts, *, query: bool) -> list[str]:
    """`texts` with the model's query (or passage) instruction prepended, as the client sends them."""
    prefix = instruction(facts, query=query)
    return [prefix + text for text in texts] if prefix else list(texts)


def as_text_list(texts: str | Iterable[str]) -> list[str]:
    """One text or an iterable of texts -> a list of str that encodes as UTF-8; InvalidInput otherwise."""
    if isinstance(texts, str):
        items: list[Any] = [texts]
    elif isinstance(texts, bytes | bytearray | memoryview):
        raise InvalidInput("texts must be str (or a list of str), not bytes: decode them first")
    else:
        try:
            items = list(texts)
        except TypeError:
            raise InvalidInput(f"texts must be a str or a list of str, not {type(texts).__name__}") from None
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidInput(f"input {index} is {type(item).__name__}, not str")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            char = exc.object[exc.start]
            raise InvalidInput(
                f"input {index} is not valid Unicode text: it holds a lone surrogate "
                f"U+{ord(char):04X} at position {exc.start}, which UTF-8 cannot encode"
            ) from None
    return items


def as_id_rows(ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray) -> list[np.ndarray]:
    """Token ids of one input (a list of int) or of several (a list of lists, a 2-D array) -> int64
    rows; InvalidInput for anything else (the server checks them against the vocabulary)."""
    if isinstance(ids, str | bytes):
        raise InvalidInput("token ids must be a list of int or a list of lists of int")
    try:
        items = list(ids)
    except TypeError:
        raise InvalidInput(f"token ids must be a list of int or of lists of int, not {type(ids).__name__}") from None
    if items and all(_is_id(i) for i in items):
        items = [items]  # one input
    rows = []
    for index, item in enumerate(items):
        try:
            row = list(item)
        except TypeError:
            raise InvalidInput(f"input {index} is {type(item).__name__}, not a list of token ids") from None
        if not row:
            raise InvalidInput(f"input {index} has no token ids")
        for value in row:
            if not _is_id(value) or int(value) < 0:
                raise InvalidInput(f"input {index} holds {value!r}, not a token id (an int >= 0)")
            if int(value) > _INT64_MAX:
                raise InvalidInput(f"input {index} holds {value}, over the largest token id a model can have (2^63-1)")
        rows.append(np.asarray(row, dtype=np.int64))
    return rows


_INT64_MAX = 2**63 - 1


def _is_id(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _strip_scheme(url: str, protocol: str) -> str:
    for scheme in ("http://", "grpc://", "dns:///"):
        if url.startswith(scheme):
            return url[len(scheme) :].rstrip("/")
    if "://" in url:
        raise ValueError(f"unsupported URL {url!r}: give host:port (TLS is not supported by this client)")
    return url.rstrip("/") if protocol == "http" else url


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    # Triton's JSON config: {"key": {"string_value": "..."}}; gRPC's MessageToJson omits empty strings.
    raw = config.get("parameters") or {}
    return {key: str((value or {}).get("string_value", "")) for key, value in raw.items()}


def _takes_text(config: dict[str, Any]) -> bool:
    """Whether the model's input is the ensemble's TEXT (BYTES) tensor (not, say, token ids)."""
    inputs = config.get("input") or []
    return any(i.get("name") == INPUT_NAME and i.get("data_type") == "TYPE_STRING" for i in inputs)


def embedding_models(configs: dict[str, dict[str, Any] | None]) -> dict[str, ModelFacts]:
    """The text embedding ensembles among `{name: model config}` (as Triton answers them)."""
    found = {name: _facts_of(config) for name, config in configs.items() if config is not None}
    # The bge-m3 ensembles NAME-sparse / NAME-colbert / NAME-m3 carry NAME's facts: only NAME itself is listed.
    return {name: facts for name, facts in found.items() if facts is not None and facts.name == name}


def _facts_of(config: dict[str, Any]) -> ModelFacts | None:
    """The model facts in an embedding ensemble's config parameters; None for any other model."""
    if not _takes_text(config):
        return None
    params = _parameters(config)
    if "dim" not in params or "max_tokens" not in params:
        return None
    try:
        return ModelFacts.from_parameters(params)
    except (FactsError, ValueError, TypeError):
        return None


def _retryable(error: EmbeddingError) -> bool:
    return isinstance(error, ServerUnavailable | Overloaded)


# What one request answers: EMBEDDING [k, dim], TOKEN_COUNT [k], FULL_TOKEN_COUNT [k].
_Part = tuple[np.ndarray, np.ndarray, np.ndarray]

# Roughly what a BERT-style pre-tokenizer splits off: one CJK character, a word, a punctuation mark.
_PIECES = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff]+|[^\w\s]")


def _estimated_tokens(text: str) -> int:
    return len(_PIECES.findall(text))


def _unsorted(column: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(column)
    out[order] = column
    return out


@dataclass(frozen=True)
class _Plan:
    """The requests for one call: which ensemble, which input, and its chunks."""

    model: str
    input_name: str  # TEXT or TOKEN_IDS
    datatype: str  # BYTES or INT64
    chunks: list[np.ndarray]  # [k, 1] texts or [k, longest] ids, k <= max_batch_size
    order: np.ndarray | None  # chunk rows -> caller's indices, when the inputs were sorted by length
    outputs: tuple[str, ...] = OUTPUT_NAMES


class _ClientCore:
    """Everything the sync and asyncio clients share: settings, model resolution, request
    building, result assembly and the retry schedule."""

    def __init__(
        self,
        url: str,
        protocol: str,
        model: str | None,
        *,
        timeout_s: float,
        max_concurrency: int,
        retries: int,
        backoff_s: float,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r} (grpc, http)")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if retries < 0 or backoff_s < 0:
            raise ValueError("retries and backoff_s must not be negative")
        self.url = _strip_scheme(url, protocol)
        self.protocol = protocol
        self.requested_model = model
        self.timeout_s = float(timeout_s)
        self.max_concurrency = int(max_concurrency)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.model: str | None = None
        self.facts: ModelFacts | None = None
        self.max_batch_size: int | None = None
        self.module: ModuleType = self._tensor_module()

    def _tensor_module(self) -> ModuleType:
        # InferInput / InferRequestedOutput: the asyncio clients take the same classes.
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    # -- transports ----------------------------------------------------------------------------
    def sync_transport(self) -> Transport:
        url, timeout = self.url, self.timeout_s
        if self.protocol == "grpc":
            import tritonclient.grpc as grpc_client

            return Transport(
                lambda: grpc_client.InferenceServerClient(url), grpc=True, timeout_s=timeout,
                sender_factory=lambda: GrpcSender(url, timeout),
            )  # fmt: skip
        import tritonclient.http as http_client

        return Transport(
            lambda: http_client.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout),
            grpc=False,
            timeout_s=timeout,
            gevent=True,
            sender_factory=lambda: HttpSender(url, timeout),
        )

    def async_transport(self) -> Transport:
        # Made on first use, inside the event loop (aiohttp and grpc.aio bind to the running loop).
        url, timeout = self.url, self.timeout_s
        if self.protocol == "grpc":
            import tritonclient.grpc.aio as aio_grpc

            return Transport(
                lambda: aio_grpc.InferenceServerClient(url), grpc=True, timeout_s=timeout,
                sender_factory=lambda: AsyncGrpcSender(url, timeout),
            )  # fmt: skip
        import tritonclient.http.aio as aio_http

        return Transport(
            lambda: aio_http.InferenceServerClient(url, conn_timeout=timeout), grpc=False, timeout_s=timeout,
            sender_factory=lambda: AsyncHttpSender(url, timeout),
        )  # fmt: skip

    # -- model resolution ----------------------------------------------------------------------
    def require_facts(self) -> ModelFacts:
        if self.facts is None:
            raise RuntimeError("the client has not read the model's facts yet: await client.connect() first")
        return self.facts

    @staticmethod
    def index_names(index: Any) -> tuple[list[str], list[str]]:
        """(ready, not ready) model names of a repository index (gRPC: {"models": [...]}, HTTP: [...])."""
        models = index.get("models", []) if isinstance(index, dict) else index or []
        ready = {m["name"] for m in models if m.get("name") and str(m.get("state", "")).upper() == "READY"}
        others = {m["name"] for m in models if m.get("name")} - ready
        return sorted(ready), sorted(others)

    @staticmethod
    def config_dict(raw: Any) -> dict[str, Any]:
        if isinstance(raw, dict) and isinstance(raw.get("config"), dict):
            return raw["config"]  # gRPC's ModelConfigResponse as JSON
        return raw if isinstance(raw, dict) else {}

    def adopt(self, configs: dict[str, Any], not_ready: Sequence[str] = ()) -> ModelFacts:
        """Pick the embedding model among `{name: config}` (None for a model whose config failed)."""
        found = embedding_models(configs)
        if self.requested_model is not None:
            if self.requested_model not in found:
                raise ModelNotFound(
                    f"model {self.requested_model!r} is not a text embedding ensemble: its config has no "
                    f"{INPUT_NAME} input or no model facts in its parameters"
                )
            name = self.requested_model
        elif len(found) == 1:
            name = next(iter(found))
        elif not found and not_ready:
            raise ModelNotReady(f"no ready embedding model on {self.url}; not ready: {', '.join(not_ready)}")
        elif not found:
            raise ModelNotFound(
                f"no model on {self.url} takes {INPUT_NAME} and carries model facts "
                "(export one with `bge-triton export`)"
            )
        else:
            raise InvalidInput(f"several embedding models on {self.url} ({', '.join(sorted(found))}): pass model=")
        facts, config = found[name], configs[name] or {}
        batch = int(config.get("max_batch_size") or 0)
        if batch < 1:
            raise ServerError(f"model {name!r} has max_batch_size {batch}: the client needs a batching ensemble")
        self.model, self.facts, self.max_batch_size = name, facts, batch
        return facts

    # -- requests --------------------------------------------------------------------------
    def text_plan(self, texts: list[str], *, query: bool) -> _Plan:
        """The prefixed texts, UTF-8 encoded, as BYTES [k, 1] chunks for the `<name>` ensemble."""
        assert self.model is not None
        prefixed = with_instruction(texts, self.require_facts(), query=query)
        order = self._length_order([_estimated_tokens(t) for t in prefixed]) if self._chunked(prefixed) else None
        if order is not None:
            prefixed = [prefixed[i] for i in order]
        encoded = [text.encode("utf-8") for text in prefixed]
        chunks = []
        for rows in self._slices(encoded):
            chunk = np.empty((len(rows), 1), dtype=np.object_)
            chunk[:, 0] = rows
            chunks.append(chunk)
        return _Plan(self.model, INPUT_NAME, "BYTES", chunks, order)

    def m3_plan(self, texts: list[str], modes: Sequence[Mode], *, query: bool) -> _Plan:
        """Texts for the bge-m3 ensemble that computes `modes` in one encoder pass."""
        facts = self.require_facts()
        if not facts.m3_heads:
            raise InvalidInput(f"model {self.model!r} has no sparse / ColBERT heads (not a bge-m3 export)")
        plan = self.text_plan(texts, query=query)
        outputs = (*tuple(name for mode in MODES if mode in modes for name in MODE_OUTPUTS[mode]), "TOKEN_COUNT")
        return _Plan(m3_ensemble(plan.model, modes), plan.input_name, plan.datatype, plan.chunks, plan.order, outputs)

    def parse_m3(self, result: Any, rows: int, modes: Sequence[Mode]) -> M3Vectors:
        def column(name: str) -> np.ndarray:
            value = result.as_numpy(name)
            if value is None or len(value) != rows:
                raise ServerError(f"model {self.model!r} did not return {name} for {rows} texts")
            return np.asarray(value)

        return M3Vectors(
            dense=column("EMBEDDING").astype(np.float32) if "dense" in modes else None,
            sparse=sparse_rows(column("SPARSE_IDS"), column("SPARSE_WEIGHTS")) if "sparse" in modes else None,
            colbert=colbert_rows(column("COLBERT"), column("COLBERT_LENGTH")) if "colbert" in modes else None,
            token_counts=column("TOKEN_COUNT").astype(np.int64).reshape(-1),
        )

    def assemble_m3(self, plan: _Plan, parts: list[M3Vectors], modes: Sequence[Mode]) -> M3Vectors:
        """The parts of a plan in the caller's order."""
        dim = self.require_facts().dim

        def ordered(items: list[Any]) -> list[Any]:
            if plan.order is None:
                return items
            out: list[Any] = [None] * len(items)
            for position, index in enumerate(plan.order):
                out[int(index)] = items[position]
            return out

        counts = np.concatenate([p.token_counts for p in parts]) if parts else np.zeros(0, dtype=np.int64)
        dense = None
        if "dense" in modes:
            stacked = np.concatenate([p.dense for p in parts if p.dense is not None]) if parts else None
            dense = np.zeros((0, dim), np.float32) if stacked is None else stacked
            dense = _unsorted(dense, plan.order) if plan.order is not None else dense
        return M3Vectors(
            dense=dense,
            sparse=ordered([row for p in parts for row in p.sparse or []]) if "sparse" in modes else None,
            colbert=ordered([row for p in parts for row in p.colbert or []]) if "colbert" in modes else None,
            token_counts=_unsorted(counts, plan.order) if plan.order is not None else counts,
        )

    def tokenize_plan(self, texts: list[str], *, query: bool) -> _Plan:
        """The prefixed texts as BYTES [k, 1] chunks for the `<name>-tokenize` model."""
        plan = self.text_plan(texts, query=query)
        tokenize = model_names(plan.model)["tokenize"]
        return _Plan(tokenize, plan.input_name, plan.datatype, plan.chunks, plan.order, TOKENIZE_OUTPUTS)

    def tokenize_call(
        self, transport: Transport, plan: _Plan, chunk: np.ndarray, *, add_special_tokens: bool
    ) -> Callable[[], Any]:
        """`infer_call` for the tokenize model, with ADD_SPECIAL_TOKENS when it is not the default."""
        if add_special_tokens:
            return self.infer_call(transport, plan, chunk)
        text = self.module.InferInput(plan.input_name, list(chunk.shape), plan.datatype)
        text.set_data_from_numpy(chunk)
        flag = self.module.InferInput("ADD_SPECIAL_TOKENS", [len(chunk), 1], "BOOL")
        flag.set_data_from_numpy(np.zeros((len(chunk), 1), dtype=np.bool_))
        outputs = [self.module.InferRequestedOutput(name) for name in plan.outputs]
        return lambda: transport.infer(plan.model, [text, flag], outputs)

    def tokenize_failure(self, error: EmbeddingError, plan: _Plan) -> EmbeddingError:
        """A repository exported before `<name>-tokenize` existed answers "unknown model": say what to do."""
        if isinstance(error, ModelNotFound):
            return ModelNotFound(
                f"{self.model!r} has no {plan.model!r} model on {self.url} (its export predates tokenization "
                f"support): export the model again with `bge-triton export` ({error.message})"
            )
        return error

    def parse_tokens(self, result: Any, chunk: np.ndarray) -> list[TokenizedText]:
        rows = len(chunk)
        columns = {name: result.as_numpy(name) for name in TOKENIZE_OUTPUTS}
        missing = [name for name, value in columns.items() if value is None or len(value) != rows]
        if missing:
            raise ServerError(f"model '{self.model}-tokenize' did not return {', '.join(missing)} for {rows} texts")
        ids = np.asarray(columns["TOKEN_IDS"], dtype=np.int64).reshape(rows, -1)
        offsets = np.asarray(columns["TOKEN_OFFSETS"], dtype=np.int64).reshape(rows, -1, 2)
        special = np.asarray(columns["TOKEN_SPECIAL"]).astype(np.bool_).reshape(rows, -1)
        tokens = np.asarray(columns["TOKENS"], dtype=np.object_).reshape(rows, -1)
        counts = np.asarray(columns["TOKEN_COUNT"], dtype=np.int64).reshape(-1)
        out = []
        for r in range(rows):
            n = int(counts[r])
            raw = chunk[r, 0]
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            pieces = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens[r, :n]]
            out.append(TokenizedText(text, ids[r, :n].copy(), offsets[r, :n].copy(), special[r, :n].copy(), pieces))
        return out

    @staticmethod
    def assemble_tokens(plan: _Plan, parts: list[list[TokenizedText]]) -> list[TokenizedText]:
        flat = [t for part in parts for t in part]
        if plan.order is None:
            return flat
        out: list[Any] = [None] * len(flat)
        for position, index in enumerate(plan.order):
            out[int(index)] = flat[position]
        return out

    def ids_plan(self, rows: list[np.ndarray]) -> _Plan:
        """Token-id rows as INT64 [k, longest] chunks, right-padded with -1, for `<name>-ids`."""
        assert self.model is not None
        vocab = self.require_facts().vocab_size
        for index, row in enumerate(rows):
            if vocab > 0 and int(row.max()) >= vocab:
                raise InvalidInput(f"input {index} holds id {int(row.max())}, outside the vocabulary [0, {vocab})")
        order = self._length_order([len(row) for row in rows])
        if order is not None:
            rows = [rows[i] for i in order]
        chunks = []
        for part in self._slices(rows):
            chunk = np.full((len(part), max(len(row) for row in part)), ID_PADDING, dtype=np.int64)
            for r, row in enumerate(part):
                chunk[r, : len(row)] = row
            chunks.append(chunk)
        return _Plan(model_names(self.model)["ids_ensemble"], IDS_INPUT_NAME, "INT64", chunks, order)

    def _length_order(self, lengths: list[int]) -> np.ndarray | None:
        # When the inputs need several requests, similar lengths go together: the server pads each
        # request to its longest input, so mixing lengths would cost padding tokens.
        assert self.max_batch_size is not None
        return np.argsort(np.array(lengths), kind="stable") if len(lengths) > self.max_batch_size else None

    def _chunked(self, items: Sequence[object]) -> bool:
        """Whether `items` take more than one request (only then does sorting them by length pay)."""
        assert self.max_batch_size is not None
        return len(items) > self.max_batch_size

    def _slices(self, items: list[T]) -> Iterator[list[T]]:
        assert self.max_batch_size is not None
        for start in range(0, len(items), self.max_batch_size):
            yield items[start : start + self.max_batch_size]

    def infer_call(self, transport: Transport, plan: _Plan, chunk: np.ndarray) -> Callable[[], Any]:
        """The (retryable) inference call for one chunk of a plan."""
        wire = grpc_inference if self.protocol == "grpc" else http_inference
        message = wire.infer_request(plan.model, plan.input_name, plan.datatype, chunk, plan.outputs)
        return lambda: transport.infer_message(message)

    def parse(self, result: Any, rows: int) -> _Part:
        facts = self.require_facts()
        vectors = result.as_numpy("EMBEDDING")
        counts = result.as_numpy("TOKEN_COUNT")
        full = result.as_numpy("FULL_TOKEN_COUNT")
        if vectors is None or counts is None or full is None:
            raise ServerError(f"model {self.model!r} did not return {', '.join(OUTPUT_NAMES)}")
        vectors = np.asarray(vectors, dtype=np.float32)
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        full = np.asarray(full, dtype=np.int64).reshape(-1)
        if vectors.shape != (rows, facts.dim) or not len(counts) == len(full) == rows:
            raise ServerError(
                f"model {self.model!r} answered EMBEDDING {list(vectors.shape)} for {rows} texts of dim {facts.dim}"
            )
        return vectors, counts, full

    def assemble(self, plan: _Plan, parts: list[_Part], *, truncate: bool) -> EmbeddingResult:
        """One result in the caller's order from the answers to `plan.chunks` (InputTooLong for the
        first input over the window when `truncate` is False)."""
        facts = self.require_facts()
        if not parts:
            return self.empty()
        columns = [np.concatenate([part[k] for part in parts]) for k in range(3)]
        if plan.order is not None:
            columns = [_unsorted(column, plan.order) for column in columns]
        result = EmbeddingResult(vectors=columns[0], token_counts=columns[1], full_token_counts=columns[2])
        if not truncate:
            over = np.flatnonzero(result.full_token_counts > facts.max_tokens)
            if len(over):
                index = int(over[0])
                raise InputTooLong(index, int(result.full_token_counts[index]), facts.max_tokens)
        return result

    def empty(self) -> EmbeddingResult:
        dim = self.require_facts().dim
        return EmbeddingResult(
            np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        )

    # -- retries ---------------------------------------------------------------------------
    def delays(self) -> Iterator[float | None]:
        """Before each retry a jittered exponential delay; None after the last attempt."""
        for attempt in range(self.retries):
            yield self.backoff_s * (2**attempt) * random.uniform(0.5, 1.5)
        yield None

    def failure(self, exc: Exception, delay: float | None) -> EmbeddingError | None:
        """The error to raise for `exc`, or None when the call should be retried after `delay`."""
        error = from_triton_exception(exc)
        if delay is None or not _retryable(error):
            return error
        return None


class _ClientBase:
    """Settings and the model's facts, common to both clients."""

    _transport: Transport

    def __init__(
        self,
        url: str,
        protocol: TransportProtocol = "grpc",
        model: str | None = None,
        *,
        timeout_s: float = 30.0,
        max_concurrency: int = 4,
        retries: int = 3,
        backoff_s: float = 0.05,
    ) -> None:
        self._core = _ClientCore(
            url, protocol, model,
            timeout_s=timeout_s, max_concurrency=max_concurrency, retries=retries, backoff_s=backoff_s,
        )  # fmt: skip
        self._setup()

    def _setup(self) -> None:
        """The transport and whatever else the sync or async client needs."""
        raise NotImplementedError

    def _resolved(self) -> _ClientCore:
        raise NotImplementedError

    @property
    def facts(self) -> ModelFacts:
        """The served model's facts, read from its config parameters."""
        facts = self._resolved().facts
        assert facts is not None
        return facts

    @property
    def max_batch_size(self) -> int:
        """Texts per request (the ensemble's max_batch_size)."""
        size = self._resolved().max_batch_size
        assert size is not None
        return size

    @property
    def model(self) -> str:
        """The served ensemble's name."""
        model = self._resolved().model
        assert model is not None
        return model


class EmbeddingClient(_ClientBase):
    """Embeds texts with a served ensemble; thread-safe, requests sent concurrently from a pool.

    `timeout_s` bounds each call to the server (a retried call gets it anew); ServerUnavailable and
    Overloaded are retried `retries` times with jittered exponential backoff from `backoff_s`.
    """

    def _setup(self) -> None:
        self._transport = self._core.sync_transport()
        self._executor: ThreadPoolExecutor | None = None
        self._connect_lock = threading.Lock()
        self._executor_lock = threading.Lock()

    def _resolved(self) -> _ClientCore:
        self.connect()
        return self._core

    # -- model -------------------------------------------------------------------------------
    def connect(self) -> ModelFacts:
        """Read the model's facts from the server (once); raises ModelNotFound, ServerUnavailable..."""
        core = self._core
        if core.facts is not None:
            return core.facts
        with self._connect_lock:
            if core.facts is None:
                if core.requested_model is not None:
                    name = core.requested_model
                    core.adopt({name: core.config_dict(self._call(lambda: self._transport.model_config(name)))})
                else:
                    core.adopt(*self._configs())
        return core.require_facts()

    def list_models(self) -> dict[str, ModelFacts]:
        """The text embedding ensembles the server serves, with their facts."""
        return embedding_models(self._configs()[0])

    def _configs(self) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
        """({name: config, None where it could not be read}, names not ready) of the repository."""
        names, not_ready = self._core.index_names(self._call(self._transport.repository_index))
        return {name: self._optional_config(name) for name in names}, not_ready

    def _optional_config(self, name: str) -> dict[str, Any] | None:
        try:
            return self._core.config_dict(self._call(lambda: self._transport.model_config(name)))
        except (ModelNotFound, ModelNotReady):
            return None

    def is_ready(self) -> bool:
        """Whether the server answers and the model is ready; never raises."""
        try:
            self.connect()
            model = self._core.model
            assert model is not None
            return bool(self._call(lambda: self._transport.model_ready(model), retry=False))
        except EmbeddingError:
            return False

    # -- embedding ---------------------------------------------------------------------------
    def embed(self, texts: str | Iterable[str], *, query: bool = False, truncate: bool = True) -> np.ndarray:
        """float32 [n, dim] embeddings in input order (a single str gives [1, dim])."""
        return self.embed_with_usage(texts, query=query, truncate=truncate).vectors

    def embed_with_usage(
        self, texts: str | Iterable[str], *, query: bool = False, truncate: bool = True
    ) -> EmbeddingResult:
        """Embeddings and token counts; `query` prepends the model's query instruction."""
        items = as_text_list(texts)
        self.connect()
        return self._run(self._core.text_plan(items, query=query), truncate=truncate)

    def embed_token_ids(
        self, ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray, *, truncate: bool = True
    ) -> EmbeddingResult:
        """Embeddings of already tokenized inputs (through the `<name>-ids` ensemble)."""
        rows = as_id_rows(ids)
        self.connect()
        return self._run(self._core.ids_plan(rows), truncate=truncate)

    def embed_m3(
        self, texts: str | Iterable[str], *, modes: Sequence[Mode] = MODES, query: bool = False
    ) -> M3Vectors:
        """bge-m3's dense, sparse and/or ColBERT vectors of the texts, from one encoder pass."""
        items = as_text_list(texts)
        self.connect()
        plan = self._core.m3_plan(items, modes, query=query)

        def infer(chunk: np.ndarray) -> M3Vectors:
            result = self._call(self._core.infer_call(self._transport, plan, chunk))
            return self._core.parse_m3(result, len(chunk), modes)

        return self._core.assemble_m3(plan, self._map(infer, plan.chunks), modes)

    def embed_sparse(self, texts: str | Iterable[str], *, query: bool = False) -> list[dict[int, float]]:
        """Per text {token id: weight} (bge-m3's lexical weights, special tokens removed)."""
        sparse = self.embed_m3(texts, modes=("sparse",), query=query).sparse
        assert sparse is not None
        return sparse

    def embed_colbert(self, texts: str | Iterable[str], *, query: bool = False) -> list[np.ndarray]:
        """Per text float32 [tokens - 1, dim] unit vectors (bge-m3's ColBERT vectors)."""
        colbert = self.embed_m3(texts, modes=("colbert",), query=query).colbert
        assert colbert is not None
        return colbert

    def score(
        self, query: str, passages: str | Iterable[str], *, weights: M3Weights | None = None
    ) -> list[PassageScores]:
        """Dense, sparse, ColBERT and hybrid relevance of each passage to the query (bge-m3)."""
        q = self.embed_m3([query], query=True)
        p = self.embed_m3(passages)
        return score_passages(q, p, weights)

    def tokenize(
        self, texts: str | Iterable[str], *, query: bool = False, add_special_tokens: bool = True
    ) -> list[TokenizedText]:
        """Every token of each text, not truncated (`<name>-tokenize`), with the model's query (or passage)
        instruction in front as `embed` sends it; offsets index `TokenizedText.text`, the prefixed text."""
        items = as_text_list(texts)
        self.connect()
        core = self._core
        plan = core.tokenize_plan(items, query=query)

        def infer(chunk: np.ndarray) -> list[TokenizedText]:
            call = core.tokenize_call(self._transport, plan, chunk, add_special_tokens=add_special_tokens)
            try:
                result = self._call(call)
            except EmbeddingError as exc:
                raise core.tokenize_failure(exc, plan) from exc
            return core.parse_tokens(result, chunk)

        return core.assemble_tokens(plan, self._map(infer, plan.chunks))

    def _run(self, plan: _Plan, *, truncate: bool) -> EmbeddingResult:
        def infer(chunk: np.ndarray) -> _Part:
            return self._core.parse(self._call(self._core.infer_call(self._transport, plan, chunk)), len(chunk))

        return self._core.assemble(plan, self._map(infer, plan.chunks), truncate=truncate)

    def _map(self, fn: Callable[[np.ndarray], T], chunks: list[np.ndarray]) -> list[T]:
        if len(chunks) <= 1 or self._core.max_concurrency == 1:
            return [fn(chunk) for chunk in chunks]
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._core.max_concurrency, thread_name_prefix="embedding-client")
            executor = self._executor
        futures: list[Future[T]] = [executor.submit(fn, chunk) for chunk in chunks]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()

    def _call(self, fn: Callable[[], T], *, retry: bool = True) -> T:
        for delay in self._core.delays() if retry else iter([None]):
            try:
                return fn()
            except Exception as exc:
                error = self._core.failure(exc, delay)
                if error is not None:
                    raise error from exc
            time.sleep(delay or 0.0)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._executor_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._transport.close()

    def __enter__(self) -> EmbeddingClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# Connections being closed in the background (kept here so that the tasks are not collected before they ran).
_CLOSING: set[asyncio.Future[Any]] = set()


class AsyncEmbeddingClient(_ClientBase):
    """`EmbeddingClient` for asyncio: the same API as coroutines, requests bounded by a semaphore.

    `facts`, `max_batch_size` and `model` are known after `await client.connect()` (which any
    embed call does first). Use a client within one event loop.
    """

    def _setup(self) -> None:
        self._transport = self._core.async_transport()
        self._semaphore: asyncio.Semaphore | None = None
        self._connecting: asyncio.Lock | None = None

    def _resolved(self) -> _ClientCore:
        self._core.require_facts()
        return self._core

    # -- model -------------------------------------------------------------------------------
    async def connect(self) -> ModelFacts:
        core = self._core
        if core.facts is not None:
            return core.facts
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if core.facts is None:
                if core.requested_model is not None:
                    name = core.requested_model
                    config = core.config_dict(await self._call(lambda: self._transport.model_config(name)))
                    core.adopt({name: config})
                else:
                    core.adopt(*await self._configs())
        return core.require_facts()

    async def list_models(self) -> dict[str, ModelFacts]:
        return embedding_models((await self._configs())[0])

    async def _configs(self) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
        names, not_ready = self._core.index_names(await self._call(self._transport.repository_index))
        configs = await asyncio.gather(*(self._optional_config(name) for name in names))
        return dict(zip(names, configs, strict=True)), not_ready

    async def _optional_config(self, name: str) -> dict[str, Any] | None:
        try:
            return self._core.config_dict(await self._call(lambda: self._transport.model_config(name)))
        except (ModelNotFound, ModelNotReady):
            return None

    async def is_ready(self) -> bool:
        """Whether the model is READY, asked through the embedding calls' own sender: over HTTP on a new
        connection, which a Triton shutting down leaves unanswered while it still answers READY on kept-alive
        ones. A failed check drops the kept-alive connections, so that such a Triton can finish (it waits for
        them until its exit timeout) and the next call finds out where Triton is now."""
        try:
            await self.connect()
            model = self._core.model
            assert model is not None
            return bool(await self._call(lambda: self._transport.sender().model_ready(model), retry=False))
        except EmbeddingError:
            await asyncio.gather(*self._transport.drop_connections(), return_exceptions=True)
            return False
        except asyncio.CancelledError:  # the caller's deadline (the proxy's /ready) passed first
            closing = asyncio.ensure_future(asyncio.gather(*self._transport.drop_connections(), return_exceptions=True))
            _CLOSING.add(closing)
            closing.add_done_callback(_CLOSING.discard)
            raise

    # -- embedding ---------------------------------------------------------------------------
    async def embed(self, texts: str | Iterable[str], *, query: bool = False, truncate: bool = True) -> np.ndarray:
        return (await self.embed_with_usage(texts, query=query, truncate=truncate)).vectors

    async def embed_with_usage(
        self, texts: str | Iterable[str], *, query: bool = False, truncate: bool = True
    ) -> EmbeddingResult:
        items = as_text_list(texts)
        await self.connect()
        return await self._run(self._core.text_plan(items, query=query), truncate=truncate)

    async def embed_token_ids(
        self, ids: Sequence[int] | Sequence[Sequence[int]] | np.ndarray, *, truncate: bool = True
    ) -> EmbeddingResult:
        rows = as_id_rows(ids)
        await self.connect()
        return await self._run(self._core.ids_plan(rows), truncate=truncate)

    async def embed_m3(
        self, texts: str | Iterable[str], *, modes: Sequence[Mode] = MODES, query: bool = False
    ) -> M3Vectors:
        items = as_text_list(texts)
        await self.connect()
        plan = self._core.m3_plan(items, modes, query=query)

        async def infer(chunk: np.ndarray) -> M3Vectors:
            result = await self._call(self._core.infer_call(self._transport, plan, chunk))
            return self._core.parse_m3(result, len(chunk), modes)

        return self._core.assemble_m3(plan, await self._map(infer, plan.chunks), modes)

    async def embed_sparse(self, texts: str | Iterable[str], *, query: bool = False) -> list[dict[int, float]]:
        sparse = (await self.embed_m3(texts, modes=("sparse",), query=query)).sparse
        assert sparse is not None
        return sparse

    async def embed_colbert(self, texts: str | Iterable[str], *, query: bool = False) -> list[np.ndarray]:
        colbert = (await self.embed_m3(texts, modes=("colbert",), query=query)).colbert
        assert colbert is not None
        return colbert

    async def score(
        self, query: str, passages: str | Iterable[str], *, weights: M3Weights | None = None
    ) -> list[PassageScores]:
        q, p = await asyncio.gather(self.embed_m3([query], query=True), self.embed_m3(passages))
        return score_passages(q, p, weights)

    async def tokenize(
        self, texts: str | Iterable[str], *, query: bool = False, add_special_tokens: bool = True
    ) -> list[TokenizedText]:
        items = as_text_list(texts)
        await self.connect()
        core = self._core
        plan = core.tokenize_plan(items, query=query)

        async def infer(chunk: np.ndarray) -> list[TokenizedText]:
            call = core.tokenize_call(self._transport, plan, chunk, add_special_tokens=add_special_tokens)
            try:
                result = await self._call(call)
            except EmbeddingError as exc:
                raise core.tokenize_failure(exc, plan) from exc
            return core.parse_tokens(result, chunk)

        return core.assemble_tokens(plan, await self._map(infer, plan.chunks))

    async def infer_tensors(
        self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """One request to any model of this export (`model`), numpy in and out (bytes arrays as BYTES), with
        the client's retries and concurrency bound; what `/embed_all` calls the tokenizer and encoder with."""
        await self.connect()
        module = self._core.module
        tensors = []
        for name, array in inputs.items():
            datatype = "BYTES" if array.dtype == np.object_ else module.np_to_triton_dtype(array.dtype)
            tensor = module.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = [module.InferRequestedOutput(name) for name in outputs]
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._core.max_concurrency)
        async with self._semaphore:
            result = await self._call(lambda: self._transport.infer(model, tensors, requested))
        answered = {name: result.as_numpy(name) for name in outputs}
        missing = [name for name, value in answered.items() if value is None]
        if missing:
            raise ServerError(f"model {model!r} did not return {', '.join(missing)}")
        return {name: np.asarray(value) for name, value in answered.items()}

    async def _run(self, plan: _Plan, *, truncate: bool) -> EmbeddingResult:
        async def infer(chunk: np.ndarray) -> _Part:
            result = await self._call(self._core.infer_call(self._transport, plan, chunk))
            return self._core.parse(result, len(chunk))

        return self._core.assemble(plan, await self._map(infer, plan.chunks), truncate=truncate)

    async def _map(self, fn: Callable[[np.ndarray], Awaitable[T]], chunks: list[np.ndarray]) -> list[T]:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self._core.max_concurrency)
        semaphore = self._semaphore

        async def bounded(chunk: np.ndarray) -> T:
            async with semaphore:
                return await fn(chunk)

        return await gather_or_cancel([bounded(chunk) for chunk in chunks])

    async def _call(self, fn: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        for delay in self._core.delays() if retry else iter([None]):
            try:
                return await fn()
            except Exception as exc:
                error = self._core.failure(exc, delay)
                if error is not None:
                    raise error from exc
            await asyncio.sleep(delay or 0.0)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- lifecycle -------------------------------------------------------------------------
    async def close(self) -> None:
        for closing in self._transport.close():
            if inspect.isawaitable(closing):
                await closing

    async def __aenter__(self) -> AsyncEmbeddingClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def list_models(
    url: str, protocol: TransportProtocol = "grpc", *, timeout_s: float = 30.0, retries: int = 3
) -> dict[str, ModelFacts]:
    """The text embedding ensembles a Triton server serves, with their facts."""
    with EmbeddingClient(url, protocol, timeout_s=timeout_s, retries=retries) as client:
        return client.list_models()


async def list_models_async(
    url: str, protocol: TransportProtocol = "grpc", *, timeout_s: float = 30.0, retries: int = 3
) -> dict[str, ModelFacts]:
    """`list_models` for asyncio."""
    async with AsyncEmbeddingClient(url, protocol, timeout_s=timeout_s, retries=retries) as client:
        return await client.list_models()
