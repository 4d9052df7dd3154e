"""`bge-triton serve`: default model on first run, readiness line, clean shutdown, busy ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest

from bge_triton.launcher import LaunchError, TritonOptions, TritonServer, free_port


def test_busy_port_is_refused_with_a_clear_message(repository: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = TritonServer(
            TritonOptions(repository, http_port=port, grpc_port=free_port(), metrics_port=free_port())
        )
        with pytest.raises(LaunchError, match=f"HTTP port 127.0.0.1:{port} is already in use"):
            server.start()
        assert server.process is None


def test_missing_repository_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="does not exist"):
        TritonServer(TritonOptions(tmp_path / "none")).start()


def test_serve_exports_the_default_model_then_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`bge-triton serve` runs Triton and the OpenAI proxy; SIGTERM stops both."""
    ports = [free_port() for _ in range(4)]
    env = {**os.environ, "BGE_TRITON_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "bge_triton", "serve", "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
           "--metrics-port", str(ports[2]), "--proxy-port", str(ports[3])]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 300
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Uvicorn running on" in line:
                break
        output = "".join(lines)
        assert "first run: exporting the embedded default model all-MiniLM-L6-v2" in output, output[-3000:]
        ready = [ln for ln in lines if "Triton ready" in ln]
        assert ready, output[-3000:]
        assert f"HTTP http://127.0.0.1:{ports[0]}" in ready[0] and f"gRPC 127.0.0.1:{ports[1]}" in ready[0]
        url = f"http://127.0.0.1:{ports[0]}/v2/models/all-MiniLM-L6-v2/ready"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
        assert (tmp_path / "home/model_repository/all-MiniLM-L6-v2/model_facts.json").is_file()
        assert f"Uvicorn running on http://127.0.0.1:{ports[3]}" in output
        proxy = f"http://127.0.0.1:{ports[3]}"
        assert httpx.get(f"{proxy}/ready", timeout=10).status_code == 200
        body = {"model": "all-MiniLM-L6-v2", "input": ["你好", "hello"]}
        data = httpx.post(f"{proxy}/v1/embeddings", json=body, timeout=30).json()["data"]
        assert [len(d["embedding"]) for d in data] == [384, 384]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Triton is gone: nothing listens on its ports any more.
    for port in ports:
        with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", port))


def test_tritonserver_does_not_outlive_a_killed_launcher(repository: Path, tmp_path: Path) -> None:
    """SIGKILL the process that started Triton: Triton gets SIGTERM and exits, freeing its ports."""
    ports = [free_port() for _ in range(3)]
    env = {**os.environ, "BGE_TRITON_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "bge_triton", "serve", "--no-proxy", "--repository", str(repository),
           "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]  # fmt: skip
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready_url = f"http://127.0.0.1:{ports[0]}/v2/health/ready"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.3)
    else:
        launcher.kill()
        pytest.fail("tritonserver did not become ready")
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(ready_url, timeout=1)
            time.sleep(0.5)
        except httpx.TransportError:
            return
    pytest.fail("tritonserver still answers after its launcher was killed")
