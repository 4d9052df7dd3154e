"""The shared tier of the vector cache: a Redis every proxy replica reads and writes (`--cache-url redis://...`).

Same keys as the local tier (vector_cache.CacheScope.key, under REDIS_PREFIX), values of encode_entry's layout.
Redis bounds its own memory (`maxmemory` with `maxmemory-policy allkeys-lru`, see docs/deployment.md); each
entry also expires after `ttl_s`.

The cache must never fail a request: a Redis that errs or is too slow is a miss (counted in
`bge_proxy_cache_redis_errors_total`, `bge_proxy_cache_redis_up` drops to 0, a warning at most every
WARN_EVERY_S). After a failure Redis is left alone for `retry_after_s`, so a dead Redis does not add a timeout
to every request; the next call after that tries again, and the proxy says when it answers again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .metrics import ProxyMetrics

log = logging.getLogger("bge_triton.proxy")

REDIS_PREFIX = b"bgevec:"
WARN_EVERY_S = 30.0


class RedisVectorCache:
    def __init__(
        self,
        url: str,
        metrics: ProxyMetrics,
        *,
        ttl_s: int = 7 * 24 * 3600,
        timeout_s: float = 0.25,
        retry_after_s: float = 2.0,
    ) -> None:
        self.url = url
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        # One immediate retry: a pooled connection that a restarted Redis closed is replaced, not counted a failure.
        self.client = Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
        )  # fmt: skip
        self._down_until = 0.0  # monotonic time before which Redis is not asked (after a failure)
        self._down = False
        self._last_warning = -WARN_EVERY_S
        metrics.cache_redis_up.set(1)

    def _available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.cache_redis_errors.inc()
        self.metrics.cache_redis_up.set(0)
        self._down = True
        now = time.monotonic()
        self._down_until = now + self.retry_after_s
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning(
                "vector cache: Redis at %s failed (%s: %s); serving without it, retrying every %g s",
                _safe_url(self.url), what, exc or type(exc).__name__, self.retry_after_s,
            )  # fmt: skip

    def _answered(self) -> None:
        if self._down:
            self._down = False
            self.metrics.cache_redis_up.set(1)
            log.warning("vector cache: Redis at %s answers again", _safe_url(self.url))

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        if not keys or not self._available():
            return [None] * len(keys)
        try:
            values = await self.client.mget([REDIS_PREFIX + k for k in keys])
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("read", exc)
            return [None] * len(keys)
        self._answered()
        return [v if isinstance(v, bytes) else None for v in values]

    async def put_many(self, entries: Sequence[tuple[bytes, bytes]]) -> None:
        if not entries or not self._available():
            return
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, value in entries:
                    pipe.set(REDIS_PREFIX + key, value, ex=self.ttl_s)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("write", exc)
            return
        self._answered()

    async def close(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()


def _safe_url(url: str) -> str:
    """The URL without a password (redis://:secret@host -> redis://***@host)."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
