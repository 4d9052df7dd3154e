"""Retrieval MRR@10 through the live proxy for the request options of issue 18: `embedding_type`, `dimensions`,
and long documents (`truncate` END vs START vs CHUNK).

    .venv/bin/python bench/retrieval_variants.py --url http://127.0.0.1:8080/v1 --json out.json

- compact vectors: the shipped Chinese retrieval set (`retrieval-zh`: 2,701 queries against 7,667 texts) asked
  for with every `embedding_type`, and with `dimensions`; int8 is scored by the cosine of its integers (what an
  int8 index computes), uint8 by the cosine of its de-quantised values (x = -1 + (q + 0.5) * 2/255), binary and
  ubinary by Hamming distance (the cosine of +-1 vectors, the same ranking).
- long documents: the first `--long-queries` lines of the set against their pooled corpus, in which every text
  (positive or negative) is hidden at a random place among unrelated passages of the set (texts of no chosen
  line, each closed with 。, a paragraph every five) until the document is about `--windows` times the model's
  window long; the queries stay as they are. Scored by cosine, MRR@10, for each `truncate` mode, and for CHUNK
  also by each document's best window (`return_chunks`: what an index of the windows finds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from bge_triton.client.chunking import SENTENCE_ENDS
from bge_triton.evaluation.datasets import RetrievalSet, load_task
from bge_triton.evaluation.metrics import first_hit_ranks, mrr_at_k, recall_at_k, retrieval_metrics

DTYPES = {"float": "<f4", "int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}


class Proxy:
    def __init__(self, url: str, model: str | None, concurrency: int, batch: int) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.batch = batch
        self.http = httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency))
        self.semaphore = asyncio.Semaphore(concurrency)
        self.tokens = 0

    async def connect(self) -> dict[str, Any]:
        cards = (await self.http.get(f"{self.url}/models")).json()["data"]
        cards = [c for c in cards if not c.get("parent")]
        card = next(c for c in cards if c["id"] == self.model) if self.model else cards[0]
        self.model = card["id"]
        return card

    async def _one(self, texts: Sequence[str], input_type: str, options: dict[str, Any]) -> np.ndarray:
        body = {"model": self.model, "input": list(texts), "input_type": input_type, "encoding_format": "base64"}
        async with self.semaphore:
            response = await self.http.post(f"{self.url}/embeddings", json={**body, **options})
        if response.status_code != 200:
            raise SystemExit(f"HTTP {response.status_code}: {response.text[:300]}")
        answer = response.json()
        self.tokens += answer["usage"]["total_tokens"]
        dtype = DTYPES[options.get("embedding_type", "float")]
        return np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype) for d in answer["data"]])

    async def embed(self, texts: Sequence[str], input_type: str, **options: Any) -> np.ndarray:
        parts = [texts[i : i + self.batch] for i in range(0, len(texts), self.batch)]
        return np.concatenate(await asyncio.gather(*(self._one(p, input_type, options) for p in parts)))

    async def embed_chunks(self, texts: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        """CHUNK vectors of passages and, per passage, its windows' vectors (return_chunks)."""

        async def one(part: Sequence[str]) -> list[dict[str, Any]]:
            body = {"model": self.model, "input": list(part), "input_type": "passage", "truncate": "CHUNK",
                    "return_chunks": True}  # fmt: skip
            async with self.semaphore:
                response = await self.http.post(f"{self.url}/embeddings", json=body)
            if response.status_code != 200:
                raise SystemExit(f"HTTP {response.status_code}: {response.text[:300]}")
            self.tokens += response.json()["usage"]["total_tokens"]
            return response.json()["data"]

        parts = [texts[i : i + self.batch] for i in range(0, len(texts), self.batch)]
        items = [item for data in await asyncio.gather(*(one(p) for p in parts)) for item in data]
        vectors = np.array([item["embedding"] for item in items], dtype=np.float32)
        windows = [np.array([c["embedding"] for c in item["chunks"]], dtype=np.float32) for item in items]
        return vectors, windows

    async def close(self) -> None:
        await self.http.aclose()


def scoring_rows(vectors: np.ndarray, embedding_type: str) -> np.ndarray:
    """Float rows whose cosine ranks as the embedding type is searched (see the module's docstring)."""
    if embedding_type in ("float", "int8"):
        return vectors.astype(np.float32)
    if embedding_type == "uint8":
        return (vectors.astype(np.float32) + 0.5) * np.float32(2 / 255) - 1
    bits = vectors.view(np.uint8) if embedding_type == "ubinary" else (vectors.astype(np.int16) + 128).astype(np.uint8)
    return np.unpackbits(bits, axis=-1).astype(np.float32) * 2 - 1


def score(data: RetrievalSet, queries: np.ndarray, corpus: np.ndarray) -> dict[str, float]:
    return retrieval_metrics(queries, corpus, data.relevant, exclude=data.self_matches or None)


def best_window_metrics(data: RetrievalSet, queries: np.ndarray, windows: list[np.ndarray]) -> dict[str, float]:
    """MRR@10 / recall when a document scores its best window's cosine."""
    stacked = np.concatenate(windows)
    owners = np.repeat(np.arange(len(windows)), [len(w) for w in windows])
    scores = np.full((len(queries), len(windows)), -np.inf, dtype=np.float32)
    np.maximum.at(scores.T, owners, (queries @ stacked.T).T)
    for row, skipped in enumerate(data.self_matches or []):
        scores[row, list(skipped)] = -np.inf
    ranking = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    ranks = first_hit_ranks(ranking, data.relevant)
    return {"mrr@10": mrr_at_k(ranks, 10), "recall@1": recall_at_k(ranks, 1), "recall@10": recall_at_k(ranks, 10)}


def long_documents(data: RetrievalSet, fillers: list[str], target_chars: int, seed: int = 0) -> list[str]:
    """Each corpus text hidden at a random place among `fillers`, about `target_chars` characters long."""
    rng = np.random.default_rng(seed)

    def sentence(text: str) -> str:
        text = text.strip()
        return text if text[-1] in SENTENCE_ENDS else text + "。"

    docs = []
    for text in data.corpus:
        parts: list[str] = []
        size = len(text)
        while size < target_chars:
            parts.append(sentence(fillers[int(rng.integers(len(fillers)))]))
            size += len(parts[-1])
        parts.insert(int(rng.integers(len(parts) + 1)), sentence(text))
        docs.append("".join(p + ("\n\n" if i % 5 == 4 else "") for i, p in enumerate(parts)))
    return docs


async def run(args: argparse.Namespace) -> dict[str, Any]:
    proxy = Proxy(args.url, args.model, args.concurrency, args.batch_size)
    card = await proxy.connect()
    out: dict[str, Any] = {"model": proxy.model, "dim": card["dimensions"], "window": card["max_tokens"]}
    try:
        if "compact" in args.parts:
            data = load_task("retrieval-zh")
            rows: dict[str, dict[str, float]] = {}
            for embedding_type in ("float", "int8", "uint8", "binary", "ubinary"):
                started = time.perf_counter()
                q = await proxy.embed(data.queries, "query", embedding_type=embedding_type)
                c = await proxy.embed(data.corpus, "passage", embedding_type=embedding_type)
                rows[embedding_type] = score(data, scoring_rows(q, embedding_type), scoring_rows(c, embedding_type))
                rows[embedding_type]["bytes_per_vector"] = int(c.nbytes // len(c))
                print(embedding_type, rows[embedding_type], f"{time.perf_counter() - started:.0f} s", flush=True)
            out["embedding_type"] = rows
            dims: dict[str, dict[str, float]] = {}
            for dimensions in args.dimensions:
                q = await proxy.embed(data.queries, "query", dimensions=dimensions)
                c = await proxy.embed(data.corpus, "passage", dimensions=dimensions)
                dims[str(dimensions)] = score(data, q, c)
                print("dimensions", dimensions, dims[str(dimensions)], flush=True)
            out["dimensions"] = dims
        if "long" in args.parts:
            full = load_task("retrieval-zh")
            data = load_task("retrieval-zh", limit=args.long_queries)
            taken = set(data.corpus) | set(data.queries)
            fillers = [t for t in full.corpus if t not in taken and len(t) >= 8]
            target = int(args.windows * card["max_tokens"] * args.chars_per_token)
            docs = long_documents(data, fillers, target)
            lengths = await token_lengths(args.url, proxy.model, docs)
            out["long"] = {
                "queries": len(data.queries), "documents": len(docs),
                "chars_mean": float(np.mean([len(d) for d in docs])),
                "tokens_median": float(np.median(lengths)), "results": {},
            }  # fmt: skip
            q = await proxy.embed(data.queries, "query")
            short = await proxy.embed(data.corpus, "passage")
            out["long"]["results"]["short texts (no filler)"] = score(data, q, short)
            for mode in args.modes:
                proxy.tokens = 0
                started = time.perf_counter()
                if mode == "CHUNK":
                    c, windows = await proxy.embed_chunks(docs)
                    best = best_window_metrics(data, q, windows)
                    out["long"]["results"]["CHUNK, best window"] = best
                    print("long CHUNK, best window", best, flush=True)
                else:
                    c = await proxy.embed(docs, "passage", truncate=mode)
                result = score(data, q, c)
                result["tokens_embedded"] = proxy.tokens
                result["seconds"] = round(time.perf_counter() - started, 1)
                out["long"]["results"][mode] = result
                print("long", mode, result, flush=True)
    finally:
        await proxy.close()
    return out


async def token_lengths(url: str, model: str | None, texts: list[str]) -> list[int]:
    base = url.rstrip("/").removesuffix("/v1")
    async with httpx.AsyncClient(timeout=120) as http:
        response = await http.post(f"{base}/tokenize", json={"inputs": texts, "model": model})
        return [len(tokens) for tokens in response.json()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--model", default=None)
    parser.add_argument("--parts", nargs="+", default=["compact", "long"], choices=["compact", "long"])
    parser.add_argument("--dimensions", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--long-queries", type=int, default=20, help="queries of the long-document check")
    parser.add_argument("--modes", nargs="+", default=["END", "START", "CHUNK"], help="truncate modes, long part")
    parser.add_argument("--windows", type=float, default=2.0, help="document length in model windows")
    parser.add_argument("--chars-per-token", type=float, default=1.0, help="Chinese characters a token (estimate)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out = asyncio.run(run(args))
    text = json.dumps(out, indent=2, ensure_ascii=False)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
