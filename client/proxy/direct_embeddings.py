"""The direct way in for the common embeddings request: a JSON body, complete, valid, from an admitted key.

A single query's answer went through FastAPI's entry (its telemetry check), Starlette's middleware stack
(server errors, exceptions, FastAPI's exit stack), the proxy's three middlewares (access log, key check, body
limits), the router and Starlette's request-body stream before the handler saw its body: ~90 us of a ~250 us
request in the app on 2 cores, about twice that while the encoder computes beside it (issue 19,
docs/benchmarks.md). `DirectEmbeddings` answers `POST /v1/embeddings` (and `/embeddings`) from the application's
entry when every one of those layers would have passed the request through unchanged:

- the path and method are the route's, `Content-Type` is JSON and `Content-Length` is at most `--max-body-bytes`;
- the key check admits it (no keys configured, or the bearer token is one of them);
- FastAPI's OpenTelemetry instrumentation is off (it is when no tracer, meter or logger provider is set);
- the body arrives in one piece within `--body-timeout-s` and pydantic's JSON parser validates it in one step.

It then does what those layers do for such a request, with the same code: the access log line and metrics
(`AccessLog`), the handler the FastAPI route calls, the application's exception handlers for what the handler
raises, and the 408 of the body limits for a body that does not arrive. Every other request, and every body it
does not take, goes to the full stack with its body replayed, so it gets exactly the answer it got before; the
FastAPI route also keeps the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .access_log import AccessLog
from .auth import ApiKeys
from .body_limits import answer_and_close, too_slow
from .metrics import ProxyMetrics

Handler = Callable[[Any, Request], Awaitable[Response]]
BODY = "bge_triton.direct_body"  # the scope key that hands the validated body to the answer


def is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI parses a body with this Content-Type as JSON. Without one it depends on its
    `strict_content_type` setting: such a body is left to FastAPI."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition(b"/")
    return maintype == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


def replaying(message: Message, receive: Receive) -> Receive:
    """`receive` with `message`, already taken from it, handed out once more first."""
    replayed = False

    async def receive_again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return message
        return await receive()

    return receive_again


class DirectEmbeddings:
    """ASGI entry of the application `app`: the requests described above answered directly, any other passed to
    `stack` (the application's full middleware stack) unchanged."""

    def __init__(
        self,
        app: Any,
        stack: ASGIApp,
        routes: Mapping[str, BaseRoute],
        model: type[BaseModel],
        handle: Handler,
        *,
        keys: ApiKeys,
        max_body_bytes: int,
        body_timeout_s: float,
        metrics: ProxyMetrics,
        telemetry_enabled: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.stack = stack
        self.routes = dict(routes)  # path -> the FastAPI route serving it (access-log label, OpenAPI schema)
        self.model = model
        self.handle = handle
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.telemetry_enabled = telemetry_enabled
        self.logged_answer = AccessLog(self._answer, router=app.router, metrics=metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST" or not self._passes_the_stack(scope):
            await self.stack(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(loop.time() + self.body_timeout_s):
                message = await receive()
        except TimeoutError:  # what the body limits answer (nothing was taken from `receive`)
            scope["route"] = route
            scope[BODY] = None
            await self.logged_answer(scope, receive, send)
            return
        body = self._validated(message)
        if body is None:
            await self.stack(scope, replaying(message, receive), send)
            return
        scope["app"] = self.app  # as Starlette and the router set them: the error handlers and access log read them
        scope["route"] = route
        scope["endpoint"] = getattr(route, "endpoint", None)
        scope["path_params"] = {}
        scope[BODY] = body
        await self.logged_answer(scope, receive, send)

    def _passes_the_stack(self, scope: Scope) -> bool:
        """Whether the key check and the body limits let this request through untouched, and FastAPI adds no
        telemetry to it."""
        content_type = length = None
        for name, value in scope.get("headers") or ():
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
        return (
            is_json(content_type)
            and length is not None
            and length.isdigit()
            and int(length) <= self.max_body_bytes
            and self.keys.admit(scope)
            and not self.telemetry_enabled()
        )

    def _validated(self, message: Message) -> BaseModel | None:
        """The request model of a complete body in `message`, or None (more to come, a disconnect, invalid)."""
        if message["type"] != "http.request" or message.get("more_body", False):
            return None
        body = message.get("body", b"")
        if not body:
            return None
        try:
            return self.model.model_validate_json(body)
        except ValidationError:
            return None

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The handler's answer, or the application's exception handler's answer to what it raised (any other
        exception: the access log's 500)."""
        body = scope.pop(BODY)
        if body is None:
            await answer_and_close(scope, send, too_slow(self.body_timeout_s))
            return
        request = Request(scope, receive)
        try:
            response = await self.handle(body, request)
        except Exception as exc:
            handler = self._exception_handler(exc)
            if handler is None:
                raise
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)

    def _exception_handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The handler Starlette's exception middleware would pick: the nearest class in the exception's MRO below
        `Exception` (a handler of `Exception` itself belongs to the outer server-error middleware, which never
        sees what the access log answers 500)."""
        handlers = self.app.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                break
            if cls in handlers:
                return handlers[cls]
        return None
