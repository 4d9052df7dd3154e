"""Overload, a SIGKILLed tritonserver, graceful shutdown: bounded load on loopback only."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import psutil
import pytest

from bge_triton.export.exporter import ExportResult
from bge_triton.export.model_configs import BatchingOptions
from bge_triton.export.onnx_export import encoder_input_names
from bge_triton.export.repository import write_repository
from bge_triton.launcher import TritonOptions, TritonServer, free_port

if TYPE_CHECKING:
    from conftest import Service  # the spawn fixture's process type

MODEL = "all-MiniLM-L6-v2"
TEXTS = [f"第{i}段：用 Triton 部署向量模型，批处理和队列决定了延迟。" * 2 for i in range(8)]  # ~8 x 60 tokens
BODY = {"model": MODEL, "input": TEXTS, "encoding_format": "base64"}


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int | None = None  # None: the request got no HTTP answer (lost)
    error: str = ""
    retry_after: str | None = None


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)

    def statuses(self) -> dict[int | None, int]:
        out: dict[int | None, int] = {}
        for o in self.outcomes:
            out[o.status] = out.get(o.status, 0) + 1
        return out

    def lost(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status is None]

    def p(self, q: float, status: int = 200) -> float:
        times = sorted(o.seconds for o in self.outcomes if o.status == status)
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")


def _tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


async def _one(client: httpx.AsyncClient, url: str, report: LoadReport) -> None:
    started = time.perf_counter()
    outcome = Outcome(started, 0.0)
    try:
        response = await client.post(f"{url}/v1/embeddings", json=BODY)
        outcome.status = response.status_code
        outcome.retry_after = response.headers.get("retry-after")
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.seconds = time.perf_counter() - started
    report.outcomes.append(outcome)


async def closed_loop(
    url: str, workers: int, seconds: float, stop: threading.Event | None = None, report: LoadReport | None = None
) -> LoadReport:
    """`workers` clients each sending the next request when the last is answered, for `seconds` or until `stop`."""
    report = report if report is not None else LoadReport()
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            await _one(client, url, report)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return report


async def open_loop(url: str, rate: float, seconds: float, max_requests: int) -> tuple[LoadReport, float]:
    """Start requests at `rate` per second whatever the answers; returns the report and the rate achieved."""
    report = LoadReport()
    tasks = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        start = time.perf_counter()
        n = 0
        while n < max_requests and (elapsed := time.perf_counter() - start) < seconds:
            due = n / rate
            if due > elapsed:
                await asyncio.sleep(due - elapsed)
            tasks.append(asyncio.create_task(_one(client, url, report)))
            n += 1
        offered = n / (time.perf_counter() - start)
        await asyncio.gather(*tasks)
    return report, offered


# -- overload ------------------------------------------------------------------------------------


def test_overload_at_four_times_saturation_sheds_with_429(
    triton: TritonOptions, spawn: Callable[..., Service], record_property: Callable[[str, object], None]
) -> None:
    port = free_port()
    # --no-cache: the load repeats its texts, and every request must reach Triton
    proxy = spawn(["serve-proxy", "--triton-url", triton.grpc_url, "--port", str(port), "--max-in-flight", "4",
                   "--no-cache"], port=port, ready_path="/ready")  # fmt: skip
    saturation = asyncio.run(closed_loop(proxy.url, workers=4, seconds=4))
    assert set(saturation.statuses()) == {200}, saturation.statuses()
    rate = len(saturation.outcomes) / 4
    baseline_p50 = saturation.p(0.5)

    triton_pid = next(
        p.pid for p in psutil.Process().children() if p.name() == "tritonserver" and triton.grpc_url.split(":")[1]
        in " ".join(p.cmdline())
    )  # fmt: skip
    peak = {"proxy": 0, "triton": 0}
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak["proxy"] = max(peak["proxy"], _tree_rss([proxy.process.pid]))
            peak["triton"] = max(peak["triton"], _tree_rss([triton_pid]))
            time.sleep(0.1)

    rss_before = {"proxy": _tree_rss([proxy.process.pid]), "triton": _tree_rss([triton_pid])}
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        report, offered = asyncio.run(open_loop(proxy.url, rate=4 * rate, seconds=8, max_requests=4000))
    finally:
        sampling.set()
        sampler.join()
    statuses = report.statuses()
    summary = {
        "saturation_rps": round(rate, 1), "offered_rps": round(offered, 1), "factor": round(offered / rate, 2),
        "statuses": {str(k): v for k, v in statuses.items()}, "accepted_p50_s": round(report.p(0.5), 3),
        "accepted_p99_s": round(report.p(0.99), 3), "rejected_p99_s": round(report.p(0.99, 429), 3),
        "proxy_rss_mb": [rss_before["proxy"] // 2**20, peak["proxy"] // 2**20],
        "triton_rss_mb": [rss_before["triton"] // 2**20, peak["triton"] // 2**20],
    }  # fmt: skip
    record_property("overload", summary)
    print("overload:", summary)
    assert not report.lost(), report.lost()[:3]
    assert set(statuses) <= {200, 429}, statuses
    assert offered >= 3 * rate, summary  # the load generator really offered ~4x
    assert statuses.get(429, 0) > 0 and statuses.get(200, 0) > 0, summary
    assert all(o.retry_after for o in report.outcomes if o.status == 429)
    assert report.p(0.99) < 10 * max(baseline_p50, 0.05), summary  # accepted latency stays bounded
    assert peak["proxy"] < rss_before["proxy"] + 256 * 2**20, summary  # no unbounded queue in the proxy
    assert peak["triton"] < rss_before["triton"] + 1024 * 2**20, summary
    after = asyncio.run(closed_loop(proxy.url, workers=1, seconds=2))  # back to normal right after
    assert set(after.statuses()) == {200} and after.p(0.5) < 3 * max(baseline_p50, 0.05)


def test_triton_queue_rejections_become_429(
    exported: ExportResult, spawn: Callable[..., Service], tmp_path: Path
) -> None:
    """Triton's own backstop (max_queue_size) answers 'Exceeds maximum queue size' -> 429 + Retry-After."""
    repo, name = exported.ensemble_dir.parent, exported.facts.name
    tiny = tmp_path / "tiny_queue"
    write_repository(
        tiny, exported.facts,
        tokenizer_json=repo / f"{name}-tokenizer/1/tokenizer.json",
        encoder_onnx=repo / f"{name}-encoder/1/model.onnx",
        pooling_onnx=repo / f"{name}-pooling/1/model.onnx",
        input_names=encoder_input_names(exported.facts),
        opts=BatchingOptions(max_queue_size=1, max_batch_size=8, preferred_batch_sizes=(8,)),
    )  # fmt: skip
    options = TritonOptions(tiny, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with TritonServer(options, log_file=tmp_path / "triton.log"):
        port = free_port()
        proxy = spawn(["serve-proxy", "--triton-url", options.grpc_url, "--port", str(port), "--no-cache"], port=port)
        report, _ = asyncio.run(open_loop(proxy.url, rate=200, seconds=2, max_requests=300))
    statuses = report.statuses()
    assert not report.lost() and set(statuses) <= {200, 429}, statuses
    assert statuses.get(429, 0) > 0, statuses
    assert all(o.retry_after for o in report.outcomes if o.status == 429)


# -- faults --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(repository: Path, spawn: Callable[..., Service]) -> Service:
    """`bge-triton serve` (Triton + proxy) on free ports."""
    ports = [free_port() for _ in range(4)]
    return spawn(
        ["serve", "--repository", str(repository), "--http-port", str(ports[0]), "--grpc-port", str(ports[1]),
         "--metrics-port", str(ports[2]), "--proxy-port", str(ports[3]), "--grace-period", "20",
         "--no-cache"],  # the load repeats its texts: every request must reach Triton
        port=ports[3], ready_path="/ready",
    )  # fmt: skip


def _tritonserver(service: Service) -> psutil.Process:
    children = psutil.Process(service.process.pid).children()
    return next(p for p in children if p.name() == "tritonserver")


def _shm_regions(server: psutil.Process) -> list[Path]:
    """The /dev/shm files of a tritonserver's Python backend (named by its shm-region-prefix-name)."""
    (arg,) = [a for a in server.cmdline() if "shm-region-prefix-name=" in a]
    prefix = arg.split("shm-region-prefix-name=", 1)[1]
    return sorted(Path("/dev/shm").glob(f"{prefix}*"))


def test_sigkilled_triton_answers_503_fast_and_is_restarted(
    served: Service, record_property: Callable[[str, object], None]
) -> None:
    report = LoadReport()
    stop = threading.Event()
    loader = threading.Thread(target=lambda: asyncio.run(closed_loop(served.url, 4, 120, stop, report)))
    loader.start()
    try:
        time.sleep(1.5)
        old = _tritonserver(served)
        old_regions = _shm_regions(old)
        old.send_signal(signal.SIGKILL)
        killed_at = time.perf_counter()
        seen_not_ready = False
        while time.perf_counter() - killed_at < 5 and not seen_not_ready:
            seen_not_ready = httpx.get(f"{served.url}/ready", timeout=5).status_code == 503
            time.sleep(0.1)
        recovered_at = None
        while time.perf_counter() - killed_at < 90:
            if httpx.get(f"{served.url}/ready", timeout=5).status_code == 200:
                recovered_at = time.perf_counter()
                break
            time.sleep(0.2)
        time.sleep(1.5)  # load continues on the restarted server
    finally:
        stop.set()
        loader.join()
    statuses = report.statuses()
    after = [o for o in report.outcomes if recovered_at and o.started > recovered_at + 0.5]
    slowest_503 = max((o.seconds for o in report.outcomes if o.status == 503), default=0.0)
    summary = {
        "statuses": {str(k): v for k, v in statuses.items()},
        "lost": len(report.lost()),
        "recovery_s": round((recovered_at or float("nan")) - killed_at, 1),
        "max_503_latency_s": round(slowest_503, 2),
    }
    record_property("sigkill", summary)
    print("sigkill:", summary)
    assert seen_not_ready, "/ready never went 503 after tritonserver was killed"
    assert recovered_at is not None, served.log_text()[-3000:]
    assert not report.lost(), report.lost()[:3]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.get(503, 0) > 0
    assert all(o.seconds < 2.0 for o in report.outcomes if o.status == 503), summary
    assert all(o.retry_after for o in report.outcomes if o.status == 503)
    assert after and all(o.status == 200 for o in after), summary
    assert served.process.poll() is None  # the proxy was not restarted
    assert _tritonserver(served).pid != old.pid
    stubs = [p for p in psutil.process_iter(["cmdline"]) if str(old.pid) in (p.info["cmdline"] or [])]
    assert not stubs, "the killed server's Python-backend stubs were left running"
    log = served.log_text()
    assert "tritonserver exited with code -9; restarting in" in log and "tritonserver restarted and ready" in log
    # The killed server's Python-backend shared memory (64 MB a region) is removed, the new server has its own.
    assert old_regions and not any(path.exists() for path in old_regions), old_regions
    new_regions = _shm_regions(_tritonserver(served))
    assert new_regions and not set(new_regions) & set(old_regions)


def _embedding(url: str) -> list[float]:
    response = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": TEXTS[0]}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["embedding"]


@pytest.mark.parametrize("stub", ["tokenizer", "encoder"])
def test_sigkilled_stub_is_healed_without_500s(
    served: Service, stub: str, record_property: Callable[[str, object], None]
) -> None:
    """Triton keeps a model whose Python-backend stub died READY but answering "not healthy" (500s forever);
    the supervisor sees the stub gone and restarts tritonserver: /ready 503 within 5 s, correct vectors again
    within 30 s, clients never see a 500."""
    reference = np.array(_embedding(served.url))
    triton = _tritonserver(served)
    (victim,) = [
        p
        for p in triton.children()
        if p.name().startswith("triton_python") and f"{MODEL}-{stub}_0" in " ".join(p.cmdline())
    ]
    report = LoadReport()
    stop = threading.Event()
    loader = threading.Thread(target=lambda: asyncio.run(closed_loop(served.url, 2, 120, stop, report)))
    loader.start()
    try:
        time.sleep(1.0)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.perf_counter()
        not_ready_s = healed_s = None
        while time.perf_counter() - killed_at < 60 and healed_s is None:
            elapsed = time.perf_counter() - killed_at
            ready = httpx.get(f"{served.url}/ready", timeout=5).status_code
            if ready == 503 and not_ready_s is None:
                not_ready_s = elapsed
            if ready == 200 and not_ready_s is not None:
                healed_s = elapsed
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        stop.set()
        loader.join()
    vector = np.array(_embedding(served.url))
    statuses = report.statuses()
    summary = {"statuses": {str(k): v for k, v in statuses.items()}, "not_ready_s": not_ready_s, "healed_s": healed_s}
    record_property(f"stub_kill_{stub}", summary)
    print(f"SIGKILL {stub} stub:", summary)
    assert not_ready_s is not None and not_ready_s < 5, summary
    assert healed_s is not None and healed_s < 30, served.log_text()[-3000:]
    assert set(statuses) <= {200, 503}, summary  # never a 500
    assert not report.lost()
    assert float(vector @ reference) > 0.9999
    assert f"the Python-backend stub of {MODEL}-{stub}_0_0 died" in served.log_text()


def test_sigterm_drains_in_flight_requests_then_exits(served: Service) -> None:
    texts = [f"段落 {i}：" + "向量检索服务需要优雅停机。" * 12 for i in range(400)]  # a few seconds of work
    result: dict[str, object] = {}

    def long_request() -> None:
        response = httpx.post(f"{served.url}/v1/embeddings", json={"model": MODEL, "input": texts}, timeout=120)
        result["status"] = response.status_code
        result["n"] = len(response.json()["data"]) if response.status_code == 200 else response.text

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(1.0)  # the request is in flight
    triton = _tritonserver(served)
    served.process.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    assert result == {"status": 200, "n": 400}
    assert served.process.wait(timeout=60) == 0
    assert not triton.is_running() or triton.status() == psutil.STATUS_ZOMBIE
