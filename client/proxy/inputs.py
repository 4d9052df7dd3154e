"""The checks every embedding endpoint makes on its inputs, with OpenAI's error messages."""

from __future__ import annotations

from .errors import ProxyError


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
    return kind, items


def normalise_texts(value: object, max_inputs: int, *, param: str = "input") -> list[str]:
    """A string or a list of strings (no token ids), checked like `input`."""
    kind, items = normalise_input(value, max_inputs)
    if kind != "text":
        raise ProxyError(400, f"'{param}' must be a string or an array of strings", param=param, code="invalid_type")
    return items
