"""grpcio settings that only a process's environment carries: set from bge_triton's package init, before grpc.

`GRPC_EXPERIMENTS=-event_engine_client`. grpcio's EventEngine client (its default) reads each answer on a
poller thread and hands it through two more threads to the caller waiting on it (strace of one call: epoll_wait
-> futex -> futex -> eventfd); without it the calling thread reads its own answer. A single query over gRPC came
back 0.16-0.36 ms sooner with ~0.17 ms less CPU per call, and the asyncio client's throughput at 8 concurrent
requests was the same (issue 19; bench/grpc_client_share.py, docs/benchmarks.md).

grpc reads the variable once, when it is first imported: a process that imported grpc before bge_triton keeps
grpc's default, and a GRPC_EXPERIMENTS already set (even empty) is left as it is. Triton's own gRPC server
ignores this client-side setting.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping

EXPERIMENTS_VARIABLE = "GRPC_EXPERIMENTS"
CLIENT_EXPERIMENTS = "-event_engine_client"


def prefer_caller_reads(environ: MutableMapping[str, str], loaded_modules: frozenset[str] | None = None) -> bool:
    """Set CLIENT_EXPERIMENTS in `environ` unless the variable is set or grpc is already imported; True if set."""
    loaded = sys.modules.keys() if loaded_modules is None else loaded_modules
    if EXPERIMENTS_VARIABLE in environ or "grpc" in loaded:
        return False
    environ[EXPERIMENTS_VARIABLE] = CLIENT_EXPERIMENTS
    return True
