"""A POST route that parses and validates its JSON body itself, for the hot path of `/v1/embeddings`.

FastAPI's request handling (dependency solving, the content-type parse, `json.loads` and then pydantic on the
result) cost ~0.33 ms of a single query's ~1.2 ms in the proxy's HTTP layers on 2 cores (issue 19,
docs/benchmarks.md). This route reads the body, validates it with pydantic's JSON parser in one step
(`model_validate_json`) and calls the same handler the FastAPI route calls. Everything else stays as it was:
the middlewares (access log, key check, body limits) wrap it, errors it raises go to the application's error
handlers, and any body it does not take (not JSON, or invalid) is replayed to the FastAPI route of the same path,
so a bad request gets exactly the answer it got before. The FastAPI route also keeps the OpenAPI schema.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

Handler = Callable[[Any, Request], Awaitable[Response]]


def is_json(content_type: bytes | None) -> bool:
    """Whether FastAPI parses a body with this Content-Type as JSON. Without one it depends on its
    `strict_content_type` setting: such a body is left to FastAPI."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition(b"/")
    return maintype == b"application" and (subtype == b"json" or subtype.endswith(b"+json"))


class DirectJsonRoute(Route):
    """POST `path`: a JSON body valid for `model` goes to `handle(body, request)`; any other to `fallback`."""

    def __init__(self, path: str, model: type[BaseModel], handle: Handler, fallback: BaseRoute) -> None:
        super().__init__(path, endpoint=self._serve, methods=["POST"], include_in_schema=False)
        self.app = self._serve  # a raw ASGI endpoint: Starlette would wrap a method as request -> response
        self.model = model
        self.handle_body = handle
        self.fallback = fallback

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self  # what FastAPI's routes put there (the access log's endpoint label)
        return match, child

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            body = await request.body()
        except Exception as exc:  # a client gone mid-body: FastAPI's own answer (the client will not read it)
            raise HTTPException(400, "There was an error parsing the body") from exc
        if body and is_json(_header(scope, b"content-type")):
            try:
                parsed = self.model.model_validate_json(body)
            except ValidationError:
                parsed = None
            if parsed is not None:
                response = await self.handle_body(parsed, request)
                await response(scope, receive, send)
                return
        await self._replay(scope, receive, send, body)

    async def _replay(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """The request, body included, to the FastAPI route (which answers invalid bodies as it always did)."""
        replayed = False

        async def receive_again() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        _, child = self.fallback.matches(scope)
        await self.fallback.handle({**scope, **child}, receive_again, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value)
    return None
