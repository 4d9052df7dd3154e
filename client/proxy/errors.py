"""The one place where failures become HTTP statuses and OpenAI error JSON."""

from __future__ import annotations

import http
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    EmbeddingError,
    InputTooLong,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RequestTimeout,
    ServerError,
    ServerUnavailable,
)
from .schemas import error_body
from .tei_errors import tei_error_response

# status -> OpenAI error `type`
log = logging.getLogger("bge_triton.proxy")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
    504: "timeout_error",
}
RETRY_AFTER_STATUSES = (429, 503)
# client-library error -> OpenAI error `code` (snake_case, as every code the proxy sends; the most specific
# class first: InputTooLong is an InvalidInput)
EMBEDDING_ERROR_CODES: dict[type[EmbeddingError], str] = {
    InputTooLong: "context_length_exceeded",
    InvalidInput: "invalid_input",
    ModelNotFound: "model_not_found",
    ModelNotReady: "model_not_ready",
    ServerUnavailable: "triton_unavailable",
    RequestTimeout: "triton_timeout",
    Overloaded: "overloaded",
    ServerError: "triton_error",
}


class ProxyError(Exception):
    """An answer that is an error: status, message and the OpenAI error fields."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def error_response(
    status: int, message: str, *, param: str | None = None, code: str | None = None, retry_after_s: int = 1
) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if status in RETRY_AFTER_STATUSES else None
    error_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = error_body(encodable(message), error_type, None if param is None else encodable(param), code)
    return JSONResponse(status_code=status, content=body, headers=headers)


def encodable(text: str) -> str:
    """`text` with what UTF-8 cannot encode (lone surrogates a client sent, echoed in a message) as `\\udxxx`."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def from_embedding_error(exc: EmbeddingError) -> ProxyError:
    """Client-library errors (Triton's answers) as proxy errors."""
    code = embedding_error_code(exc)
    if isinstance(exc, InputTooLong):
        return ProxyError(400, exc.message, param="input", code=code)
    if isinstance(exc, ModelNotFound):
        return ProxyError(404, exc.message, param="model", code=code)
    if isinstance(exc, Overloaded):
        return ProxyError(429, exc.message, code=code)
    status = exc.status if exc.status in ERROR_TYPES else 500
    if status == 500:  # what Triton said, for whoever reads the log of a 500
        log.warning("Triton error answered 500: %s: %s", type(exc).__name__, exc.message)
    return ProxyError(status, exc.message, code=code)


def embedding_error_code(exc: EmbeddingError) -> str:
    """The snake_case `code` of a client-library error (its class's, or its nearest base class's)."""
    for cls in type(exc).__mro__:
        if cls in EMBEDDING_ERROR_CODES:
            return EMBEDDING_ERROR_CODES[cls]
    return "triton_error"


def http_status_code(status: int) -> str:
    """A snake_case `code` for an HTTP error the framework raised (404 -> not_found, 405 -> method_not_allowed)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        return "http_error"
    return re.sub(r"[^a-z]+", "_", phrase.lower()).strip("_")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    # Union members show up as loc parts like "str" / "list[str]": keep only real field names.
    fields = [p for p in loc if not any(c in p for c in "[]") and p not in {"str", "int", "function-after"}]
    param = ".".join(fields) or None
    if first.get("type") == "json_invalid":
        return f"request body is not valid JSON: {first.get('msg', '')}", None
    if param and param.split(".")[0] == "input":
        return (
            "'input' must be a non-empty string, an array of strings, an array of token ids (integers) "
            "or an array of token-id arrays",
            "input",
        )
    return f"{param or 'body'}: {first.get('msg', 'invalid value')}", param


def install_error_handlers(app: FastAPI, retry_after_s: int) -> None:
    """OpenAI error JSON, except on the paths in `app.state.tei_paths` (TEI's routes): TEI's own shape there."""
    app.state.tei_paths = set()

    def answer(
        request: Request, status: int, message: str, *, param: str | None = None, code: str | None
    ) -> JSONResponse:
        if request.scope.get("path") in request.app.state.tei_paths:
            return tei_error_response(status, message, code, retry_after_s)
        return error_response(status, message, param=param, code=code, retry_after_s=retry_after_s)

    @app.exception_handler(ProxyError)
    async def _proxy_error(request: Request, exc: ProxyError) -> JSONResponse:
        return answer(request, exc.status, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(EmbeddingError)
    async def _embedding_error(request: Request, exc: EmbeddingError) -> JSONResponse:
        err = from_embedding_error(exc)
        return answer(request, err.status, err.message, param=err.param, code=err.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return answer(request, 400, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return answer(request, exc.status_code, str(exc.detail), code=http_status_code(exc.status_code))

    # any other exception: answered 500, logged and counted once by access_log.AccessLog
