"""Every token's hidden state (the encoder's `last_hidden_state`), and pooling it without normalisation.

What TEI's `/embed_all` answers (one vector per token, special tokens included) and what `/embed` with
`normalize: false` needs: the served ensembles end in a pooling model that normalises, so the un-normalised
sentence vector is pooled here from the states, exactly as the pooling model does before it normalises.
The texts (with the model's instruction in front) or token ids go through `NAME-tokenizer` (which truncates to
the window) and then `NAME-encoder`, in requests of at most the model's batch size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import numpy as np

from bge_triton.model_facts import ModelFacts
from bge_triton.model_names import model_names

from ..errors import InputTooLong
from ..triton_client import ID_PADDING, AsyncEmbeddingClient, with_instruction
from .replicas import ReplicaSet

TOKENIZER_OUTPUTS = ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS", "TOKEN_COUNT", "FULL_TOKEN_COUNT")


async def token_states(
    replicas: ReplicaSet, items: list, *, ids: bool, query: bool, truncate: bool
) -> tuple[list[np.ndarray], int]:
    """Per input its states, float32 [tokens, dim] (tokens after truncation to the window), and the tokens in
    all; InputTooLong for the first input over the window when `truncate` is False."""
    facts = replicas.facts
    rows = next(iter(replicas.clients.values())).max_batch_size or 1
    chunks = [items[start : start + rows] for start in range(0, len(items), rows)]
    parts = await asyncio.gather(*(_chunk_states(replicas, facts, chunk, ids=ids, query=query) for chunk in chunks))
    states = [s for part, _ in parts for s in part]
    full = np.concatenate([f for _, f in parts])
    if not truncate:
        over = np.flatnonzero(full > facts.max_tokens)
        if len(over):
            index = int(over[0])
            raise InputTooLong(index, int(full[index]), facts.max_tokens)
    return states, sum(len(s) for s in states)


async def _chunk_states(
    replicas: ReplicaSet, facts: ModelFacts, chunk: list, *, ids: bool, query: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    names = model_names(facts.name)
    if ids:
        width = max(len(row) for row in chunk)
        tensor = np.full((len(chunk), width), ID_PADDING, dtype=np.int64)
        for r, row in enumerate(chunk):
            tensor[r, : len(row)] = row
        source = {"TOKEN_IDS": tensor}
    else:
        texts = with_instruction(chunk, facts, query=query)
        source = {"TEXT": np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)}

    tokenized = await call_model(replicas, names["tokenizer"], source, TOKENIZER_OUTPUTS)
    encoder_inputs = {"input_ids": tokenized["INPUT_IDS"], "attention_mask": tokenized["ATTENTION_MASK"]}
    if facts.uses_token_type_ids:
        encoder_inputs["token_type_ids"] = tokenized["TOKEN_TYPE_IDS"]
    encoded = await call_model(replicas, names["encoder"], encoder_inputs, ("last_hidden_state",))
    hidden = np.asarray(encoded["last_hidden_state"], dtype=np.float32)
    counts = tokenized["TOKEN_COUNT"].reshape(-1).astype(np.int64)
    full = tokenized["FULL_TOKEN_COUNT"].reshape(-1).astype(np.int64)
    return [hidden[r, : int(counts[r])].copy() for r in range(len(chunk))], full


async def call_model(
    replicas: ReplicaSet, model: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...]
) -> dict[str, np.ndarray]:
    """One request to `model` (a model of the replicas' export), with failover over the replicas."""

    def infer(client: AsyncEmbeddingClient) -> Awaitable[dict[str, np.ndarray]]:
        return client.infer_tensors(model, inputs, outputs)

    return await replicas.call(infer)


async def decode_ids(replicas: ReplicaSet, rows: list[list[int]], *, skip_special_tokens: bool) -> list[str]:
    """Token-id rows -> their text, by the model's own tokenizer (`NAME-tokenize`'s DECODE_IDS)."""
    model = model_names(replicas.facts.name)["tokenize"]
    batch = next(iter(replicas.clients.values())).max_batch_size or 1
    texts: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        ids = np.full((len(chunk), max(1, *(len(row) for row in chunk))), ID_PADDING, dtype=np.int64)
        for r, row in enumerate(chunk):
            ids[r, : len(row)] = row
        flags = np.full((len(chunk), 1), skip_special_tokens, dtype=np.bool_)
        answer = await call_model(replicas, model, {"DECODE_IDS": ids, "SKIP_SPECIAL_TOKENS": flags}, ("DECODED",))
        texts += [bytes(t).decode("utf-8", "replace") for t in answer["DECODED"].reshape(-1)]
    return texts


def pool(states: np.ndarray, pooling: str) -> np.ndarray:
    """One input's states pooled as its pooling model does, before normalising (cls, mean, max, lasttoken)."""
    if pooling == "cls":
        return states[0]
    if pooling == "mean":
        return states.mean(axis=0)
    if pooling == "max":
        return states.max(axis=0)
    if pooling == "lasttoken":
        return states[-1]
    raise ValueError(f"unknown pooling {pooling!r}")
