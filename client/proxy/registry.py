"""The models the proxy serves: one async Triton client each, found from the repository."""

from __future__ import annotations

import asyncio
import logging

from bge_triton.model_facts import ModelFacts

from ..errors import EmbeddingError
from ..triton_client import AsyncEmbeddingClient, list_models_async
from .errors import ProxyError
from .settings import ProxySettings

log = logging.getLogger("bge_triton.proxy")


class ModelRegistry:
    """Served names (and aliases) -> clients. Discovery is retried until Triton answers, so the
    proxy can start before Triton and `/ready` tells when both are up."""

    def __init__(self, settings: ProxySettings):
        self.settings = settings
        self.clients: dict[str, AsyncEmbeddingClient] = {}
        self._lock = asyncio.Lock()

    async def discover(self) -> None:
        """Find the served models (once); raises EmbeddingError while Triton does not answer."""
        if self.clients:
            return
        async with self._lock:
            if self.clients:
                return
            found = await list_models_async(self.settings.triton_url, self.settings.protocol)  # type: ignore[arg-type]
            wanted = self.settings.models or tuple(sorted(found))
            missing = [m for m in wanted if m not in found]
            if missing:
                raise ProxyError(503, f"Triton serves no embedding model named {', '.join(missing)}")
            clients = {}
            for name in wanted:
                client = AsyncEmbeddingClient(
                    self.settings.triton_url,
                    self.settings.protocol,  # type: ignore[arg-type]
                    name,
                    timeout_s=self.settings.request_timeout_s,
                    max_concurrency=self.settings.triton_concurrency,
                )
                await client.connect()
                clients[name] = client
            self.clients = clients
            log.info("serving %s from Triton at %s", ", ".join(clients), self.settings.triton_url)

    async def get(self, requested: str) -> tuple[str, AsyncEmbeddingClient]:
        try:
            await self.discover()
        except EmbeddingError as exc:
            raise ProxyError(503, f"Triton is not available: {exc.message}", code="triton_unavailable") from None
        name = self.settings.aliases.get(requested, requested)
        client = self.clients.get(name)
        if client is None:
            served = ", ".join([*self.clients, *self.settings.aliases])
            raise ProxyError(
                404, f"The model '{requested}' does not exist; served models: {served}", param="model",
                code="model_not_found",
            )  # fmt: skip
        return name, client

    def facts(self) -> dict[str, ModelFacts]:
        return {name: client.facts for name, client in self.clients.items()}

    async def ready(self) -> tuple[bool, str]:
        """(ready, reason): Triton answers and every served model is READY."""
        try:
            await self.discover()
        except (EmbeddingError, ProxyError) as exc:
            return False, f"Triton is not available: {getattr(exc, 'message', exc)}"
        states = await asyncio.gather(*(client.is_ready() for client in self.clients.values()))
        not_ready = [name for name, ok in zip(self.clients, states, strict=True) if not ok]
        if not_ready:
            return False, f"model not ready: {', '.join(not_ready)}"
        return True, "ready"

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.clients.values()), return_exceptions=True)
        self.clients = {}
