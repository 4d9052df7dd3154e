"""The models the proxy serves, found from the repository: one replica set of async Triton clients each."""

from __future__ import annotations

import asyncio
import logging

from bge_triton.model_facts import ModelFacts

from ..errors import EmbeddingError
from ..triton_client import AsyncEmbeddingClient, list_models_async
from .errors import ProxyError
from .replicas import ReplicaSet
from .settings import ProxySettings

log = logging.getLogger("bge_triton.proxy")


class ModelRegistry:
    """Served names (and aliases) -> replica sets. Discovery is retried until a Triton answers, so
    the proxy can start before Triton and `/ready` tells when both are up."""

    def __init__(self, settings: ProxySettings):
        self.settings = settings
        self.clients: dict[str, ReplicaSet] = {}
        self._lock = asyncio.Lock()

    async def _list_models(self) -> dict[str, ModelFacts]:
        error: EmbeddingError | None = None
        for url in self.settings.triton_urls:
            try:
                return await list_models_async(url, self.settings.protocol)  # type: ignore[arg-type]
            except EmbeddingError as exc:
                error = exc
        assert error is not None
        raise error

    async def discover(self) -> None:
        """Find the served models (once); raises EmbeddingError while no Triton answers."""
        if self.clients:
            return
        async with self._lock:
            if self.clients:
                return
            found = await self._list_models()
            wanted = self.settings.models or tuple(sorted(found))
            missing = [m for m in wanted if m not in found]
            if missing:
                raise ProxyError(503, f"Triton serves no embedding model named {', '.join(missing)}")
            urls = self.settings.triton_urls
            sets = {}
            for name in wanted:
                clients = {
                    url: AsyncEmbeddingClient(
                        url,
                        self.settings.protocol,  # type: ignore[arg-type]
                        name,
                        timeout_s=self.settings.request_timeout_s,
                        max_concurrency=self.settings.triton_concurrency,
                        retries=3 if len(urls) == 1 else 0,  # with replicas, failover is the retry
                    )
                    for url in urls
                }
                connected = await asyncio.gather(*(c.connect() for c in clients.values()), return_exceptions=True)
                if all(isinstance(c, BaseException) for c in connected):
                    raise next(c for c in connected if isinstance(c, BaseException))
                # replicas down now connect on their first request; facts come from one that answered
                up = {
                    u: c
                    for (u, c), ok in zip(clients.items(), connected, strict=True)
                    if not isinstance(ok, BaseException)
                }
                sets[name] = ReplicaSet({**up, **clients})
            self.clients = sets
            log.info("serving %s from Triton at %s", ", ".join(sets), ", ".join(urls))

    async def get(self, requested: str) -> tuple[str, ReplicaSet]:
        try:
            await self.discover()
        except EmbeddingError as exc:
            raise ProxyError(503, f"Triton is not available: {exc.message}", code="triton_unavailable") from None
        name = self.settings.aliases.get(requested, requested)
        replicas = self.clients.get(name)
        if replicas is None:
            served = ", ".join([*self.clients, *self.settings.aliases])
            raise ProxyError(
                404, f"The model '{requested}' does not exist; served models: {served}", param="model",
                code="model_not_found",
            )  # fmt: skip
        return name, replicas

    def facts(self) -> dict[str, ModelFacts]:
        return {name: replicas.facts for name, replicas in self.clients.items()}

    async def ready(self) -> tuple[bool, str, dict[str, list[str]]]:
        """(ready, reason, model -> ready replicas): a Triton answers and every model has a READY replica."""
        try:
            await self.discover()
        except (EmbeddingError, ProxyError) as exc:
            return False, f"Triton is not available: {getattr(exc, 'message', exc)}", {}
        found = await asyncio.gather(*(r.ready_replicas() for r in self.clients.values()))
        replicas = dict(zip(self.clients, found, strict=True))
        not_ready = [name for name, urls in replicas.items() if not urls]
        if not_ready:
            return False, f"model not ready: {', '.join(not_ready)}", replicas
        return True, "ready", replicas

    async def close(self) -> None:
        await asyncio.gather(*(r.close() for r in self.clients.values()), return_exceptions=True)
        self.clients = {}
