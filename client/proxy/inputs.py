"""The checks every embedding endpoint makes on its inputs, with OpenAI's error messages."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ProxyError

MAX_TOKEN_ID = 2**63 - 1  # Triton's INT64 ids: a larger integer is no token of any vocabulary


def normalise_input(value: object, max_inputs: int) -> tuple[str, list]:
    """("text", [str, ...]) or ("ids", [[int, ...], ...]) after OpenAI's own checks."""
    if isinstance(value, str):
        items: list = [value]
        kind = "text"
    elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        items, kind = [value], "ids"
    elif isinstance(value, list) and value and all(isinstance(v, list) for v in value):
        items, kind = value, "ids"
    else:
        items, kind = list(value), "text"  # type: ignore[call-overload]
    if not items:
        raise ProxyError(400, "'input' must not be empty", param="input", code="invalid_value")
    if len(items) > max_inputs:
        raise ProxyError(400, f"'input' has {len(items)} items; at most {max_inputs} per request",
                         param="input", code="too_many_inputs")  # fmt: skip
    for index, item in enumerate(items):
        if len(item) == 0:
            what = "string" if kind == "text" else "token array"
            raise ProxyError(400, f"input {index} is an empty {what}", param="input", code="invalid_value")
        if kind == "ids" and min(item) < 0:
            raise ProxyError(400, f"input {index} holds a negative token id", param="input", code="invalid_value")
        if kind == "ids" and max(item) > MAX_TOKEN_ID:
            raise ProxyError(400, f"input {index} holds {max(item)}, which is no token id (ids are below 2**63)",
                             param="input", code="invalid_token_id")  # fmt: skip
    return kind, items


def normalise_texts(value: object, max_inputs: int, *, param: str = "input") -> list[str]:
    """A string or a list of strings (no token ids), checked like `input`."""
    kind, items = normalise_input(value, max_inputs)
    if kind != "text":
        raise ProxyError(400, f"'{param}' must be a string or an array of strings", param=param, code="invalid_type")
    return items


def check_request_size(items: Sequence[Sequence[object]], max_chars: int, *, param: str = "input") -> int:
    """The request's characters (a token id counts as one); 413 `request_too_large` over `max_chars`, before any
    of it reaches Triton. Returns the count."""
    total = sum(len(item) for item in items)
    if total > max_chars:
        raise ProxyError(
            413, f"'{param}' holds {total} characters in all; at most {max_chars} per request "
            "(--max-request-chars): split it into several requests", param=param, code="request_too_large",
        )  # fmt: skip
    return total
