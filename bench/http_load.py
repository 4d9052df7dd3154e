"""The benchmark's HTTP load generator: one aiohttp session per measurement, JSON bodies posted to a server.

A benchmark measures the server, so its client should cost as little as the language allows and the same for
every HTTP system. On this project's 2-core VM (issue 19, `docs/benchmarks.md`), one POST of a 16-token query
to a bare uvicorn app took, at p50: 0.59 ms with the standard library's `http.client`, ~0.9 ms with aiohttp
from an event loop, 1.5 ms with `httpx.Client` and 2.4 ms with `httpx.AsyncClient`. With httpx as the load
generator, a millisecond and more of every proxy latency was the benchmark's own client. (The openai SDK uses
httpx: an application calling through it pays that client cost on top of what the bench reports.)
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


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
