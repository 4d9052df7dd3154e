"""Start a real `tritonserver` process (the binary the PyPI wheel nvidia-pytriton bundles).

The model repository is the product: this module only runs Triton on it, the way the NGC
container would, with the Python backend wired to this interpreter's environment.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .paths import data_home
from .triton_output import TritonOutputRelay

log = logging.getLogger("bge_triton.launcher")

SHM_DIR = Path("/dev/shm")
# The Python backend's own region prefix, extended per server start so that the regions of a server that died
# (SIGKILL leaves them behind, 64 MB and more each) can be told apart from a live server's and removed.
SHM_PREFIX_BASE = "triton_python_backend_shm_region_"


def remove_shm_regions(prefix: str) -> int:
    """Delete the shared-memory files named `prefix*`; the bytes they held."""
    freed = 0
    for path in SHM_DIR.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            freed += path.stat().st_size
            path.unlink()
    return freed


def remove_orphaned_shm_regions() -> int:
    """Delete the regions of servers whose launcher is gone (SIGKILLed with its tritonserver: nothing ran
    `release_shm`) and that no process maps any more; the bytes they held. Our prefix names the launcher's pid."""
    mapped = _mapped_shm_files()
    freed = 0
    for path in SHM_DIR.glob(f"{SHM_PREFIX_BASE}bge*_*"):
        match = re.match(rf"{SHM_PREFIX_BASE}bge(\d+)_", path.name)
        if match is None or _pid_alive(int(match.group(1))) or str(path) in mapped:
            continue
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            path.unlink()
            freed += size
    return freed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mapped_shm_files() -> set[str]:
    """Every /dev/shm file some process has mapped (from /proc/*/maps)."""
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            for line in maps.read_text().splitlines():
                where = line.find(str(SHM_DIR) + "/")
                if where >= 0:
                    mapped.add(line[where:].removesuffix(" (deleted)"))
    return mapped


class LaunchError(RuntimeError):
    """tritonserver could not be started or did not become ready."""


@dataclass
class TritonOptions:
    repository: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_verbose: int = 0
    exit_timeout_s: int = 30
    # Python-backend shared memory per model instance: BERT activations of a full batch are
    # tens of MB, so start larger than Triton's 1 MB default to avoid growing on every batch.
    python_shm_bytes: int = 64 * 1024 * 1024
    extra_args: list[str] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def tritonserver_home() -> Path:
    """The tritonserver of the nvidia-pytriton wheel, or $BGE_TRITON_TRITONSERVER_HOME (the same layout unpacked
    elsewhere: bench/gpu carries it to hosts without the wheel)."""
    explicit = os.environ.get("BGE_TRITON_TRITONSERVER_HOME")
    if explicit:
        home = Path(explicit)
        if not (home / "bin" / "tritonserver").is_file():
            raise LaunchError(f"$BGE_TRITON_TRITONSERVER_HOME={home} has no bin/tritonserver")
        return home
    try:
        import pytriton
    except ImportError as exc:
        raise LaunchError(
            "the tritonserver binary comes with the package nvidia-pytriton: pip install nvidia-pytriton"
        ) from exc
    home = Path(pytriton.__file__).parent / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise LaunchError(f"no tritonserver binary under {home}")
    return home


def python_backend_dir() -> Path:
    """A backend directory whose python/ holds the wheel's backend and the stub for this Python."""
    home = tritonserver_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise LaunchError(f"nvidia-pytriton has no Python-backend stub for Python {version}")
    backends = data_home() / "backends" / f"py{version}"
    python = backends / "python"
    python.mkdir(parents=True, exist_ok=True)
    links = {
        "libtriton_python.so": home / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": home / "backends" / "python" / "triton_python_backend_utils.py",
        "triton_python_backend_stub": stub,
    }
    for name, target in links.items():
        link = python / name
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(target)
    return backends


def server_environment() -> dict[str, str]:
    """PATH starts with this interpreter's bin (the stub finds its site-packages through it) and
    LD_LIBRARY_PATH with its own libpython, so the stub embeds the same Python version."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [libdir, env.get("LD_LIBRARY_PATH", "")] if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "true")
    return env


def gpu_present() -> bool:
    """Whether this host has an NVIDIA GPU device (the driver's /dev/nvidiaN nodes)."""
    return any(Path("/dev").glob("nvidia[0-9]*"))


def cpu_only_args() -> list[str]:
    """Triton options for a host without a GPU: no GPU metrics (the NVML and DCGM probes) and no pinned-memory
    pool (its CUDA allocation). The CUDA probes no option stops are sent to DEBUG by `TritonOutputRelay`."""
    return ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0"]


def ensure_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as servers set it: a port in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise LaunchError(f"{what} port {host}:{port} is already in use ({exc.strerror}); choose another") from None


_HANDED_OUT: set[int] = set()  # ports free_port gave this process: the kernel may offer a just-closed one again


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never one this process got before (Triton's HTTP, gRPC and metrics ports are
    picked one after another: the same port twice made it refuse to start)."""
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port left that this process has not been given already")


def _terminate_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM when the launching process dies (even by
    SIGKILL), so a killed launcher never leaves an orphaned tritonserver holding the ports."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class TritonServer:
    """One tritonserver process; use as a context manager or call start()/stop().

    Its output goes to `log_file` as Triton writes it, or else into this process's log (`TritonOutputRelay`)."""

    def __init__(self, options: TritonOptions, *, log_file: Path | None = None):
        self.options = options
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle = None
        self._relay: TritonOutputRelay | None = None
        self.cpu_only = not gpu_present()
        self.shm_prefix = self._new_shm_prefix()

    @staticmethod
    def _new_shm_prefix() -> str:
        return f"{SHM_PREFIX_BASE}bge{os.getpid()}_{uuid.uuid4().hex[:8]}_"

    def release_shm(self) -> None:
        """Remove the shared-memory regions of this server's last process, once it has exited."""
        if self.process is not None and self.process.poll() is None:
            return
        freed = remove_shm_regions(self.shm_prefix)
        if freed:
            log.info("removed %.0f MB of shared memory left by the stopped tritonserver", freed / 2**20)

    def command(self) -> list[str]:
        o = self.options
        return [
            str(tritonserver_home() / "bin" / "tritonserver"),
            f"--model-repository={Path(o.repository).resolve()}",
            f"--backend-directory={python_backend_dir()}",
            f"--http-address={o.host}",
            f"--http-port={o.http_port}",
            f"--grpc-address={o.host}",
            f"--grpc-port={o.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-address={o.host}",
            f"--metrics-port={o.metrics_port}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            f"--backend-config=python,shm-default-byte-size={o.python_shm_bytes}",
            f"--backend-config=python,shm-growth-byte-size={o.python_shm_bytes // 2}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *(cpu_only_args() if self.cpu_only else []),
            *o.extra_args,
        ]

    def start(self) -> None:
        o = self.options
        if not Path(o.repository).is_dir():
            raise LaunchError(f"model repository {o.repository} does not exist")
        for what, port in (("HTTP", o.http_port), ("gRPC", o.grpc_port), ("metrics", o.metrics_port)):
            ensure_port_free(o.host, port, what)
        if self.process is not None:  # a restart: the previous process's regions go, the new one gets its own
            self.release_shm()
            self.shm_prefix = self._new_shm_prefix()
        else:
            freed = remove_orphaned_shm_regions()
            if freed:
                log.info("removed %.0f MB of shared memory left by tritonservers whose launcher was killed",
                         freed / 2**20)  # fmt: skip
        stdout: int | IO[bytes] = subprocess.PIPE
        if self._log_handle is not None:  # left open by a process that died
            self._log_handle.close()
            self._log_handle = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "ab")  # noqa: SIM115 - lives as long as the process
            stdout = self._log_handle
        self.process = subprocess.Popen(
            self.command(),
            env=server_environment(),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals are forwarded by us, not by the terminal
            preexec_fn=_terminate_with_parent,
        )
        if self.process.stdout is not None:
            self._relay = TritonOutputRelay(self.process.stdout, cpu_only=self.cpu_only)
            self._relay.start()
        log.debug("started tritonserver pid %d", self.process.pid)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.options.http_url}/v2/health/ready", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                code = self.process.returncode if self.process else None
                raise LaunchError(f"tritonserver exited with code {code} before it was ready{self._log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.25)
        raise LaunchError(f"tritonserver was not ready after {timeout_s:.0f} s{self._log_tail()}")

    def signal(self, signum: int) -> None:
        if self.is_running():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self, timeout_s: float | None = None) -> int | None:
        if self.process is None:
            return None
        timeout_s = timeout_s if timeout_s is not None else self.options.exit_timeout_s + 5
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0f s; killing it", timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self._relay is not None:  # Triton's last lines are logged before the caller logs what follows
            self._relay.join(timeout_s=2)
            self._relay = None
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        self.release_shm()
        return self.process.returncode

    def _log_tail(self, lines: int = 30) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        tail = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n--- tritonserver log (last lines) ---\n" + "\n".join(tail)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_stubs(server_pid: int) -> dict[int, str]:
    """The Python-backend stub processes of a tritonserver: pid -> model instance name.

    A stub's command line carries its server's pid and its model instance's name (`NAME-tokenizer_0_0`)."""
    stubs = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"triton_python_backend_stub") and str(server_pid).encode() in args[1:]:
            instance = args[8].decode(errors="replace") if len(args) > 8 else args[1].decode(errors="replace")
            stubs[int(proc.name)] = instance
    return stubs


def kill_orphaned_stubs(server_pid: int) -> list[int]:
    """SIGKILL the Python-backend stubs of a tritonserver that died without stopping them.

    After a SIGKILLed server, stubs were seen lingering (reparented to init) with their model and shared memory
    still held."""
    killed = []
    for pid in python_stubs(server_pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


class TritonSupervisor:
    """Restarts tritonserver when it dies unexpectedly: bounded restarts with exponential backoff,
    each logged. Past `max_restarts` within `window_s` it gives up and calls `on_give_up` (the
    launcher then exits non-zero, so a container orchestrator can take over).

    It also heals what Triton does not: a Python-backend stub that dies (SIGKILL, the OOM killer) leaves its
    model answering "Stub process ... is not healthy" forever while Triton still reports it ready. Every
    `stub_check_s` the supervisor compares the server's stub processes with those it had once ready; when one
    is gone it stops that tritonserver (SIGKILL after `heal_stop_timeout_s`) and restarts it like a crash."""

    def __init__(
        self,
        server: TritonServer,
        *,
        max_restarts: int = 5,
        window_s: float = 600.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        ready_timeout_s: float = 300.0,
        stub_check_s: float = 0.5,
        heal_stop_timeout_s: float = 5.0,
        on_give_up: Callable[[], None] | None = None,
    ):
        self.server = server
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.ready_timeout_s = ready_timeout_s
        self.on_give_up = on_give_up
        self.stub_check_s = stub_check_s
        self.heal_stop_timeout_s = heal_stop_timeout_s
        self.restarts: list[float] = []  # monotonic times of restarts, for the window
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # no restart may start while stop() runs, and vice versa
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # The watcher thread also starts the replacement servers; PR_SET_PDEATHSIG is tied to the
        # thread that forks, so it lives until stop().
        self._thread = threading.Thread(target=self._watch, name="triton-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        self._stopping.set()
        with self._lock:
            code = self.server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return code

    def _dead_stubs(self, server_pid: int, known: dict[int, str]) -> tuple[dict[int, str], list[str]]:
        """(the stubs to compare with next time, the model instances whose stub has gone since)."""
        if not known:  # the baseline: every stub exists once the server is ready
            return (python_stubs(server_pid) if self.server.is_ready() else {}), []
        alive = python_stubs(server_pid)
        return known, [name for pid, name in known.items() if pid not in alive]

    def _heal(self, dead: list[str]) -> None:
        log.warning(
            "the Python-backend stub of %s died (Triton keeps answering 'not healthy' for it); "
            "restarting tritonserver", ", ".join(sorted(dead)),
        )  # fmt: skip
        with self._lock:
            if not self._stopping.is_set():
                self.server.stop(timeout_s=self.heal_stop_timeout_s)

    def _watch(self) -> None:
        stubs: dict[int, str] = {}
        while not self._stopping.is_set():
            process = self.server.process
            if process is None:
                self._stopping.wait(0.2)
                continue
            if process.poll() is None:
                stubs, dead = self._dead_stubs(process.pid, stubs)
                if dead:
                    self._heal(dead)
                    stubs = {}
                self._stopping.wait(self.stub_check_s)
                continue
            stubs = {}
            if self._stopping.is_set():
                return
            orphans = kill_orphaned_stubs(process.pid)
            if orphans:
                log.warning("killed %d orphaned Python-backend stub(s) of the dead tritonserver", len(orphans))
            self.server.release_shm()
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < self.window_s]
            if len(self.restarts) >= self.max_restarts:
                log.error(
                    "tritonserver exited with code %s; %d restarts in the last %.0f s, giving up",
                    process.returncode, len(self.restarts), self.window_s,
                )  # fmt: skip
                if self.on_give_up is not None:
                    self.on_give_up()
                return
            delay = min(self.max_backoff_s, self.backoff_s * 2 ** len(self.restarts))
            log.warning(
                "tritonserver exited with code %s; restarting in %.1f s (restart %d of at most %d per %.0f s)",
                process.returncode, delay, len(self.restarts) + 1, self.max_restarts, self.window_s,
            )  # fmt: skip
            if self._stopping.wait(delay):
                return
            self.restarts.append(time.monotonic())
            try:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.server.start()
                self.server.wait_ready(self.ready_timeout_s)
                log.info("tritonserver restarted and ready (pid %d)", self.server.process.pid)  # type: ignore[union-attr]
            except LaunchError as exc:
                if not self._stopping.is_set():
                    log.error("restarting tritonserver failed: %s", exc)
