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
    "ModelNotFound",
    "ModelNotReady",
    "Overloaded",
    "RankedDocument",
    "RequestTimeout",
    "RerankClient",
    "RerankScores",
    "ServerError",
    "ServerUnavailable",
    "TokenizedText",
    "as_id_rows",
    "as_text_list",
    "from_triton_exception",
    "instruction",
    "list_models",
    "list_models_async",
    "with_instruction",
]
