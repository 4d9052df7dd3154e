"""One access-log line and one count per answer, whatever its status, and the 500 for an unexpected error.

Outermost of the proxy's middleware: it sees the 401s of the key check and the 413/408s of the body limits as
well as the routes' answers. An exception no handler took becomes one 500 in OpenAI error JSON, logged once
with its traceback, and counted like every other answer (it no longer escapes to Starlette and uvicorn, which
each logged it again and left it out of the metrics). Metrics are labelled by route template
(`/v1/models/{model_id:path}`), and every path no route serves shares the label `unmatched`, so random paths
cannot grow the label set.
"""

from __future__ import annotations

import logging
import time

from starlette.routing import Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ERROR_TYPES, error_response
from .metrics import ProxyMetrics

log = logging.getLogger("bge_triton.proxy")
UNMATCHED = "unmatched"  # the endpoint label of every path no route serves (404s of random paths)


def route_label(router: Router, scope: Scope) -> str:
    """The template of the route serving `scope` (its 405 route when only the method differs), else UNMATCHED."""
    served = scope.get("route")  # FastAPI puts the route it matched in the scope: no second matching
    if served is not None and getattr(served, "path", None):
        return str(served.path)
    partial = None
    for route in router.routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", UNMATCHED))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", UNMATCHED))
    return partial or UNMATCHED


def printable(path: str) -> str:
    """A request path fit for one log line (control characters escaped)."""
    return path if path.isprintable() else path.encode("unicode_escape").decode("ascii")


class AccessLog:
    """ASGI middleware: per answer one INFO line and the request / latency / error metrics."""

    def __init__(self, app: ASGIApp, router: Router, metrics: ProxyMetrics):
        self.app = app
        self.router = router
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception as exc:  # the one place an unexpected error is answered and logged
            log.exception("unexpected error in %s %s: %s", scope.get("method"), printable(scope.get("path", "")), exc)
            if status is None:
                response = error_response(500, "internal error in the proxy; see its log", code="internal_error")
                await response(scope, receive, recording_send)
            status = 500
        self.record(scope, status or 500, time.perf_counter() - started)

    def record(self, scope: Scope, status: int, elapsed: float) -> None:
        state = scope.get("state") or {}
        model = str(state.get("model", ""))
        endpoint = route_label(self.router, scope)
        self.metrics.requests.labels(endpoint, model, str(status)).inc()
        self.metrics.latency.labels(endpoint, model, str(status)).observe(elapsed)
        if status >= 400:
            self.metrics.errors.labels(ERROR_TYPES.get(status, "server_error")).inc()
        log.info(
            "%s %s model=%s inputs=%s tokens=%s status=%d %.1fms",
            scope.get("method"), printable(scope.get("path", "")), model or "-", state.get("inputs", "-"),
            state.get("tokens", "-"), status, elapsed * 1000,
        )  # fmt: skip
