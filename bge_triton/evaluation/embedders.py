"""The two ways `bge-triton eval` reaches a live service, behind one small `Embedder` protocol.

- `ProxyEmbedder`: the OpenAI-compatible proxy over httpx, `POST {url}/embeddings` with
  `input_type` (the proxy prepends the model's query/passage instruction itself) and base64
  (little-endian float32) encoding; the model's facts come from `GET {url}/models`.
- `TritonEmbedder`: Triton directly, through the project's `AsyncEmbeddingClient` (gRPC or HTTP),
  which reads the model's facts from the ensemble's config and prepends the instructions itself.

Both raise `EvalServiceError`, whose message is one line meant for the user (HTTP status and the
service's own error message).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

if TYPE_CHECKING:
    import httpx

    from bge_triton.client import AsyncEmbeddingClient

InputType = Literal["query", "passage"]
T = TypeVar("T")


class EvalServiceError(Exception):
    """The service could not be reached or answered an error; the message is a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class ModelInfo:
    """What the evaluation needs to know about the served model."""

    name: str
    dim: int | None = None
    query_instruction: str | None = None
    passage_instruction: str | None = None  # None: the service does not say


class Embedder(Protocol):
    """A live embedding service: connect once, embed batches (concurrently), close."""

    backend: str  # "proxy" or "triton"
    url: str

    async def connect(self) -> ModelInfo:
        """Check the service and resolve the model (the only served one when none was named)."""
        ...

    async def embed(self, texts: Sequence[str], input_type: InputType) -> np.ndarray:
        """float32 [len(texts), dim] embeddings, in input order."""
        ...

    async def close(self) -> None: ...


def _proxy_base(url: str) -> str:
    """The proxy's API root: `http://host:port/v1` (a URL without a path gets `/v1`)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise EvalServiceError(f"--url must be an http(s) URL such as http://127.0.0.1:8080/v1, got {url!r}")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _error_message(response: httpx.Response) -> str:
    """The OpenAI error JSON's message (`{"error": {"message": ...}}`), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    text = response.text.strip()
    return text[:300] or response.reason_phrase or "no message"


class ProxyEmbedder:
    """The OpenAI-compatible proxy (`--url http://127.0.0.1:8080/v1`), over httpx."""

    backend = "proxy"

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        concurrency: int = 4,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = _proxy_base(url)
        self._transport = transport  # another transport (tests: httpx.MockTransport)
        self.model = model
        self.api_key = api_key or None
        self.timeout_s = float(timeout_s)
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(
                timeout=self.timeout_s,
                headers=headers,
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                transport=self._transport,
            )
        return self._client

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of `method {url}{path}`; retries 429/503 (Retry-After, capped) a few times."""
        import httpx

        target = f"{self.url}{path}"
        for attempt in range(self.retries + 1):
            try:
                response = await self._http().request(method, target, json=body)
            except httpx.TimeoutException:
                raise EvalServiceError(f"{method} {target} timed out after {self.timeout_s:g}s") from None
            except httpx.HTTPError as exc:
                reason = str(exc) or type(exc).__name__
                raise EvalServiceError(f"cannot reach the proxy at {self.url}: {reason}") from None
            if response.status_code in (429, 503) and attempt < self.retries:
                await asyncio.sleep(_retry_after(response, attempt))
                continue
            if response.status_code >= 400:
                raise EvalServiceError(
                    f"HTTP {response.status_code} from {method} {target}: {_error_message(response)}"
                )
            try:
                return response.json()
            except ValueError:
                raise EvalServiceError(f"{method} {target} answered {response.status_code} without JSON") from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def connect(self) -> ModelInfo:
        listing = await self._request("GET", "/models")
        # NAME-query / NAME-passage cards (with a `parent`) are variants of a listed model, not more models
        cards = [c for c in (listing or {}).get("data", []) if isinstance(c, dict) and c.get("id")]
        cards = [c for c in cards if not c.get("parent") or c.get("id") == self.model]
        by_id = {str(c["id"]): c for c in cards}
        if self.model is not None:
            card = by_id.get(self.model)
            if card is None:  # perhaps served but not listed: ask for it (the proxy says why not)
                card = await self._request("GET", f"/models/{self.model}")
        elif len(by_id) == 1:
            card = next(iter(by_id.values()))
            self.model = str(card["id"])
        elif not by_id:
            raise EvalServiceError(f"the proxy at {self.url} serves no models")
        else:
            raise EvalServiceError(f"the proxy at {self.url} serves several models ({', '.join(by_id)}): pass --model")
        passage = card.get("passage_instruction")
        query = card.get("query_instruction")
        dim = card.get("dimensions")
        return ModelInfo(
            name=str(self.model),
            dim=int(dim) if isinstance(dim, int) else None,
            query_instruction=query if isinstance(query, str) else None,
            passage_instruction=passage if isinstance(passage, str) else None,
        )

    async def embed(self, texts: Sequence[str], input_type: InputType) -> np.ndarray:
        if self.model is None:
            await self.connect()
        body = {"model": self.model, "input": list(texts), "input_type": input_type, "encoding_format": "base64"}
        answer = await self._request("POST", "/embeddings", body)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(texts):
            got = len(data) if isinstance(data, list) else "no"
            raise EvalServiceError(f"POST {self.url}/embeddings answered {got} embeddings for {len(texts)} inputs")
        rows: list[np.ndarray | None] = [None] * len(texts)
        for position, item in enumerate(data):
            index = item.get("index", position) if isinstance(item, dict) else position
            embedding = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(index, int) or not 0 <= index < len(texts):
                raise EvalServiceError(f"POST {self.url}/embeddings answered an embedding with index {index!r}")
            if isinstance(embedding, str):
                rows[index] = np.frombuffer(base64.b64decode(embedding), dtype="<f4").astype(np.float32)
            elif isinstance(embedding, list):  # a server that ignores encoding_format
                rows[index] = np.asarray(embedding, dtype=np.float32)
            else:
                raise EvalServiceError(f"POST {self.url}/embeddings answered embedding {index} without a vector")
        if any(row is None for row in rows) or len({row.shape for row in rows if row is not None}) != 1:
            raise EvalServiceError(f"POST {self.url}/embeddings answered missing or ragged embeddings")
        return np.stack([row for row in rows if row is not None])

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        wait = float(response.headers.get("Retry-After", ""))
    except ValueError:
        wait = 0.25 * 2**attempt
    return min(max(wait, 0.05), 5.0)


class TritonEmbedder:
    """Triton directly (`--triton-url 127.0.0.1:8001 --protocol grpc|http`), via `AsyncEmbeddingClient`."""

    backend = "triton"

    def __init__(
        self,
        url: str,
        *,
        protocol: Literal["grpc", "http"] = "grpc",
        model: str | None = None,
        timeout_s: float = 120.0,
        concurrency: int = 4,
    ) -> None:
        self.url = url
        self.protocol = protocol
        self.model = model
        self.timeout_s = float(timeout_s)
        self.concurrency = max(1, int(concurrency))
        self._client: AsyncEmbeddingClient | None = None

    async def _call(self, awaitable: Awaitable[T]) -> T:
        from bge_triton.client import EmbeddingError

        try:
            return await awaitable
        except EmbeddingError as exc:
            raise EvalServiceError(
                f"Triton at {self.url} ({self.protocol}): {type(exc).__name__} (HTTP {exc.status}): {exc.message}"
            ) from None

    async def connect(self) -> ModelInfo:
        from bge_triton.client import AsyncEmbeddingClient

        if self._client is None:
            try:
                # The client's own semaphore bounds the requests in flight, across all embed calls.
                self._client = AsyncEmbeddingClient(
                    self.url, self.protocol, self.model, timeout_s=self.timeout_s, max_concurrency=self.concurrency
                )
            except ValueError as exc:
                raise EvalServiceError(f"--triton-url {self.url!r}: {exc}") from None
        facts = await self._call(self._client.connect())
        self.model = self._client.model
        return ModelInfo(
            name=self.model,
            dim=facts.dim,
            query_instruction=facts.query_instruction,
            passage_instruction=facts.passage_instruction,
        )

    async def embed(self, texts: Sequence[str], input_type: InputType) -> np.ndarray:
        if self._client is None:
            await self.connect()
        assert self._client is not None
        vectors = await self._call(self._client.embed(list(texts), query=input_type == "query"))
        return np.asarray(vectors, dtype=np.float32)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()
