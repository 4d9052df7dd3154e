"""Typed errors of the embedding clients, each with the HTTP status a proxy would answer with.

`from_triton_exception` turns what tritonclient (gRPC or HTTP, sync or asyncio) and the network
layers under it raise into one of these, keeping the server's own message.
"""

from __future__ import annotations

import asyncio
import http.client
import re

from tritonclient.utils import InferenceServerException


class EmbeddingError(Exception):
    """Base class: `status` is the HTTP status that describes the failure."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status})"


class ModelNotFound(EmbeddingError):
    """The server has no such model (or none that carries model facts)."""

    status = 404


class ModelNotReady(EmbeddingError):
    """The model exists but is not loaded or not ready."""

    status = 503


class ServerUnavailable(EmbeddingError):
    """The server cannot be reached, or it refuses connections."""

    status = 503


class InvalidInput(EmbeddingError):
    """The request is malformed: not text, not UTF-8 encodable, rejected by the server."""

    status = 400


class InputTooLong(InvalidInput):
    """An input exceeds the model's token window and truncation was not allowed."""

    status = 400

    def __init__(self, index: int, tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"input {index} has {tokens} tokens, more than the model's maximum of {max_tokens} "
            "(pass truncate=True to embed its first tokens only)"
        )
        self.index = index
        self.tokens = tokens
        self.max_tokens = max_tokens


class RequestTimeout(EmbeddingError):
    """The request did not complete within the client's timeout."""

    status = 504


class Overloaded(EmbeddingError):
    """The server rejected the request because its queue is full; retry later."""

    status = 429


class ServerError(EmbeddingError):
    """Any other failure on the server's side."""

    status = 500


# Message patterns first (they are the same for gRPC and HTTP), then the status code.
_MESSAGE_PATTERNS: tuple[tuple[re.Pattern[str], type[EmbeddingError]], ...] = (
    # Triton's dynamic batcher: a full queue, or a request that waited past the queue's timeout.
    (
        re.compile(r"exceeds maximum queue size|queue is full|too many requests|request timeout expired", re.I),
        Overloaded,
    ),
    # Before "unknown model": Triton says "Request for unknown model: 'x' has no available versions".
    (re.compile(r"model.*(is not ready|has no available versions)|unavailable model", re.I), ModelNotReady),
    # A Python-backend stub that died: its model cannot answer until it is restarted (the supervisor does).
    (re.compile(r"stub process .* is not healthy", re.I), ModelNotReady),
    # The server going away mid-request (a restart, a SIGKILL): the connection, not the request, failed.
    (
        re.compile(r"server is stopping|rst_stream|socket closed|stream removed|connection reset|goaway", re.I),
        ServerUnavailable,
    ),
    (re.compile(r"unknown model|model.*is not found", re.I), ModelNotFound),
    (re.compile(r"deadline exceeded|timed out", re.I), RequestTimeout),
    (re.compile(r"invalid input|invalid argument|unexpected shape|batch-size must be", re.I), InvalidInput),
)

_GRPC_CODES: dict[str, type[EmbeddingError]] = {
    "UNAVAILABLE": ServerUnavailable,
    "CANCELLED": ServerUnavailable,  # the server's side of the call went away (the proxy never cancels its own)
    "NOT_FOUND": ModelNotFound,
    "INVALID_ARGUMENT": InvalidInput,
    "OUT_OF_RANGE": InvalidInput,
    "FAILED_PRECONDITION": InvalidInput,
    "DEADLINE_EXCEEDED": RequestTimeout,
    "RESOURCE_EXHAUSTED": Overloaded,
}

_HTTP_CODES: dict[int, type[EmbeddingError]] = {
    400: InvalidInput,
    404: ModelNotFound,
    408: RequestTimeout,
    413: InvalidInput,
    422: InvalidInput,
    429: Overloaded,
    502: ServerUnavailable,
    503: ServerUnavailable,
    504: RequestTimeout,
}


def _by_message(message: str) -> type[EmbeddingError] | None:
    for pattern, cls in _MESSAGE_PATTERNS:
        if pattern.search(message):
            return cls
    return None


def _by_status(status: str | None) -> type[EmbeddingError] | None:
    if not status:
        return None
    code = status.rsplit(".", 1)[-1].strip().upper()  # "StatusCode.UNAVAILABLE" -> "UNAVAILABLE"
    if code in _GRPC_CODES:
        return _GRPC_CODES[code]
    if code.isdigit():
        number = int(code)
        if number in _HTTP_CODES:
            return _HTTP_CODES[number]
        if 400 <= number < 500:
            return InvalidInput
    return None


def _grpc_rpc_error(exc: BaseException) -> tuple[str, str] | None:
    """(code name, details) of a raw `grpc.RpcError`, if `exc` is one."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - grpcio comes with tritonclient[grpc]
        return None
    if not isinstance(exc, grpc.RpcError):
        return None
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    code_name = str(code()) if callable(code) else ""
    message = str(details()) if callable(details) else str(exc)
    return code_name, message


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return False
    return isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError)


def from_triton_exception(exc: BaseException) -> EmbeddingError:
    """Map a tritonclient / network exception to the matching `EmbeddingError`."""
    if isinstance(exc, EmbeddingError):
        return exc
    if isinstance(exc, InferenceServerException):
        message = str(exc.message() or exc)
        # The message is more specific than the code: Triton answers UNAVAILABLE / 503 both for a
        # full queue and for a model that is not ready.
        return (_by_message(message) or _by_status(exc.status()) or ServerError)(message)
    rpc = _grpc_rpc_error(exc)
    if rpc is not None:
        code, message = rpc
        return (_by_message(message) or _by_status(code) or ServerError)(message)
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return RequestTimeout(f"request timed out: {message}")
    if isinstance(exc, ConnectionError | OSError | http.client.HTTPException) or _is_aiohttp_connection_error(exc):
        return ServerUnavailable(f"server unavailable: {message}")
    return ServerError(f"{type(exc).__name__}: {message}")
