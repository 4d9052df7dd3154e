"""The proxy's configuration, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# What token-id arrays in `input` are taken to be (see token_ids.py): "off" refuses them (their vocabulary is
# unknown: LangChain sends OpenAI's tiktoken ids by default), "model" = this model's own vocabulary ids,
# "tiktoken" = OpenAI cl100k_base ids, decoded back to text and embedded as text.
TokenIdsMode = Literal["off", "model", "tiktoken"]
TOKEN_IDS_MODES: tuple[TokenIdsMode, ...] = ("off", "model", "tiktoken")


@dataclass(frozen=True)
class ProxySettings:
    # Triton replicas serving the same repository (gRPC or HTTP addresses); requests are spread
    # round-robin and fail over to another replica when one is unavailable.
    triton_urls: tuple[str, ...] = ("127.0.0.1:8001",)
    protocol: str = "grpc"  # how the proxy talks to Triton: grpc or http
    # `dns:HOST:PORT` in triton_urls: every address HOST resolves to (a headless Service), re-resolved this often.
    triton_dns_refresh_s: float = 10.0
    host: str = "127.0.0.1"
    port: int = 8080
    # Served models; empty = every model in the repository that carries model facts.
    models: tuple[str, ...] = ()
    # Extra names accepted in `model` (e.g. "text-embedding-3-small" -> "bge-large-zh-v1.5").
    aliases: dict[str, str] = field(default_factory=dict)
    max_inputs: int = 2048  # inputs per request
    max_body_bytes: int = 16 * 1024 * 1024  # request bodies over this are answered 413 unread
    # Characters of all a request's texts together (a token id counts as one); more is answered 413 before
    # Triton sees any of it. 2048 inputs x 2048 characters: about four 512-token windows of Chinese (one of
    # English) per input at --max-inputs; the 780 x 20,000 characters (15.6 M) is refused.
    max_request_chars: int = 4 * 1024 * 1024
    body_timeout_s: float = 30.0  # the whole body must arrive within this after the headers; else 408
    ready_check_timeout_s: float = 1.0  # /ready answers 503 when Triton has not answered its checks within this
    header_timeout_s: float = 10.0  # a connection without a complete request head after this is closed
    max_connections: int = 4096  # open client connections; more are closed at once (kept under the fd limit)
    max_in_flight: int = 64  # requests being served at once; more are answered 429
    retry_after_s: int = 1  # the Retry-After of 429 and 503 answers
    request_timeout_s: float = 60.0  # per Triton request
    triton_concurrency: int = 8  # Triton requests in flight per served model and replica (the client's bound)
    # /v1/embeddings: a request is cut into slices of about `slice_tokens` (estimated) tokens, and at most
    # `triton_tokens` estimated tokens per model and replica are in Triton at once, handed out in turns among
    # requests, so a small request waits for what is already running, not a large request's backlog
    # (fair_share.py). Measured on 2 CPU cores with MiniLM: ~1,000 tokens take ~1 s.
    slice_tokens: int = 1024
    triton_tokens: int = 1024
    api_keys: tuple[str, ...] = ()  # empty: no authentication (any key is accepted)
    protect_metrics: bool = False  # require a key for /metrics too
    grace_period_s: float = 30.0  # on SIGTERM: how long in-flight requests may finish
    token_ids: TokenIdsMode = "off"  # how token-id arrays in `input` are read (TOKEN_IDS_MODES)
    # `truncate: "CHUNK"` (long_inputs.py): windows per input at most; a longer input is a 400 (too_many_chunks).
    max_chunks: int = 64
    # The vector cache (vector_cache.py): a per-process LRU of `cache_mb` MiB (0: none; 1,024-dim vectors take
    # ~4.3 KB each, so 256 MiB hold ~60,000) and, with `cache_url` (redis://...), a Redis the replicas share,
    # whose entries expire after `cache_ttl_s`. `--no-cache`: both off.
    cache_mb: int = 256
    cache_url: str = ""
    cache_ttl_s: int = 7 * 24 * 3600

    def __post_init__(self) -> None:
        if self.token_ids not in TOKEN_IDS_MODES:
            raise ValueError(f"token_ids must be one of {', '.join(TOKEN_IDS_MODES)}, not {self.token_ids!r}")
        if self.cache_mb < 0:
            raise ValueError(f"cache_mb must be 0 (no local cache) or more, not {self.cache_mb}")
        if self.cache_url and not self.cache_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"cache_url must be a redis://, rediss:// or unix:// URL, not {self.cache_url!r}")

    def __repr__(self) -> str:  # never print the keys
        return (
            f"ProxySettings(triton_urls={self.triton_urls!r}, port={self.port}, token_ids={self.token_ids!r}, "
            f"api_keys={len(self.api_keys)} key(s))"
        )
