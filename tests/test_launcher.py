"""`bge-triton serve`: default model on first run, readiness line, clean shutdown, busy ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
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


def test_regions_of_a_killed_launcher_are_removed_unless_still_mapped() -> None:
    """A launcher SIGKILLed with its tritonserver leaves its Python-backend regions (64 MB each) in /dev/shm; the
    next start removes those whose launcher is gone and that no process maps, and nothing else."""
    import mmap
    import subprocess
    import sys

    from bge_triton.launcher import SHM_DIR, SHM_PREFIX_BASE, remove_orphaned_shm_regions

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    orphan = SHM_DIR / f"{SHM_PREFIX_BASE}bge{dead}_test0001_region"
    in_use = SHM_DIR / f"{SHM_PREFIX_BASE}bge{dead}_test0002_region"
    ours = SHM_DIR / f"{SHM_PREFIX_BASE}bge{os.getpid()}_test0003_region"
    for path in (orphan, in_use, ours):
        path.write_bytes(b"\0" * 4096)
    try:
        with in_use.open("r+b") as handle, mmap.mmap(handle.fileno(), 4096):
            assert remove_orphaned_shm_regions() >= 4096
            assert not orphan.exists() and in_use.exists() and ours.exists()
    finally:
        for path in (orphan, in_use, ours):
            path.unlink(missing_ok=True)
