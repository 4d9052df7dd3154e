"""client/proxy/direct_json_route.py: valid JSON bodies take the direct path, every other body gets exactly the
FastAPI route's answer."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from bge_triton.client.proxy.app import create_app
from bge_triton.client.proxy.direct_json_route import DirectJsonRoute, is_json
from bge_triton.client.proxy.settings import ProxySettings


class Body(BaseModel):
    model_config = ConfigDict(strict=True)  # as EmbeddingRequest

    text: str
    count: int = 1


def make_app(direct: bool) -> tuple[FastAPI, list[str]]:
    served: list[str] = []
    app = FastAPI()

    @app.post("/echo")
    async def echo(body: Body, request: Request) -> JSONResponse:
        served.append("fastapi" if "direct" not in request.scope else "direct")
        return JSONResponse({"length": len(body.text) * body.count, "path": request.url.path})

    if direct:

        async def handle(body: Body, request: Request) -> JSONResponse:
            request.scope["direct"] = True
            return await echo(body, request)

        app.router.routes.insert(0, DirectJsonRoute("/echo", Body, handle, app.routes[-1]))
    return app, served


def post(app: FastAPI, content: bytes, content_type: str | None = "application/json") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"content-type": content_type} if content_type else {}
            return await client.post("/echo", content=content, headers=headers)

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"text": "ab", "count": 2}', "application/json"),
        (b'{"text": "ab"}', "application/json; charset=utf-8"),
        (b'{"text": "ab"}', "application/vnd.api+json"),
    ],
)
def test_a_valid_json_body_takes_the_direct_path(content: bytes, content_type: str | None) -> None:
    app, served = make_app(direct=True)
    response = post(app, content, content_type)
    assert response.status_code == 200
    assert response.json() == post(make_app(direct=False)[0], content, content_type).json()
    assert served == ["direct"]


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"text": 5}', "application/json"),  # invalid field
        (b'{"text": "a", "count": "2"}', "application/json"),  # strict: "2" is no int
        (b'{"text": "ab"}', None),  # no Content-Type: up to FastAPI's strict_content_type
        (b'{"text": "a\\ud800"}', "application/json"),  # a lone surrogate: pydantic's JSON parser refuses it
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b'{"text": "ab"}', "text/plain"),
        (b"text=ab", "application/x-www-form-urlencoded"),
    ],
)
def test_any_other_body_gets_the_fastapi_routes_answer(content: bytes, content_type: str) -> None:
    app, served = make_app(direct=True)
    reference, _ = make_app(direct=False)
    response, expected = post(app, content, content_type), post(reference, content, content_type)
    assert (response.status_code, response.content) == (expected.status_code, expected.content)
    assert "direct" not in served


def test_is_json_follows_fastapi() -> None:
    assert not is_json(None) and is_json(b"application/json") and is_json(b"Application/JSON; charset=utf-8")
    assert is_json(b"application/problem+json")
    assert not is_json(b"text/json") and not is_json(b"text/plain") and not is_json(b"multipart/form-data")


def test_the_proxy_serves_embeddings_through_it_and_keeps_the_schema() -> None:
    app = create_app(ProxySettings())
    direct = [r for r in app.router.routes if isinstance(r, DirectJsonRoute)]
    assert {r.path for r in direct} == {"/v1/embeddings", "/embeddings"}
    assert all(app.router.routes.index(r) < 2 for r in direct)  # matched before anything else
    schema = app.openapi()["paths"]["/v1/embeddings"]["post"]
    assert schema["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")
