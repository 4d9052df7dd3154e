"""`--triton-url dns:HOST:PORT` (issue 16 §4): one client per address a headless Service resolves to, refreshed as
replicas come and go, so new Triton pods get traffic instead of one long-lived channel pinning the proxy."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bge_triton.client.proxy.dns_replicas import expand_urls, parse_dns_url, resolve_addresses
from bge_triton.client.proxy.registry import ModelRegistry
from bge_triton.client.proxy.settings import ProxySettings
from bge_triton.launcher import TritonOptions

MODEL = "all-MiniLM-L6-v2"


def test_dns_urls_parse_and_resolve() -> None:
    assert parse_dns_url("127.0.0.1:8001") is None
    assert parse_dns_url("dns:triton-headless.default.svc.cluster.local:8001") == (
        "triton-headless.default.svc.cluster.local", 8001,
    )  # fmt: skip
    assert parse_dns_url("dns:///triton:8001") == ("triton", 8001)
    with pytest.raises(ValueError, match="dns:HOST:PORT"):
        parse_dns_url("dns:triton")
    assert "127.0.0.1:8001" in asyncio.run(resolve_addresses("localhost", 8001))
    urls = asyncio.run(expand_urls(("10.0.0.9:8001", "dns:localhost:8001", "dns:no-such-host.invalid:1")))
    assert urls[0] == "10.0.0.9:8001" and "127.0.0.1:8001" in urls and len(urls) == len(set(urls))


def test_replicas_follow_the_dns_answers(triton: TritonOptions) -> None:
    """Two names for the one test Triton stand in for two pods: the replica set grows and shrinks with the
    resolver's answers, requests work through every replica, and the proxy never drops its last replica."""
    port = triton.grpc_port
    answers = [[f"127.0.0.1:{port}"]]

    async def resolver(host: str, resolved_port: int) -> list[str]:
        assert (host, resolved_port) == ("triton-headless", port)
        return answers[-1]

    async def scenario() -> dict[str, object]:
        settings = ProxySettings(triton_urls=(f"dns:triton-headless:{port}",), models=(MODEL,))
        registry = ModelRegistry(settings, resolver=resolver)
        await registry.discover()
        replicas = registry.clients[MODEL]
        seen: dict[str, object] = {"first": sorted(replicas.clients)}
        answers.append([f"127.0.0.1:{port}", f"localhost:{port}"])  # a pod was added
        await registry.refresh_urls()
        seen["grown"] = sorted(replicas.clients)
        vectors = [await replicas.embed_with_usage(["hello"], query=False, truncate=True) for _ in range(4)]
        seen["same"] = all(np.allclose(v.vectors, vectors[0].vectors) for v in vectors)
        seen["both_used"] = all(c._core.facts is not None for c in replicas.clients.values())
        answers.append([f"localhost:{port}"])  # the first pod went away
        await registry.refresh_urls()
        seen["shrunk"] = sorted(replicas.clients)
        seen["after"] = (await replicas.embed_with_usage(["hello"], query=False, truncate=True)).vectors
        answers.append([])  # nothing resolves for a moment: keep what worked
        await registry.refresh_urls()
        seen["kept"] = sorted(replicas.clients)
        await registry.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen["first"] == [f"127.0.0.1:{port}"]
    assert seen["grown"] == sorted([f"127.0.0.1:{port}", f"localhost:{port}"])
    assert seen["same"] and seen["both_used"]  # round-robin reached (and connected) both replicas
    assert seen["shrunk"] == [f"localhost:{port}"] == seen["kept"]
    assert np.asarray(seen["after"]).shape == (1, 384)
