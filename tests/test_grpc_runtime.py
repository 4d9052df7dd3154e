"""bge_triton/grpc_runtime.py: grpc's calling thread reads its own answers in a process that imports bge_triton
first; a GRPC_EXPERIMENTS of the user's, or grpc imported before, is left alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bge_triton.grpc_runtime import CLIENT_EXPERIMENTS, EXPERIMENTS_VARIABLE, prefer_caller_reads
from bge_triton.launcher import TritonOptions


def test_set_only_when_unset_and_before_grpc() -> None:
    environ: dict[str, str] = {}
    assert prefer_caller_reads(environ, frozenset({"os"}))
    assert environ == {EXPERIMENTS_VARIABLE: CLIENT_EXPERIMENTS}
    users = {EXPERIMENTS_VARIABLE: ""}  # set, even empty: the user's choice
    assert not prefer_caller_reads(users, frozenset())
    assert users == {EXPERIMENTS_VARIABLE: ""}
    late: dict[str, str] = {}
    assert not prefer_caller_reads(late, frozenset({"grpc"}))  # grpc already read its settings
    assert late == {}


def _environment_after(code: str, **extra: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != EXPERIMENTS_VARIABLE} | extra
    done = subprocess.run(
        [sys.executable, "-c", code + "\nprint(repr(os.environ.get('GRPC_EXPERIMENTS')))"],
        capture_output=True, text=True, env=environ, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1].strip("'")


def test_importing_the_client_library_sets_it_for_the_process() -> None:
    assert _environment_after("import os, bge_triton.client") == CLIENT_EXPERIMENTS
    assert _environment_after("import os, bge_triton.client", GRPC_EXPERIMENTS="") == ""
    assert _environment_after("import os, grpc, bge_triton.client") == "None"


CALLS = """
import os, sys, threading
import bge_triton.client
from bge_triton.client import EmbeddingClient
client = EmbeddingClient(sys.argv[1], model=sys.argv[2])
client.embed(["warm-up: the connection and the model's configuration"])
os.write(2, b"CALLS\\n")
for _ in range(5):
    assert client.embed(["hello world"]).shape[0] == 1
os.write(2, f"CALLER {threading.get_native_id()}\\n".encode())
"""


def _answer_reads(triton: TritonOptions, model: str, tmp_path: Path, **extra: str) -> tuple[int, Counter[int]]:
    """The caller's thread id and, per thread, how many times it received bytes on a socket during five calls."""
    script = tmp_path / "calls.py"
    script.write_text(CALLS)
    environ = {k: v for k, v in os.environ.items() if k != EXPERIMENTS_VARIABLE} | extra
    done = subprocess.run(
        ["strace", "-f", "-e", "trace=recvmsg", sys.executable, str(script), triton.grpc_url, model],
        capture_output=True, text=True, env=environ, timeout=300, check=False,
    )  # fmt: skip
    caller = re.search(r"CALLER (\d+)", done.stderr)
    if "PTRACE" in done.stderr or "Operation not permitted" in done.stderr:
        pytest.skip(f"strace may not trace processes here: {done.stderr[-300:]}")
    assert done.returncode == 0 and caller is not None, done.stderr[-2000:]
    main = int(caller.group(1))
    calls = done.stderr[done.stderr.index("CALLS\n") : caller.start()]
    # A call strace saw whole ("recvmsg(...) = 51") or resumed after another thread's line ("<... recvmsg resumed>").
    received = re.findall(r"^(?:\[pid\s+(\d+)\] )?(?:recvmsg\(|<\.\.\. recvmsg resumed>).*\) = [1-9]", calls, re.M)
    return main, Counter(int(pid or main) for pid in received)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_calling_thread_reads_its_answers(triton: TritonOptions, tmp_path: Path) -> None:
    model = "all-MiniLM-L6-v2"
    main, reads = _answer_reads(triton, model, tmp_path)
    assert reads[main] >= 5, reads  # each of the five answers read by the thread that asked
    main, reads = _answer_reads(triton, model, tmp_path, GRPC_EXPERIMENTS="")  # grpc's default, for contrast
    assert reads[main] == 0 and sum(reads.values()) >= 1, reads  # EventEngine's threads read and hand it over
