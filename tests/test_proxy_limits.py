"""Issue 14, the proxy's side: a stopped Triton, inputs that gave 500s, hostile sizes, random paths and held
connections (a real proxy in front of a real tritonserver; loopback only, bounded in count and time)."""

from __future__ import annotations

import json
import logging
import random
import re
import signal
import socket
import string
import time
from collections.abc import Callable, Iterator

import httpx
import psutil
import pytest
from conftest import Service
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bge_triton.client.proxy.access_log import UNMATCHED, AccessLog
from bge_triton.client.proxy.metrics import ProxyMetrics
from bge_triton.launcher import TritonOptions, free_port

MODEL = "all-MiniLM-L6-v2"
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 48


@pytest.fixture(scope="module")
def proxy(triton: TritonOptions, spawn: Callable[..., Service]) -> Service:
    port = free_port()
    return spawn(
        ["serve-proxy", "--triton-url", triton.http_url, "--port", str(port), "--token-ids", "model",
         "--body-timeout", str(BODY_TIMEOUT_S), "--header-timeout", str(HEADER_TIMEOUT_S),
         "--max-connections", str(MAX_CONNECTIONS), "--no-cache"],  # repeated probes must reach Triton
        port=port, ready_path="/ready",
    )  # fmt: skip


def _post_raw(url: str, path: str, body: str, timeout: float = 30) -> httpx.Response:
    """POST a JSON text as written (`\\ud800` stays an escape: json.loads makes it a lone surrogate)."""
    return httpx.post(f"{url}{path}", content=body.encode("ascii"), timeout=timeout,
                      headers={"content-type": "application/json"})  # fmt: skip


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def _requests_total(metrics: str) -> dict[tuple[str, str], float]:
    """bge_proxy_requests_total by (endpoint, status)."""
    totals: dict[tuple[str, str], float] = {}
    for endpoint, status, value in re.findall(
        r'^bge_proxy_requests_total\{endpoint="([^"]*)",model="[^"]*",status="(\d+)"\} (\S+)$', metrics, re.M
    ):
        totals[endpoint, status] = totals.get((endpoint, status), 0.0) + float(value)
    return totals


# -- §3: inputs that gave 500 ---------------------------------------------------------------------------------


LONE_SURROGATE_BODIES = {
    "/v1/embeddings": '{"model": "\\ud800", "input": "x"}',
    "/tokenize": '{"model": "\\ud800", "inputs": "x"}',
    "/embed_sparse": '{"model": "\\ud800", "inputs": "x"}',
    "/v1/similarity": '{"model": "\\ud800", "query": "q", "passages": ["p"]}',
}


@pytest.mark.parametrize("path", list(LONE_SURROGATE_BODIES))
def test_lone_surrogate_model_is_404_naming_it(proxy: Service, path: str) -> None:
    error = _error(_post_raw(proxy.url, path, LONE_SURROGATE_BODIES[path]), 404)
    assert error["code"] == "model_not_found" and "'\\ud800'" in error["message"], error


@pytest.mark.parametrize("ids", [[2**63], [[2**63]], [[5, 2**64 + 7]], [[7592], [2**63 - 1 + 1, 1]], [2**100]], ids=str)
def test_token_ids_beyond_int64_are_400(proxy: Service, ids: list) -> None:
    response = _post_raw(proxy.url, "/v1/embeddings", json.dumps({"model": MODEL, "input": ids}))
    error = _error(response, 400)
    assert (error["code"], error["param"]) == ("invalid_token_id", "input") and "2**63" in error["message"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": True}, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": "8"}, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "dimensions": 8.0}, "dimensions"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "truncate": "false"}, "truncate"),
        ("/v1/embeddings", {"model": MODEL, "input": "x", "truncate": 0}, "truncate"),
        ("/tokenize", {"model": MODEL, "inputs": "x", "add_special_tokens": 1}, "add_special_tokens"),
        ("/v1/similarity", {"query": "q", "passages": ["p"], "weights": {"dense": "1"}}, "weights.dense"),
        ("/v1/similarity", {"query": "q", "passages": ["p"], "weights": {"sparse": True}}, "weights.sparse"),
    ],
)
def test_request_schema_is_strict(proxy: Service, path: str, body: dict, param: str) -> None:
    error = _error(httpx.post(f"{proxy.url}{path}", json=body, timeout=30), 400)
    assert error["param"] == param, error


def test_integer_dimensions_still_work(proxy: Service) -> None:
    response = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 8})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 8


def test_every_answer_is_counted_and_logged_once(proxy: Service) -> None:
    """The former 500s and a mix of other answers: each one in bge_proxy_requests_total and one log line."""
    before = _requests_total(httpx.get(f"{proxy.url}/metrics").text)
    sent = [
        _post_raw(proxy.url, "/v1/embeddings", LONE_SURROGATE_BODIES["/v1/embeddings"]),
        _post_raw(proxy.url, "/v1/embeddings", json.dumps({"model": MODEL, "input": [2**63]})),
        httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": "counted", "dimensions": True}),
        httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": "counted"}),
        httpx.get(f"{proxy.url}/no/such/path"),
        httpx.get(f"{proxy.url}/v1/embeddings"),
    ]
    assert [r.status_code for r in sent] == [404, 400, 400, 200, 404, 405]
    after = _requests_total(httpx.get(f"{proxy.url}/metrics").text)
    grown = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
    assert grown == {("/v1/embeddings", "404"): 1, ("/v1/embeddings", "400"): 2, ("/v1/embeddings", "200"): 1,
                     (UNMATCHED, "404"): 1, ("/v1/embeddings", "405"): 1, ("/metrics", "200"): 1}, grown  # fmt: skip
    log = proxy.log_text()
    assert len(re.findall(r"^.*GET /no/such/path model=- .*status=404", log, re.M)) == 1
    assert "Traceback" not in log and "unexpected error" not in log


def test_an_unexpected_error_is_one_counted_500_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """In-process: an exception no handler takes is answered 500 in OpenAI JSON, counted, logged once with its
    traceback, and does not escape to the server (which logged it a second time)."""
    app = FastAPI()
    metrics = ProxyMetrics()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_middleware(AccessLog, router=app.router, metrics=metrics)
    with caplog.at_level(logging.INFO, logger="bge_triton.proxy"), TestClient(app) as client:
        response = client.get("/boom")  # TestClient re-raises an exception that escapes the app
    assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
    value = metrics.registry.get_sample_value(
        "bge_proxy_requests_total", {"endpoint": "/boom", "model": "", "status": "500"}
    )
    assert value == 1.0
    assert metrics.registry.get_sample_value("bge_proxy_errors_total", {"type": "server_error"}) == 1.0
    assert sum(1 for r in caplog.records if r.exc_info) == 1
    assert sum(1 for r in caplog.records if "GET /boom" in r.getMessage() and "status=500" in r.getMessage()) == 1


def test_chunked_body_over_the_limit_is_413(proxy: Service) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "' + MODEL.encode() + b'", "input": "'
        for _ in range(17):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    response = httpx.post(f"{proxy.url}/v1/embeddings", content=chunks(), timeout=60,
                          headers={"content-type": "application/json"})  # fmt: skip
    assert "content-length" not in response.request.headers  # sent chunked
    assert _error(response, 413)["code"] == "body_too_large"
    assert httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": "x"}).status_code == 200


def test_body_shorter_than_its_content_length_is_408(proxy: Service) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT_S + 10) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"model": "x"')  # fmt: skip
        answer = _read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code":"body_timeout"' in answer and b"connection: close" in answer.lower()
    assert BODY_TIMEOUT_S - 0.1 <= elapsed < BODY_TIMEOUT_S + 5, elapsed


def _read_until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a reset, when it closes unread data, too)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


# -- §2: /ready while Triton does not answer ------------------------------------------------------------------


def _tritonserver(options: TritonOptions) -> psutil.Process:
    flag = f"--grpc-port={options.grpc_port}"
    found = []
    for child in psutil.Process().children(recursive=True):
        try:  # other tests' exited children may linger as zombies (no command line)
            if flag in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue
    assert len(found) == 1, found
    return found[0]


def test_ready_is_503_within_2_s_while_triton_is_stopped(proxy: Service, triton: TritonOptions) -> None:
    assert httpx.get(f"{proxy.url}/ready", timeout=10).status_code == 200
    server = _tritonserver(triton)
    timings = []
    try:
        server.send_signal(signal.SIGSTOP)
        for _ in range(3):  # every answer is a fresh check: nothing stale is cached
            started = time.monotonic()
            ready = httpx.get(f"{proxy.url}/ready", timeout=10)
            timings.append(time.monotonic() - started)
            assert ready.status_code == 503 and ready.headers["retry-after"] == "1", ready.text
            assert _error(ready, 503)["code"] == "not_ready"
    finally:
        server.send_signal(signal.SIGCONT)
    print(f"/ready with Triton stopped: {', '.join(f'{t:.2f}' for t in timings)} s")
    assert max(timings) < 2.0, timings
    deadline = time.monotonic() + 30
    while httpx.get(f"{proxy.url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "not ready again 30 s after SIGCONT"
        time.sleep(0.2)
    assert httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": "back"}).status_code == 200


# -- §4: one request cannot hold the service hostage ----------------------------------------------------------


def test_issue_sized_request_is_413_up_front(proxy: Service) -> None:
    """780 texts x 20,000 characters (15.6 MB, under the 16 MiB body limit): 413 at once, not 429 after 133 s."""
    texts = [(f"text {i} " + "abcdefghi " * 2000)[:20_000] for i in range(780)]
    started = time.monotonic()
    response = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=60)
    elapsed = time.monotonic() - started
    error = _error(response, 413)
    assert error["code"] == "request_too_large" and "15600000 characters" in error["message"], error
    assert elapsed < 15, elapsed
    print(f"780 x 20,000 characters: 413 after {elapsed:.2f} s")
    tokenize = httpx.post(f"{proxy.url}/tokenize", json={"model": MODEL, "inputs": "x" * 5_000_000}, timeout=60)
    assert _error(tokenize, 413)["param"] == "inputs"


# -- §5: metrics cardinality, held connections ----------------------------------------------------------------


def test_metrics_stay_small_after_2000_random_paths(proxy: Service) -> None:
    rng = random.Random(14)
    assert httpx.get(f"{proxy.url}/first-unknown-path").status_code == 404  # the `unmatched` series exist
    before = httpx.get(f"{proxy.url}/metrics").text
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        for _ in range(2000):
            path = "/" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))
            assert client.get(path).status_code == 404
    after = httpx.get(f"{proxy.url}/metrics").text
    print(f"/metrics: {len(before)} bytes before, {len(after)} after 2,000 random paths")
    assert _requests_total(after)[UNMATCHED, "404"] >= 2000
    endpoints = set(re.findall(r'endpoint="([^"]*)"', after))
    assert endpoints <= {"/v1/embeddings", "/tokenize", "/v1/similarity", "/embed_sparse", "/ready", "/metrics",
                         "/health", UNMATCHED}, endpoints  # fmt: skip
    assert len(after) - len(before) < 400  # counts grew a digit or two; no new series


def test_held_partial_header_connections_are_bounded_and_closed(proxy: Service) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    server = psutil.Process(proxy.process.pid)
    fds_before = server.num_fds()
    held = []
    try:
        for _ in range(MAX_CONNECTIONS + 30):
            sock = socket.create_connection(("127.0.0.1", port), timeout=HEADER_TIMEOUT_S + 10)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(sock)
        time.sleep(0.5)
        fds_held = server.num_fds()
        started = time.monotonic()
        closed = [_read_until_closed(sock) for sock in held]  # each returns once the proxy closes it
        waited = time.monotonic() - started
    finally:
        for sock in held:
            sock.close()
    print(f"proxy descriptors: {fds_before} idle, {fds_held} with {len(held)} held connections; "
          f"all closed {waited:.2f} s later")  # fmt: skip
    assert closed == [b""] * len(held)
    assert fds_held - fds_before <= MAX_CONNECTIONS + 2, (fds_before, fds_held)
    assert waited < HEADER_TIMEOUT_S + 5, waited
    assert httpx.get(f"{proxy.url}/health", timeout=5).status_code == 200
    log = proxy.log_text()
    assert len(re.findall(r"connections open \(--max-connections\)", log)) == 1
    assert "Traceback" not in log


def test_small_request_is_answered_promptly_during_a_large_one(proxy: Service) -> None:
    """A 512-text x ~2,000-character request (every text at MiniLM's 256-token window) runs while one-text probes
    are sent one after another: each probe waits for at most the Triton calls already running, not the big
    request's whole backlog."""
    import threading

    texts = [(f"passage {i} " + "the quick brown fox jumps over the lazy dog " * 50)[:2000] for i in range(512)]
    result: dict[str, object] = {}

    def big() -> None:
        started = time.monotonic()
        response = httpx.post(f"{proxy.url}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=300)
        result["status"], result["seconds"] = response.status_code, time.monotonic() - started

    probe_body = {"model": MODEL, "input": "one short probe"}
    alone = []
    for _ in range(5):
        started = time.monotonic()
        assert httpx.post(f"{proxy.url}/v1/embeddings", json=probe_body, timeout=60).status_code == 200
        alone.append(time.monotonic() - started)
    thread = threading.Thread(target=big)
    thread.start()
    during = []
    try:
        time.sleep(1.0)  # the big request is under way
        while thread.is_alive() and len(during) < 30:
            started = time.monotonic()
            assert httpx.post(f"{proxy.url}/v1/embeddings", json=probe_body, timeout=120).status_code == 200
            during.append(time.monotonic() - started)
            time.sleep(0.2)
    finally:
        thread.join(timeout=300)
    during.sort()
    print(f"probe alone: median {sorted(alone)[2]:.3f} s; during the big request ({result}): n={len(during)}, "
          f"median {during[len(during) // 2]:.2f} s, max {during[-1]:.2f} s")  # fmt: skip
    assert result["status"] == 200 and len(during) >= 3
    assert during[-1] < 3.0, during


def test_fair_gate_gives_a_newcomer_the_next_free_slot() -> None:
    """In-process: request A queues 10 calls of the whole capacity, then B queues 1: B gets the room A frees
    next, not A's backlog; nothing is lost when a waiter is cancelled; small turns share the capacity."""
    import asyncio

    from bge_triton.client.proxy.fair_share import FairGate

    async def scenario() -> list[str]:
        gate = FairGate(10)
        order: list[str] = []
        release = asyncio.Event()

        async def call(owner: str, tag: str) -> None:
            async with gate.turn(owner, 10):
                order.append(tag)
                await release.wait()

        a = [asyncio.create_task(call("A", f"A{i}")) for i in range(10)]
        await asyncio.sleep(0)
        b = asyncio.create_task(call("B", "B0"))
        cancelled = asyncio.create_task(call("C", "C0"))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*a, b)
        assert gate.busy == 0 and not gate.held and not gate.waiting and not gate.last_turn
        return order

    assert asyncio.run(scenario())[:3] == ["A0", "B0", "A1"]

    async def small_ones_share() -> int:
        gate = FairGate(10)
        inside = 0
        most = 0

        async def call(owner: int) -> None:
            nonlocal inside, most
            async with gate.turn(owner, 2):
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(call(i) for i in range(12)))
        return most

    assert asyncio.run(small_ones_share()) == 5  # 5 x 2 tokens fit in 10 at once
