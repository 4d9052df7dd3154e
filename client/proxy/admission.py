"""Admission: at most `max_in_flight` requests at once per proxy; the rest get 429 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .errors import ProxyError
from .metrics import ProxyMetrics


@asynccontextmanager
async def admitted(app: FastAPI, max_in_flight: int, metrics: ProxyMetrics) -> AsyncIterator[None]:
    if app.state.in_flight >= max_in_flight:
        metrics.rejected.inc()
        raise ProxyError(429, f"too many requests in flight ({max_in_flight}); retry later", code="overloaded")
    app.state.in_flight += 1
    metrics.in_flight.inc()
    try:
        yield
    finally:
        app.state.in_flight -= 1
        metrics.in_flight.dec()
