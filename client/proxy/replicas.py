"""One served model on several Triton replicas: round-robin with health-checked failover.

A replica that answers UNAVAILABLE (or "model not ready") is skipped for `cooldown_s` and the
request goes to the next one, so a dying replica costs its in-flight requests nothing but a
retry. `/ready` probes every replica and brings recovered ones back at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from bge_triton.model_facts import ModelFacts

from ..errors import ModelNotReady, ServerUnavailable
from ..m3_scoring import M3Vectors, Mode
from ..triton_client import AsyncEmbeddingClient, EmbeddingResult, TokenizedText

log = logging.getLogger("bge_triton.proxy")
T = TypeVar("T")
FAILOVER_ERRORS = (ServerUnavailable, ModelNotReady)


class ReplicaSet:
    def __init__(self, clients: dict[str, AsyncEmbeddingClient], cooldown_s: float = 2.0):
        self.clients = clients  # Triton URL -> client of this model there (the first one connected)
        self.cooldown_s = cooldown_s
        self._down_until: dict[str, float] = {}
        self._turn = itertools.count()
        self._facts = next(iter(clients.values())).facts  # the same repository everywhere

    @property
    def facts(self) -> ModelFacts:
        return self._facts

    def add(self, url: str, client: AsyncEmbeddingClient) -> None:
        """A replica that appeared (DNS): it connects on its first request."""
        self.clients[url] = client

    async def remove(self, url: str) -> None:
        """A replica that disappeared (DNS); the last one stays, so a model is never left without a client."""
        if url in self.clients and len(self.clients) > 1:
            client = self.clients.pop(url)
            self._down_until.pop(url, None)
            await client.close()

    def _order(self) -> list[str]:
        urls = list(self.clients)
        start = next(self._turn) % len(urls)
        rotated = urls[start:] + urls[:start]
        now = time.monotonic()
        up = [u for u in rotated if self._down_until.get(u, 0.0) <= now]
        return up + [u for u in rotated if u not in up]  # the ones cooling down only as a last resort

    async def _call(self, fn: Callable[[AsyncEmbeddingClient], Awaitable[T]]) -> T:
        error: Exception | None = None
        for url in self._order():
            try:
                result = await fn(self.clients[url])
            except FAILOVER_ERRORS as exc:
                if len(self.clients) > 1 and self._down_until.get(url, 0.0) <= time.monotonic():
                    log.warning("Triton replica %s failed (%s); failing over", url, exc.message)
                self._down_until[url] = time.monotonic() + self.cooldown_s
                error = exc
                continue
            self._down_until.pop(url, None)
            return result
        assert error is not None
        raise error

    async def embed_with_usage(self, texts: list[str], *, query: bool, truncate: bool) -> EmbeddingResult:
        return await self._call(lambda c: c.embed_with_usage(texts, query=query, truncate=truncate))

    async def embed_token_ids(self, ids: list[list[int]], *, truncate: bool) -> EmbeddingResult:
        return await self._call(lambda c: c.embed_token_ids(ids, truncate=truncate))

    async def embed_m3(self, texts: list[str], *, modes: Sequence[Mode], query: bool) -> M3Vectors:
        return await self._call(lambda c: c.embed_m3(texts, modes=modes, query=query))

    async def tokenize(self, texts: list[str], *, query: bool, add_special_tokens: bool = True) -> list[TokenizedText]:
        return await self._call(lambda c: c.tokenize(texts, query=query, add_special_tokens=add_special_tokens))

    async def ready_replicas(self) -> list[str]:
        states = await asyncio.gather(*(c.is_ready() for c in self.clients.values()))
        for url, ok in zip(self.clients, states, strict=True):
            if ok:
                self._down_until.pop(url, None)
        return [url for url, ok in zip(self.clients, states, strict=True) if ok]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
