"""Optional API keys: `Authorization: Bearer <key>` checked in constant time.

Without keys configured every request is let through with any key (OpenAI-SDK users of local
servers send `EMPTY`). `/health` and `/ready` stay open for load balancers and orchestrators;
`/metrics` is open unless `protect_metrics` is set; the web page's static files (`GET /ui`, `/ui/...`) are open,
and the page asks for the key and sends it with each API call. Keys are never logged.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

OPEN_PATHS = frozenset({"/health", "/ready"})
UI_PATH = "/ui"  # the web page's static files: open, the page sends the user's key with its API calls
KEYS_ENV = "BGE_TRITON_API_KEYS"  # comma-separated


def load_api_keys(keys: list[str], key_file: Path | None) -> tuple[str, ...]:
    """Keys from --api-key flags, a key file (one per line, # comments) and $BGE_TRITON_API_KEYS."""
    found = [k.strip() for k in keys]
    if key_file is not None:
        for line in Path(key_file).read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                found.append(line)
    found += [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",")]
    return tuple(dict.fromkeys(k for k in found if k))


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers") or []:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class ApiKeys:
    """The configured keys, and whether a request's `Authorization` carries one of them."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = [k.encode("utf-8") for k in keys]

    def admit(self, scope: Scope) -> bool:
        """True without keys configured, or when the request's bearer token is one of the keys."""
        return not self.keys or self.allowed(_bearer(scope))

    def allowed(self, token: bytes | None) -> bool:
        if token is None:
            return False
        # compare against every key, no early exit: the time does not depend on which key matched
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        return any(matches)


class ApiKeyAuth:
    """ASGI middleware: 401 in OpenAI error JSON for a missing or wrong key."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], protect_metrics: bool):
        self.app = app
        self.keys = ApiKeys(keys)
        self.protect_metrics = protect_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        exempt = (
            path in OPEN_PATHS
            or (path == "/metrics" and not self.protect_metrics)
            or (scope.get("method") in ("GET", "HEAD") and (path == UI_PATH or path.startswith(UI_PATH + "/")))
        )
        if scope["type"] != "http" or exempt or self.keys.admit(scope):
            await self.app(scope, receive, send)
            return
        message = (
            "missing API key: send 'Authorization: Bearer <key>'"
            if _bearer(scope) is None
            else "incorrect API key provided"
        )
        response = error_response(401, message, code="invalid_api_key")
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)
