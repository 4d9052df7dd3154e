"""The web page at `/ui` (static HTML, JS and CSS from `ui/`, no CDN) and the `/tokenize` endpoint it uses.

The page is a client of the public API only (`/v1/models`, `/v1/embeddings`, `/v1/similarity`, `/tokenize`),
so what it shows is what API callers get. Its files are served without an API key (`auth.py` exempts `/ui`);
the API calls it makes carry the key the user enters on the page (kept in the tab's sessionStorage).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import ProxyMetrics
from .registry import ModelRegistry
from .settings import ProxySettings
from .tokenize_route import install_tokenize_route

UI_DIR = Path(__file__).resolve().parent / "ui"
UI_PATH = "/ui"
# Everything the page loads comes from the proxy itself: a CDN reference would fail here, not silently work.
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]  # fmt: skip


class _WithHeaders:
    """ASGI wrapper adding the page's security headers to every static answer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_ui_routes(app: FastAPI, registry: ModelRegistry, settings: ProxySettings, metrics: ProxyMetrics) -> None:
    """`POST /tokenize`, `GET /ui` (-> `/ui/`) and the page's static files under `/ui/`."""
    install_tokenize_route(app, registry, settings, metrics)

    @app.get(UI_PATH, include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("ui/", status_code=307)  # relative: works behind a path prefix too

    app.mount(UI_PATH, _WithHeaders(StaticFiles(directory=UI_DIR, html=True)), name="ui")
