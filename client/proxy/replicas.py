"""One served model on several Triton replicas: round-robin with health-checked failover.

A replica that answers UNAVAILABLE (or "model not ready") is skipped for `cooldown_s` and the
request goes to the next one, so a dying replica costs its in-flight requests nothing but a
retry. `/ready` probes every replica and brings recovered ones back at once.

Before a replica serves its first request (and again after it was down) it embeds the model's start-up canary
(bge_triton/canary.py) and is used only if the vectors match the export's reference: a replica that fails is
never routed to, and `/ready` names it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from bge_triton.canary import Canary, CanaryResult
from bge_triton.model_facts import ModelFacts

from ..errors import ModelNotReady, ServerUnavailable
from ..m3_scoring import M3Vectors, Mode
from ..triton_client import AsyncEmbeddingClient, EmbeddingResult, TokenizedText
from .errors import ProxyError

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
        self._canary = Canary.from_text(self._facts.canary) if self._facts and self._facts.canary else None
        self._canary_runs: dict[str, asyncio.Task[CanaryResult]] = {}  # url -> its canary, while it stays up

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
            self._forget_canary(url)
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
                if not await self._canary_passed(url):
                    error = error or self._canary_error(url)
                    continue
                result = await fn(self.clients[url])
            except FAILOVER_ERRORS as exc:
                if len(self.clients) > 1 and self._down_until.get(url, 0.0) <= time.monotonic():
                    log.warning("Triton replica %s failed (%s); failing over", url, exc.message)
                self._down_until[url] = time.monotonic() + self.cooldown_s
                self._forget_canary(url)  # it may come back as another process: check it again
                error = exc
                continue
            self._down_until.pop(url, None)
            return result
        assert error is not None
        raise error

    # -- the start-up canary -----------------------------------------------------------------------------------
    async def _canary_passed(self, url: str) -> bool:
        """Whether `url` gives the export's vectors (runs its canary once, shared by every caller)."""
        if self._canary is None:
            return True
        run = self._canary_runs.get(url)
        if run is None or (run.done() and (run.cancelled() or run.exception() is not None)):
            run = self._start_canary(url)
        try:
            return (await asyncio.shield(run)).passed
        except FAILOVER_ERRORS:
            self._canary_runs.pop(url, None)
            raise
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this request was cancelled, not the canary
            raise ServerUnavailable(f"Triton {url} went away while its start-up canary ran") from None

    def _start_canary(self, url: str) -> asyncio.Task[CanaryResult]:
        run = self._canary_runs[url] = asyncio.ensure_future(self._run_canary(url))
        run.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed run is retried, not logged
        return run

    def canary_pending(self) -> bool:
        return any(not run.done() for run in self._canary_runs.values())

    async def _run_canary(self, url: str) -> CanaryResult:
        assert self._canary is not None
        started = time.perf_counter()
        served = await self.clients[url].embed_with_usage(list(self._canary.texts), query=False, truncate=True)
        result = self._canary.check(served.vectors)
        if result.passed:
            log.info("%s on %s: %s (%.2f s)", self._facts.name, url, result.describe(), time.perf_counter() - started)
        else:
            log.error("%s on %s: %s; this replica gets no requests until it restarts", self._facts.name, url,
                      result.describe())  # fmt: skip
        return result

    def _forget_canary(self, url: str) -> None:
        """Check `url` again before its next request. A canary still running is left to finish (requests may be
        waiting for it); its result is no longer used."""
        self._canary_runs.pop(url, None)

    def canary_failures(self) -> dict[str, str]:
        """url -> what its canary found, for replicas that failed it."""
        failed = {}
        for url, run in self._canary_runs.items():
            if run.done() and not run.cancelled() and run.exception() is None and not run.result().passed:
                failed[url] = run.result().describe()
        return failed

    def _canary_error(self, url: str) -> ProxyError:
        return ProxyError(
            503, f"{self._facts.name} on Triton {url} gives vectors that differ from the export's reference "
            f"({self.canary_failures().get(url, 'canary failed')}): refusing to serve them", code="canary_failed",
        )  # fmt: skip

    async def embed_with_usage(self, texts: list[str], *, query: bool, truncate: bool) -> EmbeddingResult:
        return await self._call(lambda c: c.embed_with_usage(texts, query=query, truncate=truncate))

    async def embed_token_ids(self, ids: list[list[int]], *, truncate: bool) -> EmbeddingResult:
        return await self._call(lambda c: c.embed_token_ids(ids, truncate=truncate))

    async def embed_m3(self, texts: list[str], *, modes: Sequence[Mode], query: bool) -> M3Vectors:
        return await self._call(lambda c: c.embed_m3(texts, modes=modes, query=query))

    async def call(self, fn: Callable[[AsyncEmbeddingClient], Awaitable[T]]) -> T:
        """`fn` with one replica's client, failing over as every call here does (TEI's /embed_all and /decode
        call other models of the export through it)."""
        return await self._call(fn)

    async def tokenize(self, texts: list[str], *, query: bool, add_special_tokens: bool = True) -> list[TokenizedText]:
        return await self._call(lambda c: c.tokenize(texts, query=query, add_special_tokens=add_special_tokens))

    async def ready_replicas(self) -> list[str]:
        """Replicas whose model is READY and whose canary passed. A replica that just came up starts its canary
        here (in the background: a readiness check never waits for it) and counts once it passed."""
        states = await asyncio.gather(*(c.is_ready() for c in self.clients.values()))
        ready = []
        for url, ok in zip(self.clients, states, strict=True):
            if not ok:
                self._forget_canary(url)
                continue
            self._down_until.pop(url, None)
            if self._canary is None:
                ready.append(url)
                continue
            run = self._canary_runs.get(url)
            if run is None or (run.done() and (run.cancelled() or run.exception() is not None)):
                run = self._start_canary(url)
            if run.done() and run.result().passed:
                ready.append(url)
        return ready

    async def close(self) -> None:
        for run in self._canary_runs.values():
            run.cancel()
        self._canary_runs.clear()
        await asyncio.gather(*(c.close() for c in self.clients.values()), return_exceptions=True)
