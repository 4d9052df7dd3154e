"""tritonserver's own output, relayed into this process's log under the `bge_triton.triton` logger.

Triton writes glog lines (`I1201 17:36:06.831680 6169 model_lifecycle.cc:839] "successfully loaded 'x'"`) and
ASCII tables. Relayed, each line becomes one record at its own level (I/W/E/F -> INFO/WARNING/ERROR/CRITICAL) with
the service's timestamp and logger name; the startup tables go to DEBUG (`bge-triton -v` shows them).

On a host without a GPU, the GPU-enabled tritonserver build still probes CUDA, NVML and DCGM, and reports the failed
probes as errors (`CudaDriverHelper has not been initialized`, `unable to create stream for MODEL: CUDA driver
version is insufficient ...`, `Failed to initialize NVML`). No Triton option stops the CUDA ones, so with
`cpu_only` those lines go to DEBUG; the launcher says once, at INFO, that it serves on CPU.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import IO

log = logging.getLogger("bge_triton.triton")

_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^\]]*\] ?(.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
# What the GPU build prints when it finds no GPU (tritonserver 2.51 on a CPU-only host).
GPU_PROBE_MESSAGES: tuple[str, ...] = (
    "CudaDriverHelper has not been initialized",
    "unable to create stream for",
    "Failed to initialize NVML",
    "DCGM unable to start",
    "Unable to allocate pinned system memory",
    "CUDA memory pool disabled",
    "Pinned memory pool disabled",
    "CUDA driver version is insufficient",
    "no CUDA-capable device is detected",
)


def classify(line: str, *, cpu_only: bool) -> tuple[int, str] | None:
    """The level and message one line of tritonserver output is logged with; None for a blank line."""
    line = line.rstrip()
    if not line.strip():
        return None
    match = _GLOG.match(line)
    if match:
        level, message = _LEVELS[match.group(1)], _unquote(match.group(2))
        if not message:  # the heading of a table that follows on its own lines
            return None
    elif line.startswith(("+", "|")):
        return logging.DEBUG, line  # a row of a startup table
    else:
        level, message = logging.INFO, line  # Triton's "Signal (15) received.", a Python model's print()
    if cpu_only and any(probe in message for probe in GPU_PROBE_MESSAGES):
        return logging.DEBUG, message
    return level, message


def _unquote(message: str) -> str:
    message = message.strip()
    if len(message) >= 2 and message[0] == message[-1] == '"':
        return message[1:-1].replace('\\"', '"')
    return message


class TritonOutputRelay:
    """A daemon thread that reads a tritonserver's stdout+stderr pipe until it closes and logs every line."""

    def __init__(self, stream: IO[bytes], *, cpu_only: bool):
        self.stream = stream
        self.cpu_only = cpu_only
        self._thread = threading.Thread(target=self._run, name="triton-output", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for the last lines (the pipe closes when Triton and its Python-backend stubs have exited)."""
        self._thread.join(timeout_s)

    def _run(self) -> None:
        with self.stream:
            for raw in iter(self.stream.readline, b""):
                record = classify(raw.decode("utf-8", errors="replace"), cpu_only=self.cpu_only)
                if record is not None:
                    log.log(*record)
