"""Request bodies: at most `max_bytes`, arriving within `timeout_s` of the headers.

- over the size: 413 `body_too_large`, by `Content-Length` before anything is read, or as soon as a streamed
  (chunked) body passes the limit — answered here, not left to the framework, which turned it into a 400
  "error parsing the body";
- too slow (a `Content-Length` larger than what is sent, a client that stalls): 408 `body_timeout` once the
  body is not complete `timeout_s` after the request began, instead of a connection held with no answer.

Both answers carry `Connection: close` (the rest of the body is never read); whatever the app then tries to
send for the same request is dropped.
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

DISCONNECT: Message = {"type": "http.disconnect"}


def too_large(max_bytes: int) -> Response:
    return error_response(413, f"request body is larger than {max_bytes} bytes", code="body_too_large")


def too_slow(timeout_s: float) -> Response:
    return error_response(408, f"the request body did not arrive within {timeout_s:g} s", code="body_timeout")


class BodyLimits:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await answer_and_close(scope, send, too_large(self.max_bytes))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        seen = 0
        complete = False
        started = False
        answered = False

        async def answer_once(response: Response) -> bool:
            """Answer unless the app already began its own answer; True when this answer is the request's."""
            if not started:
                await answer_and_close(scope, send, response)
            return not started

        async def limited_receive() -> Message:
            nonlocal seen, complete, answered
            if answered:
                return DISCONNECT
            if complete:  # after the body: a disconnect listener, no deadline
                return await receive()
            try:
                message = await receive_by(receive, deadline, loop)
            except TimeoutError:
                answered = await answer_once(too_slow(self.timeout_s))
                return DISCONNECT
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    answered = await answer_once(too_large(self.max_bytes))
                    return DISCONNECT
                complete = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if answered:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


async def receive_by(receive: Receive, deadline: float, loop: asyncio.AbstractEventLoop) -> Message:
    """`receive()`, or TimeoutError at `deadline` (loop time). Python 3.11's `asyncio.timeout_at` waits in the
    calling task; `wait_for` (3.10) wraps the call in a task of its own, two more event-loop turns per message."""
    timeout_at = getattr(asyncio, "timeout_at", None)
    if timeout_at is None:  # Python 3.10
        return await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
    async with timeout_at(deadline):
        return await receive()


async def answer_and_close(scope: Scope, send: Send, response: Response) -> None:
    response.headers["Connection"] = "close"  # the rest of the body is never read
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return DISCONNECT
