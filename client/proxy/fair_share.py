"""Large requests in slices, Triton calls shared fairly: one request cannot hold the service hostage.

The client library cuts a request into calls of the model's `max_batch_size` (64 texts: 16,384 tokens at a
256-token window) and sends up to 8 at once through one first-come semaphore per model, so a one-text request
that arrives during a 512-text one waited behind all of it (measured: 77 s on 2 CPU cores). Here a
`/v1/embeddings` request is cut into slices of about `slice_tokens` estimated tokens (texts sorted by length,
so a slice pads little), and each slice waits for a turn at its model's `FairGate`: at most `capacity`
estimated tokens of the model in flight from this proxy, freed room going to the waiting request that holds
the least. A small request so waits for the slices already in Triton, not for the big request's backlog, and
many small requests still fit in flight together for Triton to batch.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import numpy as np

from ..concurrent_calls import gather_or_cancel
from ..errors import InputTooLong
from ..triton_client import EmbeddingResult
from .replicas import ReplicaSet


class FairGate:
    """At most `capacity` (estimated tokens) in flight, one holder at least; freed capacity goes to the waiting
    owner holding the least, and among those to the one served least recently (a newcomer first), so owners take
    turns instead of queueing behind the first one's backlog. Small requests (a few tokens each) fit together
    and Triton batches them; a large request's slices fill the capacity one after another."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.busy = 0
        self.held: Counter[object] = Counter()
        self.waiting: deque[tuple[object, int, asyncio.Future[None]]] = deque()
        self.last_turn: dict[object, int] = {}  # owner -> when it was last given a turn (a running count)
        self._turns = 0

    def _fits(self, cost: int) -> bool:
        return self.busy == 0 or self.busy + cost <= self.capacity

    @asynccontextmanager
    async def turn(self, owner: object, cost: int = 1) -> AsyncIterator[None]:
        if not self.waiting and self._fits(cost):
            self._take(owner, cost)
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (owner, cost, granted)
            self.waiting.append(entry)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release(owner, cost)  # the turn was given just as the waiter was cancelled
                else:
                    self.waiting.remove(entry)
                    self._hand_over()
                raise
        try:
            yield
        finally:
            self._release(owner, cost)

    def _take(self, owner: object, cost: int) -> None:
        self.busy += cost
        self.held[owner] += cost
        self._turns += 1
        self.last_turn[owner] = self._turns

    def _release(self, owner: object, cost: int) -> None:
        self.busy -= cost
        self.held[owner] -= cost
        if self.held[owner] <= 0:
            del self.held[owner]
        self._hand_over()
        if owner not in self.held and all(o is not owner for o, _, _ in self.waiting):
            self.last_turn.pop(owner, None)  # done: forget it

    def _hand_over(self) -> None:
        while self.waiting:
            # min is stable: an owner's earliest waiter first
            entry = min(self.waiting, key=lambda e: (self.held.get(e[0], 0), self.last_turn.get(e[0], 0)))
            owner, cost, granted = entry
            if not self._fits(cost):
                return  # the next in turn waits for room; nobody overtakes it
            self.waiting.remove(entry)
            self._take(owner, cost)
            granted.set_result(None)


def estimated_tokens(item: str | Sequence[int], max_tokens: int) -> int:
    """A cheap token estimate, at most the window: ids count themselves; ASCII text ~4 characters a token,
    other text (CJK) ~1 (no regex over megabytes on the event loop)."""
    if not isinstance(item, str):
        return min(len(item), max_tokens)
    return min(len(item) // 4 + 1 if item.isascii() else len(item), max_tokens)


def slices(sizes: Sequence[int], budget: int, max_rows: int) -> list[list[int]]:
    """Indices grouped, shortest first, into slices of at most `budget` (one item at least) and `max_rows`."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for index in sorted(range(len(sizes)), key=sizes.__getitem__):
        if current and (total + sizes[index] > budget or len(current) >= max_rows):
            out.append(current)
            current, total = [], 0
        current.append(index)
        total += sizes[index]
    if current:
        out.append(current)
    return out


async def embed_in_slices(
    replicas: ReplicaSet, gate: FairGate, items: list, *, ids: bool, query: bool, truncate: bool, slice_tokens: int
) -> EmbeddingResult:
    """`items` (texts, or token-id rows when `ids`) embedded slice by slice through `gate`, in input order;
    InputTooLong for the first input over the window when `truncate` is False."""
    facts = replicas.facts
    max_rows = next(iter(replicas.clients.values())).max_batch_size
    sizes = [estimated_tokens(item, facts.max_tokens) for item in items]
    groups = slices(sizes, slice_tokens, max_rows)
    owner = object()

    async def run(group: list[int]) -> EmbeddingResult:
        part = [items[i] for i in group]
        async with gate.turn(owner, sum(sizes[i] for i in group)):
            if ids:
                return await replicas.embed_token_ids(part, truncate=True)
            return await replicas.embed_with_usage(part, query=query, truncate=True)

    parts = await gather_or_cancel([run(group) for group in groups])
    if len(parts) == 1 and groups[0] == sorted(groups[0]):
        result = parts[0]  # one slice in input order (a RAG query): nothing to put back in order
    else:
        order = np.concatenate([np.asarray(group, dtype=np.int64) for group in groups])
        columns = []
        for name in ("vectors", "token_counts", "full_token_counts"):
            joined = np.concatenate([getattr(part, name) for part in parts])
            column = np.empty_like(joined)
            column[order] = joined
            columns.append(column)
        result = EmbeddingResult(*columns)
    if not truncate:
        over = np.flatnonzero(result.full_token_counts > facts.max_tokens)
        if len(over):
            index = int(over[0])
            raise InputTooLong(index, int(result.full_token_counts[index]), facts.max_tokens)
    return result
