"""Run the proxy with uvicorn."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

import uvicorn

from .app import create_app
from .connections import bounded_protocol, connection_cap, quiet_accept_errors
from .settings import ProxySettings

log = logging.getLogger("bge_triton.proxy")


class ProxyServer(uvicorn.Server):
    """uvicorn's server, telling in the service's own log lines when it listens, drains and stops (uvicorn's own
    start/stop lines are DEBUG: see bge_triton/service_log.py)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None = None):
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        quiet_accept_errors(asyncio.get_running_loop())
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info(
                "received %s: finishing in-flight requests (at most %s s), then stopping",
                signal.Signals(sig).name, self.config.timeout_graceful_shutdown,
            )  # fmt: skip
        super().handle_exit(sig, frame)


def event_loop() -> str:
    """uvloop where it is installed (every Linux/macOS install: a dependency), else asyncio's own loop. uvloop
    and the httptools parser (connections.py) took ~0.5 ms of CPU off each request on 2 cores (issue 19)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def build_server(settings: ProxySettings, on_started: Callable[[], None] | None = None) -> ProxyServer:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # log through the application's logging setup
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=max(1, round(settings.grace_period_s)),
        http=bounded_protocol(settings.header_timeout_s, connection_cap(settings.max_connections)),
        loop=event_loop(),
    )
    return ProxyServer(config, on_started)


def run_proxy(settings: ProxySettings, on_started: Callable[[], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; `on_started` runs once the port listens (the launcher logs its URLs there)."""
    build_server(settings, on_started).run()
    log.info("proxy stopped")
