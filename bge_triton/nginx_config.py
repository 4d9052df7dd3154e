"""An nginx load balancer in front of several OpenAI proxies (HTTP) and several tritonservers (gRPC, HTTP).

One template renders both deployments: `deploy/nginx/nginx.conf` for docker compose (service names, Docker's
DNS re-resolved so replicas that come and go are followed) and a loopback config for the container-free
topology (`bge-triton nginx-config --proxy 127.0.0.1:8080 --proxy 127.0.0.1:8081 ...`).

What it does on a bad day: a backend that refuses or drops a connection, or answers 502/503 (a proxy whose
Triton is gone answers 503), is retried on the next one (embeddings are idempotent, so POSTs are retried too)
and is taken out for `fail_timeout` after `max_fails`; 429 (overload) is passed through with its Retry-After,
since every proxy shares the same Tritons. Open-source nginx has only these passive health checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from string import Template

# Fit for embeddings: an 8192-token bge-m3 batch can take tens of seconds on a busy GPU.
READ_TIMEOUT_S = 120
MAX_BODY = "64m"


class _Template(Template):
    delimiter = "@"  # nginx's own variables use `$`


_CONFIG = _Template(
    """\
# Rendered by `bge-triton nginx-config@args` -- edit the command, not this file.
worker_processes auto;
@main
events {
    worker_connections 4096;
}

http {
@state    log_format bge '$remote_addr "$request" $status $request_time '
                   'upstream=$upstream_addr upstream_status=$upstream_status '
                   'upstream_time=$upstream_response_time';
    access_log @access_log bge;
    server_tokens off;
    client_max_body_size @max_body;
@resolver
    # The OpenAI proxies (HTTP/1.1, kept-alive connections).
    upstream bge_proxies {
        zone bge_proxies 64k;
        least_conn;
@proxies        keepalive 64;
    }

    # Triton's gRPC endpoints (HTTP/2).
    upstream triton_grpc {
        zone triton_grpc 64k;
        least_conn;
@triton_grpc        keepalive 64;
    }

    # Triton's HTTP/REST (KServe v2) endpoints.
    upstream triton_http {
        zone triton_http 64k;
        least_conn;
@triton_http        keepalive 64;
    }

    # OpenAI-compatible API: /v1/embeddings, /v1/models, /ready, /metrics of whichever proxy answers.
    server {
        listen @listen_proxy;

        location = /nginx-health {
            access_log off;
            default_type text/plain;
            return 200 "ok\\n";
        }

        location / {
            proxy_pass http://bge_proxies;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_connect_timeout 2s;
            proxy_read_timeout @read_timeout;
            proxy_send_timeout @read_timeout;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout @read_timeout;
        }
    }

    # Triton gRPC (tritonclient.grpc, perf_analyzer -i grpc): cleartext HTTP/2.
    server {
        @listen_grpc_http2

        location / {
            grpc_pass grpc://triton_grpc;
            grpc_connect_timeout 2s;
            grpc_read_timeout @read_timeout;
            grpc_send_timeout @read_timeout;
            grpc_next_upstream error timeout http_502 http_503 non_idempotent;
            grpc_next_upstream_tries 3;
        }
    }

    # Triton HTTP/REST (tritonclient.http, /v2/health/ready, /v2/models/...).
    server {
        listen @listen_http;

        location / {
            proxy_pass http://triton_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_read_timeout @read_timeout;
            proxy_send_timeout @read_timeout;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
        }
    }
}
"""
)


@dataclass
class NginxLayout:
    """Where nginx listens and what it balances over (host:port each)."""

    proxies: list[str]
    triton_grpc: list[str]
    triton_http: list[str]
    listen_proxy: str = "8080"
    listen_grpc: str = "8001"
    listen_http: str = "8000"
    # Docker's embedded DNS (127.0.0.11): re-resolve service names so scaled replicas are followed.
    # Needs nginx >= 1.27.3 (the `resolve` server parameter); leave unset for fixed addresses.
    resolver: str | None = None
    # A writable folder for pid, temp files and logs (a non-root, container-free run); None keeps nginx's own.
    state_dir: Path | None = None
    # nginx >= 1.25.1: `http2 on;` (`listen ... http2` is deprecated there); older nginx (Debian 12: 1.22) needs
    # the `listen` parameter. The compose image is nginx 1.28.
    http2_directive: bool = False
    max_fails: int = 1
    fail_timeout_s: int = 5
    args: list[str] = field(default_factory=list)  # the command line, recorded in the header


def _servers(addresses: list[str], layout: NginxLayout) -> str:
    if not addresses:
        raise ValueError("each upstream needs at least one host:port")
    resolve = " resolve" if layout.resolver else ""
    lines = []
    for address in addresses:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"expected host:port, got {address!r}")
        lines.append(
            f"        server {address} max_fails={layout.max_fails} fail_timeout={layout.fail_timeout_s}s{resolve};\n"
        )
    return "".join(lines)


def render_nginx_config(layout: NginxLayout) -> str:
    """The whole nginx.conf for `layout`."""
    main, state, access_log = "", "", "/dev/stdout"
    if layout.state_dir is not None:
        d = layout.state_dir.resolve()
        main = f"pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n"
        state = "".join(
            f"    {kind}_temp_path {d}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        access_log = f"{d}/access.log"
    resolver = f"    resolver {layout.resolver} valid=10s ipv6=off;\n" if layout.resolver else ""
    return _CONFIG.substitute(
        args="".join(f" {a}" for a in layout.args),
        main=main,
        state=state,
        access_log=access_log,
        max_body=MAX_BODY,
        resolver=resolver,
        proxies=_servers(layout.proxies, layout),
        triton_grpc=_servers(layout.triton_grpc, layout),
        triton_http=_servers(layout.triton_http, layout),
        listen_proxy=layout.listen_proxy,
        listen_grpc_http2=(
            f"listen {layout.listen_grpc};\n        http2 on;"
            if layout.http2_directive
            else f"listen {layout.listen_grpc} http2;"
        ),
        listen_http=layout.listen_http,
        read_timeout=f"{READ_TIMEOUT_S}s",
    )


def compose_layout() -> NginxLayout:
    """docker-compose.yml's balancer: the `proxy` and `triton` services, scaled replicas followed by DNS."""
    return NginxLayout(
        proxies=["proxy:8080"],
        triton_grpc=["triton:8001"],
        triton_http=["triton:8000"],
        resolver="127.0.0.11",
        http2_directive=True,
        args=["--compose"],
    )
