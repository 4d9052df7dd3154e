"""`serve --replicas 2`: the proxy spreads requests over two tritonservers and fails over."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil
from conftest import background_load

from bge_triton.launcher import free_port

if TYPE_CHECKING:
    from conftest import Service  # the spawn fixture's process type

BODY = {"model": "all-MiniLM-L6-v2", "input": ["replicas share the load"] * 8, "encoding_format": "base64"}


def _successes(metrics_url: str) -> int:
    text = httpx.get(metrics_url, timeout=5).text
    match = re.search(r'^nv_inference_request_success\{model="all-MiniLM-L6-v2",version="1"\} (\d+)', text, re.M)
    return int(match.group(1)) if match else 0


def _port_base() -> tuple[int, int, int]:
    for _ in range(50):
        base = free_port()
        ports = [base + offset for offset in (0, 1, 2, 100, 101, 102)]
        if max(ports) < 65536 and all(_free(p) for p in ports):
            return base, base + 1, base + 2
    raise RuntimeError("no free port block")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_sigkilled_replica_loses_no_request_and_rejoins(repository: Path, spawn: Callable[..., Service]) -> None:
    http, grpc, metrics = _port_base()  # replica 1 uses the same ports + 100
    proxy_port = free_port()
    served = spawn(
        ["serve", "--repository", str(repository), "--replicas", "2", "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--proxy-port", str(proxy_port),
         "--no-cache"],  # the load repeats its body: every request must reach a replica
        port=proxy_port, ready_path="/ready",
    )  # fmt: skip
    # /ready answers 200 once every model has one READY replica; the other joins when its start-up canary passes
    both = [f"127.0.0.1:{http}", f"127.0.0.1:{http + 100}"]  # the proxy talks HTTP to its own Tritons
    deadline = time.monotonic() + 60
    while True:
        ready = httpx.get(f"{served.url}/ready", timeout=10).json()
        if ready["replicas"]["all-MiniLM-L6-v2"] == both or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ready["replicas"]["all-MiniLM-L6-v2"] == both
    second_metrics = f"http://127.0.0.1:{metrics + 100}/metrics"

    with background_load(f"{served.url}/v1/embeddings", BODY) as statuses:
        time.sleep(2)
        assert _successes(f"http://127.0.0.1:{metrics}/metrics") > 0 and _successes(second_metrics) > 0  # both used
        victim = next(
            p for p in psutil.Process(served.process.pid).children()
            if p.name() == "tritonserver" and f"--grpc-port={grpc + 100}" in p.cmdline()
        )  # fmt: skip
        victim.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 90
        rejoined = False
        while time.monotonic() < deadline and not rejoined:
            time.sleep(0.5)
            with contextlib.suppress(httpx.TransportError):
                rejoined = _successes(second_metrics) > 0  # the restarted replica serves again
        time.sleep(1)
    assert rejoined, served.log_text()[-3000:]
    assert set(statuses) == {200}, statuses  # zero failed requests at the client
    assert sum(statuses.values()) > 20
    log = served.log_text()
    assert f"Triton replica 127.0.0.1:{http + 100} failed" in log and "tritonserver restarted and ready" in log
