"""Awaiting several calls at once: all of their results in order, or the first error with the others cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_or_cancel(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """The results of `calls`, in order. They run concurrently, each as a task; when one fails (or this coroutine is
    cancelled) the others are cancelled. A single call is awaited in place: no task and its extra event-loop turns
    (a RAG query's one Triton call, issue 19)."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
