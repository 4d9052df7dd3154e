"""The benchmark's HTTP load generators: JSON bodies posted to a server, from an event loop (aiohttp) or, one
request at a time, from the calling thread (the client library's blocking connection: a socket and httptools).

A benchmark measures the server, so its client should cost as little as the language allows and the same for
every HTTP system. On this project's 2-core VM (issue 19, `docs/benchmarks.md`), one POST of a 16-token query
to a bare uvicorn app took, at p50: 0.59 ms with the standard library's `http.client`, ~0.9 ms with aiohttp
from an event loop, 1.5 ms with `httpx.Client` and 2.4 ms with `httpx.AsyncClient`. With httpx as the load
generator, a millisecond and more of every proxy latency was the benchmark's own client. (The openai SDK uses
httpx: an application calling through it pays that client cost on top of what the bench reports.) A socket whose
answers httptools parses (client/http_connection.py) took 0.44 ms of CPU per call to Triton where `http.client`
took 0.85 (bench/results/2026-12-02-issue19-sync-http-client.json).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bge_triton.client.http_connection import HttpConnection

_JSON = {"Content-Type": "application/json"}


class JsonPoster:
    """POSTs JSON and checks the status. The session binds to the running event loop: it is made on the first
    post and must be closed (`close()`) inside the same loop."""

    def __init__(self, max_connections: int = 64, timeout_s: float = 600) -> None:
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: dict[str, Any]) -> bytes:
        """The response body of a 2xx answer; aiohttp.ClientResponseError for any other status."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                json_serialize=lambda value: orjson.dumps(value).decode(),
            )
        async with self._session.post(url, json=body) as response:
            payload = await response.read()
            response.raise_for_status()
            return payload

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class BlockingJsonPoster:
    """POSTs JSON on one kept-alive connection per server from the calling thread: the client library's own
    blocking HTTP connection (client/http_connection.py, a socket whose answers httptools parses)."""

    def __init__(self, timeout_s: float = 600) -> None:
        self.timeout_s = timeout_s
        self._connections: dict[str, HttpConnection] = {}

    def post(self, url: str, body: dict[str, Any]) -> bytes:
        """The response body of a 2xx answer; RuntimeError naming the status for any other."""
        parts = urlsplit(url)
        connection = self._connections.get(parts.netloc)
        if connection is None:
            connection = self._connections[parts.netloc] = HttpConnection(
                parts.hostname or "127.0.0.1", parts.port or 80, self.timeout_s
            )
        answer = connection.post(parts.path, orjson.dumps(body), _JSON)
        if not 200 <= answer.status < 300:
            raise RuntimeError(f"{url} answered {answer.status}: {answer.body[:200]!r}")
        return answer.body

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()
