"""The models the proxy serves, found from the repository: one replica set of async Triton clients each.

Every served name and alias NAME is also accepted as `NAME-query` and `NAME-passage` (NVIDIA NIM's
convention): the same model with that `input_type`, for OpenAI-only clients that cannot send the field. A real
served name or alias always wins over reading a name as a suffixed one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from bge_triton.model_facts import ModelFacts

from ..errors import EmbeddingError
from ..triton_client import AsyncEmbeddingClient, list_models_async
from .dns_replicas import Resolver, expand_urls, parse_dns_url, resolve_addresses
from .errors import ProxyError
from .replicas import ReplicaSet
from .settings import ProxySettings

log = logging.getLogger("bge_triton.proxy")
InputType = Literal["query", "passage"]
INPUT_TYPE_SUFFIXES: dict[str, InputType] = {"-query": "query", "-passage": "passage"}


@dataclass(frozen=True)
class Resolved:
    """What a requested `model` names: the served model, its replicas and the `input_type` a suffix implies."""

    name: str
    replicas: ReplicaSet
    input_type: InputType | None = None


@dataclass(frozen=True)
class ListedName:
    """One id of `/v1/models`: a served name, an alias, or one of their `-query` / `-passage` variants."""

    id: str
    facts: ModelFacts
    parent: str | None = None  # the served name or alias a suffixed variant belongs to
    input_type: InputType | None = None


class ModelRegistry:
    """Served names (and aliases) -> replica sets. Discovery is retried until a Triton answers, so
    the proxy can start before Triton and `/ready` tells when both are up."""

    def __init__(self, settings: ProxySettings, resolver: Resolver = resolve_addresses):
        self.settings = settings
        self.clients: dict[str, ReplicaSet] = {}
        self._lock = asyncio.Lock()
        self._resolver = resolver
        self.urls: list[str] = list(settings.triton_urls)  # with dns: entries resolved (refresh_urls)
        self._refresher: asyncio.Task[None] | None = None
        # {name: task} of models served for another task (rerank_routes.py sets it): naming one here is a 400
        self.other_tasks: Callable[[], Awaitable[dict[str, str]]] | None = None

    @property
    def uses_dns(self) -> bool:
        return any(parse_dns_url(url) for url in self.settings.triton_urls)

    def _client(self, url: str, name: str) -> AsyncEmbeddingClient:
        return AsyncEmbeddingClient(
            url,
            self.settings.protocol,  # type: ignore[arg-type]
            name,
            timeout_s=self.settings.request_timeout_s,
            max_concurrency=self.settings.triton_concurrency,
            retries=3 if len(self.urls) == 1 and not self.uses_dns else 0,  # with replicas, failover is the retry
        )

    async def refresh_urls(self) -> list[str]:
        """Re-resolve `dns:` URLs; replicas that appeared get clients, vanished ones lose theirs."""
        urls = await expand_urls(self.settings.triton_urls, self._resolver)
        if not urls:  # a resolution that found nothing keeps what worked last
            return self.urls
        added, gone = [u for u in urls if u not in self.urls], [u for u in self.urls if u not in urls]
        self.urls = urls
        for name, replicas in self.clients.items():
            for url in added:
                replicas.add(url, self._client(url, name))
            for url in gone:
                await replicas.remove(url)
        if self.clients and (added or gone):
            log.info("Triton replicas from DNS: %s (added %s, removed %s)", ", ".join(urls), added or "-", gone or "-")
        return urls

    def start_refresh(self) -> None:
        """With `dns:` URLs, re-resolve them every `triton_dns_refresh_s` seconds until `close`."""
        if self.uses_dns and self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.triton_dns_refresh_s)
            try:
                await self.refresh_urls()
            except Exception as exc:  # never let one failed resolution stop the loop
                log.warning("re-resolving Triton's DNS name failed: %s", exc)

    async def _list_models(self) -> dict[str, ModelFacts]:
        if self.uses_dns:
            await self.refresh_urls()
        error: EmbeddingError | None = None
        for url in self.urls:
            try:
                return await list_models_async(url, self.settings.protocol)  # type: ignore[arg-type]
            except EmbeddingError as exc:
                error = exc
        if error is None:
            raise ProxyError(503, "no Triton address resolved yet", code="triton_unavailable")
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
                raise ProxyError(503, f"Triton serves no embedding model named {', '.join(missing)}",
                                 code="model_not_served")  # fmt: skip
            urls = self.urls
            sets = {}
            for name in wanted:
                clients = {url: self._client(url, name) for url in urls}
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

    async def discover_or_503(self) -> None:
        """`discover`, with any failure to reach Triton as a 503 `triton_unavailable` ProxyError (routes)."""
        try:
            await self.discover()
        except ProxyError:
            raise
        except Exception as exc:
            raise ProxyError(503, f"Triton is not available: {exc}", code="triton_unavailable") from None

    async def _discovered(self) -> None:
        try:
            await self.discover()
        except EmbeddingError as exc:
            raise ProxyError(503, f"Triton is not available: {exc.message}", code="triton_unavailable") from None

    def _served(self, requested: str) -> str | None:
        """The served model a served name or alias names (no suffixes)."""
        name = self.settings.aliases.get(requested, requested)
        return name if name in self.clients else None

    def _not_found(self, requested: str, *, suffixes: bool) -> ProxyError:
        served = ", ".join([*self.clients, *self.settings.aliases])
        also = " (each also as NAME-query and NAME-passage)" if suffixes else ""
        return ProxyError(
            404, f"The model '{requested}' does not exist; served models: {served}{also}", param="model",
            code="model_not_found",
        )  # fmt: skip

    async def get(self, requested: str) -> tuple[str, ReplicaSet]:
        """A served name or alias (the bge-m3 routes and /tokenize: no suffixed names)."""
        await self._discovered()
        name = self._served(requested)
        if name is None:
            raise await self._missing(requested, suffixes=False)
        return name, self.clients[name]

    async def resolve(self, requested: str) -> Resolved:
        """A served name or alias, else NAME-query / NAME-passage of one (`/v1/embeddings`, `/v1/models/ID`)."""
        await self._discovered()
        name = self._served(requested)
        if name is not None:
            return Resolved(name, self.clients[name])
        for suffix, input_type in INPUT_TYPE_SUFFIXES.items():
            base = self._served(requested.removesuffix(suffix)) if requested.endswith(suffix) else None
            if base is not None:
                return Resolved(base, self.clients[base], input_type)
        raise await self._missing(requested, suffixes=True)

    async def _missing(self, requested: str, *, suffixes: bool) -> ProxyError:
        """404 for an unknown name; 400 `model_not_embedding` for a model served for another task (a reranker)."""
        others = await self.other_tasks() if self.other_tasks else {}
        task = others.get(self.settings.aliases.get(requested, requested))
        if task is not None:
            return ProxyError(400, f"The model '{requested}' is a {task} model, not an embedding model: use it with "
                              f"/v1/{task}", param="model", code="model_not_embedding")  # fmt: skip
        return self._not_found(requested, suffixes=suffixes)

    def listing(self) -> list[ListedName]:
        """Served names, then aliases, each followed by its suffixed variants (unless a real name takes the id)."""
        facts = self.facts()
        bases = [(n, n) for n in facts] + [(a, t) for a, t in self.settings.aliases.items() if t in facts]
        taken = {base for base, _ in bases}
        listed = []
        for base, target in bases:
            listed.append(ListedName(base, facts[target]))
            for suffix, input_type in INPUT_TYPE_SUFFIXES.items():
                if base + suffix not in taken:
                    listed.append(ListedName(base + suffix, facts[target], parent=base, input_type=input_type))
        return listed

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
            return False, "; ".join(self._why_not_ready(name) for name in not_ready), replicas
        return True, "ready", replicas

    def _why_not_ready(self, name: str) -> str:
        replicas = self.clients[name]
        failures = replicas.canary_failures()
        if failures:
            return f"{name} gives wrong vectors: " + ", ".join(f"{url}: {desc}" for url, desc in failures.items())
        if replicas.canary_pending():
            return f"model not ready: {name} (start-up canary running)"
        return f"model not ready: {name}"

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await asyncio.gather(*(r.close() for r in self.clients.values()), return_exceptions=True)
        self.clients = {}
