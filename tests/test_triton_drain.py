"""A Triton shutting down (SIGTERM) keeps answering on kept-alive HTTP connections and says its models are READY
until they close or its exit timeout ends; it only refuses new connections. The client library's readiness check
asks on a new connection, so it sees the shutdown at once, and it closes its pooled connections, so that Triton
finishes instead of waiting out its timeout (the proxy's /ready is 503 within a second of a `serve` restart)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from bge_triton.client import AsyncEmbeddingClient
from bge_triton.launcher import TritonOptions, TritonServer, free_port


def test_a_draining_triton_is_not_ready_and_not_kept_waiting(repository: Path, tmp_path: Path) -> None:
    options = TritonOptions(repository, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    assert options.exit_timeout_s >= 30
    server = TritonServer(options, log_file=tmp_path / "triton.log")
    server.start()
    try:
        server.wait_ready(300)

        async def drain() -> tuple[bool, bool, float, float]:
            async with AsyncEmbeddingClient(options.http_url, "http", model="all-MiniLM-L6-v2") as client:
                await asyncio.gather(*(client.embed([f"text {i}"]) for i in range(4)))  # 4 pooled connections
                before = await client.is_ready()
                assert server.process is not None
                server.process.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                await asyncio.sleep(0.5)  # Triton stops accepting new connections
                after = await client.is_ready()
                noticed = time.monotonic() - signalled
                exited = await asyncio.to_thread(server.process.wait, 25)
                return before, after, noticed, time.monotonic() - signalled if exited is not None else -1.0

        before, after, noticed, exited_s = asyncio.run(drain())
        assert (before, after) == (True, False)
        assert noticed < 3.0  # the probe waits 2 s for an answer
        # without the pooled connections closed, Triton waits its whole exit timeout (30 s) for them
        assert 0 < exited_s < 10, (exited_s, (tmp_path / "triton.log").read_text()[-2000:])
    finally:
        server.stop()
