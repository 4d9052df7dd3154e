"""How the service's log reads: one format, the project's logger names, and the line that says where to go.

uvicorn logs under `uvicorn.error` (its name for every message, errors or not): those records are renamed
`bge_triton.proxy.http`, and its start/stop chatter ("Started server process", "Waiting for application
startup", ...) is kept for `-v`; the proxy logs its own lines instead (`service_urls`, `client/proxy/server.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

UVICORN_LOGGER = "uvicorn.error"
PROXY_HTTP_LOGGER = "bge_triton.proxy.http"


class _RenameUvicorn(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.name = PROXY_HTTP_LOGGER
        return True


def setup_logging(verbose: bool) -> None:
    """`HH:MM:SS LEVEL logger: message` on stderr; DEBUG with `verbose`, else INFO (uvicorn: WARNING)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    uvicorn = logging.getLogger(UVICORN_LOGGER)
    uvicorn.addFilter(_RenameUvicorn())
    uvicorn.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _origin(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # a wildcard bind is reachable on loopback
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def service_urls(host: str, proxy_port: int | None, triton: Sequence[tuple[str, str, str]] = ()) -> str:
    """The startup line: the API, web page and docs of the proxy, and each Triton's HTTP, gRPC and metrics.

    `triton` holds (http_url, grpc_address, metrics_url) per tritonserver this process runs."""
    parts = []
    if proxy_port is not None:
        origin = _origin(host, proxy_port)
        parts.append(f"OpenAI API {origin}/v1 · web page {origin}/ui/ · API docs {origin}/docs")
    for i, (http, grpc, metrics) in enumerate(triton):
        name = "Triton" if len(triton) == 1 else f"Triton replica {i}"
        parts.append(f"{name} HTTP {http} · gRPC {grpc} · metrics {metrics}")
    return "ready: " + " | ".join(parts)
