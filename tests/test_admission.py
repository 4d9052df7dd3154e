"""client/proxy/admission.py: requests are counted in flight while served; past the bound, a 429."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from prometheus_client import generate_latest

from bge_triton.client.proxy.admission import admitted
from bge_triton.client.proxy.errors import ProxyError
from bge_triton.client.proxy.metrics import ProxyMetrics


def scraped(metrics: ProxyMetrics, name: str) -> float:
    line = next(x for x in generate_latest(metrics.registry).decode().splitlines() if x.startswith(name + " "))
    return float(line.split()[1])


def test_in_flight_is_counted_bounded_and_released_on_errors() -> None:
    app, metrics = FastAPI(), ProxyMetrics()
    app.state.in_flight = 0

    async def scenario() -> None:
        async with admitted(app, 2, metrics), admitted(app, 2, metrics):
            assert app.state.in_flight == 2 and scraped(metrics, "bge_proxy_in_flight_requests") == 2
            with pytest.raises(ProxyError) as refused:
                async with admitted(app, 2, metrics):
                    raise AssertionError("admitted past the bound")
            assert refused.value.status == 429 and refused.value.code == "overloaded"
            assert app.state.in_flight == 2  # the refused one was never counted
        with pytest.raises(RuntimeError):
            async with admitted(app, 2, metrics):
                raise RuntimeError("the handler failed")
        assert app.state.in_flight == 0 and scraped(metrics, "bge_proxy_in_flight_requests") == 0

    asyncio.run(scenario())
    assert scraped(metrics, "bge_proxy_rejected_total") == 1
