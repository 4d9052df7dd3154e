"""Admission: at most `max_in_flight` requests at once per proxy; the rest get 429 with Retry-After."""

from __future__ import annotations

from types import TracebackType

from fastapi import FastAPI

from .errors import ProxyError
from .metrics import ProxyMetrics


class admitted:  # lower case: used as `async with admitted(...)`, as the function it replaced
    """A request counted in flight while inside; entering past `max_in_flight` raises the 429. A class rather
    than an `asynccontextmanager`: no generator to create and step through on every request (issue 19)."""

    __slots__ = ("app", "max_in_flight", "metrics")

    def __init__(self, app: FastAPI, max_in_flight: int, metrics: ProxyMetrics) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.metrics = metrics

    async def __aenter__(self) -> None:
        state = self.app.state
        if state.in_flight >= self.max_in_flight:
            self.metrics.rejected.inc()
            raise ProxyError(429, f"too many requests in flight ({self.max_in_flight}); retry later", code="overloaded")
        state.in_flight += 1
        self.metrics.in_flight.inc()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.app.state.in_flight -= 1
        self.metrics.in_flight.dec()
