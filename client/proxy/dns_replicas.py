"""Triton replicas found by DNS: `--triton-url dns:HOST:PORT` means every address HOST resolves to, re-resolved
every `--triton-dns-refresh` seconds.

Behind a Kubernetes ClusterIP one long-lived gRPC channel stays on the pod it first reached, so Triton pods the
HPA adds get no traffic. A headless Service (`clusterIP: None`) resolves to every ready pod's address instead: the
proxy keeps one client per address and spreads requests over them with the failover it has for `--triton-url`
lists; addresses that appear get clients, addresses that disappear lose theirs.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

DNS_SCHEME = "dns:"
Resolver = Callable[[str, int], Awaitable[list[str]]]


def parse_dns_url(url: str) -> tuple[str, int] | None:
    """`dns:HOST:PORT` -> (HOST, PORT); None for a plain `host:port`."""
    if not url.startswith(DNS_SCHEME):
        return None
    host, sep, port = url[len(DNS_SCHEME) :].lstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{url!r}: write dns:HOST:PORT (e.g. dns:triton-headless.default.svc.cluster.local:8001)")
    return host, int(port)


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every TCP address of `host`, as sorted `ip:port` (IPv6 in brackets)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    urls = set()
    for family, _, _, _, address in infos:
        ip = address[0]
        urls.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(urls)


async def expand_urls(urls: tuple[str, ...], resolver: Resolver = resolve_addresses) -> list[str]:
    """The settings' Triton URLs with every `dns:` entry replaced by the addresses it resolves to now."""
    out: list[str] = []
    for url in urls:
        target = parse_dns_url(url)
        if target is None:
            out.append(url)
            continue
        try:
            out.extend(await resolver(*target))
        except OSError:  # not resolvable now (no ready pod yet): no address from it this time
            continue
    return list(dict.fromkeys(out))
