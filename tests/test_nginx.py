"""The rendered nginx config, run by Debian's nginx on loopback, in front of two proxies and a tritonserver."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import pytest
from conftest import background_load

from bge_triton.client import EmbeddingClient
from bge_triton.launcher import TritonOptions, free_port
from bge_triton.nginx_config import NginxLayout, render_nginx_config

if TYPE_CHECKING:
    from conftest import Service

ROOT = Path(__file__).resolve().parents[1]
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["nginx balances the proxies", "负载均衡", "gRPC through nginx"]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (./install.sh --with-bench-tools)")


def _vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in response.json()["data"]]
    return np.stack(rows)


class Nginx:
    def __init__(self, layout: NginxLayout, folder: Path) -> None:
        self.folder = folder
        conf = folder / "nginx.conf"
        conf.write_text(render_nginx_config(layout))
        self.proxy_url = f"http://{layout.listen_proxy}"
        self.process = subprocess.Popen(
            [str(NGINX), "-e", "stderr", "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stdout.read().decode() if self.process.stdout else ""
            try:
                if httpx.get(f"{self.proxy_url}/nginx-health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("nginx did not start")

    def upstreams(self) -> Counter[str]:
        """Which backend served each proxied request, from the access log."""
        log = (self.folder / "access.log").read_text()
        return Counter(re.findall(r"upstream=(\S+)", log))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)  # graceful
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture()
def balanced(
    triton: TritonOptions, spawn: Callable[..., Service], tmp_path: Path
) -> Iterator[tuple[Nginx, list[Service], NginxLayout]]:
    ports = [free_port(), free_port()]
    proxies = [
        spawn(["serve-proxy", f"--triton-url=127.0.0.1:{triton.grpc_port}", "--port", str(p)], port=p,
              ready_path="/ready")
        for p in ports
    ]  # fmt: skip
    layout = NginxLayout(
        proxies=[f"127.0.0.1:{p}" for p in ports],
        triton_grpc=[f"127.0.0.1:{triton.grpc_port}"],
        triton_http=[f"127.0.0.1:{triton.http_port}"],
        listen_proxy=f"127.0.0.1:{free_port()}",
        listen_grpc=f"127.0.0.1:{free_port()}",
        listen_http=f"127.0.0.1:{free_port()}",
        state_dir=tmp_path,
    )
    nginx = Nginx(layout, tmp_path)
    yield nginx, proxies, layout
    nginx.stop()
    for proxy in proxies:
        proxy.stop()


def test_nginx_spreads_requests_and_returns_the_same_vectors(
    balanced: tuple[Nginx, list[Service], NginxLayout],
) -> None:
    nginx, proxies, layout = balanced
    body = {"model": MODEL, "input": TEXTS, "encoding_format": "base64"}
    direct = _vectors(httpx.post(f"{proxies[0].url}/v1/embeddings", json=body, timeout=30))
    with httpx.Client(timeout=30) as client:
        for _ in range(10):
            via = _vectors(client.post(f"{nginx.proxy_url}/v1/embeddings", json=body))
            np.testing.assert_allclose(via, direct, atol=1e-6)
        assert client.get(f"{nginx.proxy_url}/ready").status_code == 200
        models = client.get(f"{nginx.proxy_url}/v1/models").json()
        assert MODEL in [m["id"] for m in models["data"]]
    time.sleep(0.2)  # the access log is written after the response
    assert set(nginx.upstreams()) >= set(layout.proxies)  # least_conn over both proxies


def test_triton_grpc_and_http_through_nginx(balanced: tuple[Nginx, list[Service], NginxLayout]) -> None:
    _, proxies, layout = balanced
    body = {"model": MODEL, "input": TEXTS, "encoding_format": "base64"}
    expected = _vectors(httpx.post(f"{proxies[0].url}/v1/embeddings", json=body, timeout=30))
    for url, protocol in ((layout.listen_grpc, "grpc"), (layout.listen_http, "http")):
        with EmbeddingClient(url, protocol) as client:  # type: ignore[arg-type]
            got = client.embed(TEXTS)
            assert client.facts.dim == expected.shape[1]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    ready = httpx.get(f"http://{layout.listen_http}/v2/health/ready", timeout=5)
    assert ready.status_code == 200


def test_killed_proxy_loses_no_request_behind_nginx(balanced: tuple[Nginx, list[Service], NginxLayout]) -> None:
    nginx, proxies, _ = balanced
    body = {"model": MODEL, "input": ["a request that must not be lost"] * 4, "encoding_format": "base64"}
    with background_load(f"{nginx.proxy_url}/v1/embeddings", body) as statuses:
        time.sleep(1.5)
        before = sum(statuses.values())
        proxies[0].process.send_signal(signal.SIGKILL)
        time.sleep(3)
    assert proxies[0].process.wait(timeout=10) == -signal.SIGKILL
    assert set(statuses) == {200}, statuses  # nginx retried every request the dead proxy dropped
    assert sum(statuses.values()) > before + 10  # and kept serving on the survivor


def test_committed_compose_config_is_the_rendered_one() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bge_triton", "nginx-config", "--compose"], capture_output=True, text=True, timeout=60
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (ROOT / "deploy/nginx/nginx.conf").read_text() == out.stdout
    assert "server triton:8001 max_fails=1 fail_timeout=5s resolve;" in out.stdout
    assert "resolver 127.0.0.11" in out.stdout  # Docker's DNS follows scaled replicas


def test_nginx_config_refuses_incomplete_layouts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bge_triton", "nginx-config", "--proxy", "127.0.0.1:8080"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--triton-grpc, --triton-http" in out.stderr
    with pytest.raises(ValueError, match="host:port"):
        render_nginx_config(NginxLayout(proxies=["8080"], triton_grpc=["a:1"], triton_http=["a:2"]))
