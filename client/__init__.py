"""Clients of the served models (tritonclient library and the OpenAI-compatible proxy)."""

from .errors import (
    EmbeddingError,
    InputTooLong,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
    from_triton_exception,
)
from .long_texts import LongResult, TextChunks, embed_long, embed_long_async
from .rerank_client import AsyncRerankClient, RankedDocument, RerankClient, RerankScores
from .triton_client import (
    AsyncEmbeddingClient,
    EmbeddingClient,
    EmbeddingResult,
    TokenizedText,
    as_id_rows,
    as_text_list,
    instruction,
    list_models,
    list_models_async,
    with_instruction,
)

__all__ = [
    "AsyncEmbeddingClient",
    "AsyncRerankClient",
    "EmbeddingClient",
    "EmbeddingError",
    "EmbeddingResult",
    "InputTooLong",
    "InvalidInput",
    "LongResult",
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "RankedDocument",
    "RequestTimeout",
    "RerankClient",
    "RerankScores",
    "ServerError",
    "ServerUnavailable",
    "TextChunks",
    "TokenizedText",
    "as_id_rows",
    "as_text_list",
    "embed_long",
    "embed_long_async",
    "from_triton_exception",
    "instruction",
    "list_models",
    "list_models_async",
    "with_instruction",
]
