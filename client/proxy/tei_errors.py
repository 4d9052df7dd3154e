"""Errors on text-embeddings-inference's routes in TEI's own shape: `{"error": "...", "error_type": "..."}`.

TEI clients parse that body (and not OpenAI's `{"error": {"message", ...}}`). The statuses are TEI's
(router/src/http/server.rs, `From<&ErrorType> for StatusCode`): Empty 400, Validation and Tokenizer 422,
Overloaded 429, Backend 424, Unhealthy 503; `error_type` is the variant's name as serde writes it
("Validation"). Two statuses are kept from the proxy's own checks, as TEI's OpenAPI documents them: 413 for a
request over the size limits (`error_type` Validation) and 404 for a path that does not exist.
`errors.install_error_handlers` answers in this shape on the paths in `app.state.tei_paths`.
"""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse

TeiErrorType = Literal["Empty", "Validation", "Tokenizer", "Overloaded", "Backend", "Unhealthy"]
TEI_STATUS: dict[str, int] = {
    "Empty": 400,
    "Validation": 422,
    "Tokenizer": 422,
    "Overloaded": 429,
    "Backend": 424,
    "Unhealthy": 503,
}
# ProxyError codes whose TEI type is not the status's default
TEI_TYPES_BY_CODE: dict[str, TeiErrorType] = {"empty": "Empty", "tokenizer_error": "Tokenizer"}


def tei_error_type(status: int, code: str | None) -> TeiErrorType:
    """The TEI `error_type` of a proxy error (its status and snake_case code)."""
    if code in TEI_TYPES_BY_CODE:
        return TEI_TYPES_BY_CODE[code]
    if status == 429:
        return "Overloaded"
    if status == 503:
        return "Unhealthy"
    if status >= 500 or status == 424:
        return "Backend"
    return "Validation"


def tei_status(status: int, error_type: TeiErrorType) -> int:
    """TEI's status for `error_type`; 404 (no such path) and 413 (too large) stay as the proxy found them."""
    if status in (404, 405, 413) and error_type == "Validation":
        return status
    return TEI_STATUS[error_type]


def tei_error_response(status: int, message: str, code: str | None, retry_after_s: int) -> JSONResponse:
    error_type = tei_error_type(status, code)
    final = tei_status(status, error_type)
    headers = {"Retry-After": str(retry_after_s)} if final in (429, 503) else None
    text = message.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates a client sent
    return JSONResponse(status_code=final, content={"error": text, "error_type": error_type}, headers=headers)
