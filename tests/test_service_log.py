"""The service log's parts without a service: Triton's output lines as relayed, uvicorn's records renamed, the
startup line. tests/test_quality.py checks a real `bge-triton serve` start and stop end to end."""

from __future__ import annotations

import logging

import pytest

from bge_triton.service_log import PROXY_HTTP_LOGGER, service_urls, setup_logging
from bge_triton.triton_output import classify

# tritonserver 2.51 (the nvidia-pytriton build) starting on a host without a GPU, verbatim
CPU_HOST_PROBES = [
    'W1201 17:35:58.595433 6169 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, pinned memory '
    'pool will not be available: CUDA driver version is insufficient for CUDA runtime version"',
    'I1201 17:35:58.595517 6169 cuda_memory_manager.cc:117] "CUDA memory pool disabled"',
    'E1201 17:35:58.595596 6169 server.cc:241] "CudaDriverHelper has not been initialized."',
    'E1201 17:36:06.831619 6169 ensemble_scheduler.cc:1468] "unable to create stream for multilingual-e5-small: CUDA '
    'driver version is insufficient for CUDA runtime version"',
    "Error: Failed to initialize NVML",
    'W1201 17:36:06.833551 6169 metrics.cc:798] "DCGM unable to start: DCGM initialization error"',
]


@pytest.mark.parametrize("line", CPU_HOST_PROBES)
def test_gpu_probes_of_a_cpu_host_are_debug(line: str) -> None:
    assert classify(line, cpu_only=True)[0] == logging.DEBUG  # type: ignore[index]
    assert classify(line, cpu_only=False)[0] >= logging.INFO  # type: ignore[index]  # with a GPU they matter


def test_triton_lines_keep_their_level_and_lose_the_glog_prefix() -> None:
    loaded = "I1201 17:36:06.831680 6169 model_lifecycle.cc:839] \"successfully loaded 'multilingual-e5-small'\""
    assert classify(loaded, cpu_only=True) == (logging.INFO, "successfully loaded 'multilingual-e5-small'")
    failed = 'E1201 17:36:06.1 6169 model_lifecycle.cc:641] "failed to load \'x\' version 1: Invalid argument: \\"y\\""'
    assert classify(failed, cpu_only=True) == (logging.ERROR, "failed to load 'x' version 1: Invalid argument: \"y\"")
    assert classify('W1201 17:36:06.833551 6169 a.cc:1] "careful"', cpu_only=True) == (logging.WARNING, "careful")
    assert classify("I1201 17:36:06.831860 6169 server.cc:604] ", cpu_only=True) is None  # a table's heading
    assert classify("| multilingual-e5-small | 1 | READY |", cpu_only=True) == (
        logging.DEBUG, "| multilingual-e5-small | 1 | READY |")  # fmt: skip
    assert classify("   ", cpu_only=True) is None
    assert classify("Signal (15) received.", cpu_only=True) == (logging.INFO, "Signal (15) received.")


def test_uvicorn_records_carry_the_project_logger_name(caplog: pytest.LogCaptureFixture) -> None:
    setup_logging(verbose=False)
    uvicorn = logging.getLogger("uvicorn.error")
    with caplog.at_level(logging.DEBUG):
        uvicorn.info("Started server process [1]")  # chatter: below the service's level
        uvicorn.error("[Errno 98] error while attempting to bind on address")
    assert [(r.name, r.levelname) for r in caplog.records if "Errno" in r.getMessage()] == [
        (PROXY_HTTP_LOGGER, "ERROR")
    ]
    assert not any("Started server process" in r.getMessage() for r in caplog.records)


def test_the_startup_line_lists_every_url() -> None:
    line = service_urls(
        "127.0.0.1", 8080, [("http://127.0.0.1:8000", "127.0.0.1:8001", "http://127.0.0.1:8002/metrics")]
    )
    assert line == (
        "ready: OpenAI API http://127.0.0.1:8080/v1 · web page http://127.0.0.1:8080/ui/ · API docs "
        "http://127.0.0.1:8080/docs | Triton HTTP http://127.0.0.1:8000 · gRPC 127.0.0.1:8001 · metrics "
        "http://127.0.0.1:8002/metrics"
    )
    assert service_urls("0.0.0.0", 9000).startswith("ready: OpenAI API http://127.0.0.1:9000/v1 ")
    assert "Triton" not in service_urls("::1", 9000) and "http://[::1]:9000/v1" in service_urls("::1", 9000)
