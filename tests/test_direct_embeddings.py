"""client/proxy/direct_embeddings.py: the common embeddings request is answered from the application's entry,
every other request goes through the full stack, and both give byte for byte the answer the stack gives."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from prometheus_client import generate_latest

from bge_triton.client.errors import Overloaded
from bge_triton.client.proxy.app import ProxyApp, create_app
from bge_triton.client.proxy.direct_embeddings import is_json
from bge_triton.client.proxy.embedding_service import Embedded
from bge_triton.client.proxy.errors import ProxyError
from bge_triton.client.proxy.settings import ProxySettings

Answer = tuple[int, dict[str, str], bytes]
VALID = b'{"model": "e5", "input": ["hello", "world"]}'
JSON = [(b"content-type", b"application/json")]


def canned_app(**settings: Any) -> tuple[ProxyApp, list[str]]:
    """The proxy app with Triton replaced by fixed vectors, and the list of which way each request went."""
    app = create_app(ProxySettings(**settings))
    ways: list[str] = []

    async def embed(model: str, raw_input: object, *, state: Any = None, **_: Any) -> Embedded:
        state.model = model
        if model == "missing":
            raise ProxyError(404, "The model 'missing' does not exist", param="model", code="model_not_found")
        if model == "busy":
            raise Overloaded("Triton's queue is full")
        if model == "broken":
            raise RuntimeError("a bug")
        texts = [raw_input] if isinstance(raw_input, str) else list(raw_input)  # type: ignore[arg-type]
        vectors = np.array([[len(t), 1.0, -2.0] for t in texts], dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        state.tokens = 4 * len(texts)
        return Embedded(name=model, vectors=vectors, tokens=state.tokens, inputs=len(texts))

    app.state.embedding_service.embed = embed
    stack = app.full_stack

    async def through_the_stack(scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("path") in ("/v1/embeddings", "/embeddings"):
            ways.append("stack")
        await stack(scope, receive, send)

    assert app.direct is not None
    app.direct.stack = through_the_stack
    direct_answer = app.direct.logged_answer.app

    async def directly(scope: dict, receive: Callable, send: Callable) -> None:
        ways.append("direct")
        await direct_answer(scope, receive, send)

    app.direct.logged_answer.app = directly
    return app, ways


def call(
    app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]], *, path: str = "/v1/embeddings",
    length: bool = True, stall: bool = False,
) -> Answer:  # fmt: skip
    """One request straight into the ASGI app: the body in `chunks` (several: `more_body`), with a
    Content-Length unless `length` is False; `stall`: the body never arrives."""
    body = b"".join(chunks)
    sent_headers = list(headers) + ([(b"content-length", str(len(body)).encode())] if length else [])
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": sent_headers,
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080), "state": {},
    }  # fmt: skip
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        if stall:
            await asyncio.sleep(3600)
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)  # a client that stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body_out


def reference_answer(chunks: list[bytes], headers: list[tuple[bytes, bytes]], **kwargs: Any) -> Answer:
    """What the full stack answers (the app without its direct entry)."""
    app, _ = canned_app(**kwargs.pop("settings", {}))
    app.direct = None
    return call(app, chunks, headers, **kwargs)


@pytest.mark.parametrize(
    ("content", "headers", "path"),
    [
        (VALID, JSON, "/v1/embeddings"),
        (VALID, JSON, "/embeddings"),
        (b'{"model": "e5", "input": "hi"}', [(b"content-type", b"application/json; charset=utf-8")], "/v1/embeddings"),
        (b'{"model": "e5", "input": "hi", "encoding_format": "base64"}', [(b"content-type", b"application/vnd.x+json")],
         "/v1/embeddings"),
        (b'{"model": "missing", "input": "hi"}', JSON, "/v1/embeddings"),  # the handler's errors: same handlers
        (b'{"model": "busy", "input": "hi"}', JSON, "/v1/embeddings"),
        (b'{"model": "broken", "input": "hi"}', JSON, "/v1/embeddings"),
    ],
)  # fmt: skip
def test_the_common_request_is_answered_directly_as_the_stack_answers_it(
    content: bytes, headers: list[tuple[bytes, bytes]], path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, ways = canned_app()
    with caplog.at_level(logging.ERROR, logger="bge_triton.proxy"):
        answer = call(app, [content], headers, path=path)
    logged = [r.exc_info is not None for r in caplog.records if r.levelno >= logging.ERROR]
    assert ways == ["direct"]
    assert answer == reference_answer([content], headers, path=path)
    status, answer_headers, body = answer
    if b'"e5"' in content:
        assert status == 200 and json.loads(body)["usage"]["prompt_tokens"] > 0
    else:
        assert status in (404, 429, 500) and "error" in json.loads(body)
    if b"busy" in content:
        assert answer_headers["retry-after"] == "1"
    if b"broken" in content:  # logged once, with its traceback, as the access log does for the stack
        assert logged == [True]


@pytest.mark.parametrize(
    ("chunks", "headers", "length", "status"),
    [
        ([b'{"model": "e5", "input": 5}'], JSON, True, 400),  # invalid field
        ([b'{"model": "e5", "input": "a", "dimensions": "2"}'], JSON, True, 400),  # strict: "2" is no int
        ([b'{"model": "e5", "input": "ab"}'], [], True, 400),  # no Content-Type: FastAPI's strict_content_type
        # a lone surrogate: pydantic's JSON parser refuses it, FastAPI's json.loads takes it
        ([b'{"model": "e5", "input": "a\\ud800"}'], JSON, True, 200),
        ([b"{not json"], JSON, True, 400),
        ([b""], JSON, True, 400),
        ([VALID], [(b"content-type", b"text/plain")], True, 400),
        ([b"model=e5&input=ab"], [(b"content-type", b"application/x-www-form-urlencoded")], True, 400),
        ([VALID], JSON, False, 200),  # no Content-Length (chunked)
        ([VALID[:10], VALID[10:]], JSON, True, 200),  # the body in two parts
        ([VALID, b"x"], JSON, True, 400),  # a valid first part is not the body
    ],
)
def test_any_other_request_gets_the_stacks_answer(
    chunks: list[bytes], headers: list[tuple[bytes, bytes]], length: bool, status: int
) -> None:
    app, ways = canned_app()
    answer = call(app, chunks, headers, length=length)
    assert ways == ["stack"]
    assert answer == reference_answer(chunks, headers, length=length)
    assert answer[0] == status


def test_keys_and_body_limits_are_still_the_stacks() -> None:
    settings = {"api_keys": ("secret",), "max_body_bytes": 64}
    app, ways = canned_app(**settings)
    key = [(b"authorization", b"Bearer secret")]
    assert call(app, [VALID], JSON + key)[0] == 200 and ways == ["direct"]
    for headers, body, status in [
        (JSON, VALID, 401),  # no key
        ([*JSON, (b"authorization", b"Bearer wrong")], VALID, 401),
        (JSON + key, b'{"model": "e5", "input": "' + b"x" * 64 + b'"}', 413),  # over --max-body-bytes
    ]:
        ways.clear()
        answer = call(app, [body], headers)
        assert answer[0] == status and ways == ["stack"]
        assert answer == reference_answer([body], headers, settings=settings)


def test_a_body_that_does_not_arrive_gets_the_body_limits_408() -> None:
    app, ways = canned_app(body_timeout_s=0.2)
    status, headers, body = call(app, [VALID], JSON, stall=True)
    assert (status, headers["connection"], json.loads(body)["error"]["code"]) == (408, "close", "body_timeout")
    assert ways == ["direct"]
    assert (status, json.loads(body)) == (lambda a: (a[0], json.loads(a[2])))(
        reference_answer([VALID], JSON, stall=True, settings={"body_timeout_s": 0.2})
    )


def test_direct_answers_are_logged_and_counted_under_the_route(caplog: pytest.LogCaptureFixture) -> None:
    app, ways = canned_app()
    with caplog.at_level(logging.INFO, logger="bge_triton.proxy"):
        call(app, [VALID], JSON)
        call(app, [b'{"model": "missing", "input": "hi"}'], JSON)
    assert ways == ["direct", "direct"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "POST /v1/embeddings model=e5 inputs=- tokens=8 status=200" in lines[0]
    assert "status=404" in lines[1]
    text = generate_latest(app.state.metrics.registry).decode()
    assert 'bge_proxy_requests_total{endpoint="/v1/embeddings",model="e5",status="200"} 1.0' in text
    assert 'bge_proxy_requests_total{endpoint="/v1/embeddings",model="missing",status="404"} 1.0' in text


def test_fastapis_telemetry_keeps_requests_on_the_stack() -> None:
    app, ways = canned_app()
    assert app.direct is not None and not app.telemetry_enabled()  # no provider configured in the tests
    app.direct.telemetry_enabled = lambda: True
    assert call(app, [VALID], JSON)[0] == 200 and ways == ["stack"]


def test_is_json_follows_fastapi() -> None:
    assert not is_json(None) and is_json(b"application/json") and is_json(b"Application/JSON; charset=utf-8")
    assert is_json(b"application/problem+json")
    assert not is_json(b"text/json") and not is_json(b"text/plain") and not is_json(b"multipart/form-data")


def test_the_openapi_schema_keeps_the_route() -> None:
    schema = create_app(ProxySettings()).openapi()["paths"]["/v1/embeddings"]["post"]
    assert schema["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")


def test_telemetry_is_asked_again_at_most_once_a_second_until_it_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(ProxySettings())
    asked: list[bool] = []
    answer = [False]

    def enabled() -> bool:
        asked.append(answer[0])
        return answer[0]

    monkeypatch.setattr(app._native_telemetry, "enabled", enabled)
    clock = [1000.0]
    monkeypatch.setattr("bge_triton.client.proxy.app.time.monotonic", lambda: clock[0])
    assert not any(app.telemetry_enabled() for _ in range(50)) and len(asked) == 1
    answer[0] = True  # a provider is set
    clock[0] += 0.5
    assert not app.telemetry_enabled() and len(asked) == 1  # within the second: the earlier no
    clock[0] += 0.6
    assert app.telemetry_enabled() and len(asked) == 2
    clock[0] += 10
    assert all(app.telemetry_enabled() for _ in range(50)) and len(asked) == 2  # a yes is kept
