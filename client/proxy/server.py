"""Run the proxy with uvicorn."""

from __future__ import annotations

import uvicorn

from .app import create_app
from .settings import ProxySettings


def build_server(settings: ProxySettings) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # log through the application's logging setup
        access_log=False,  # the app logs one line per request itself
        timeout_graceful_shutdown=max(1, round(settings.grace_period_s)),
    )
    return uvicorn.Server(config)


def run_proxy(settings: ProxySettings) -> None:
    build_server(settings).run()
