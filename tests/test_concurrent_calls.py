"""gather_or_cancel: results in order, the first error cancels the rest, a lone call runs in the caller's task."""

from __future__ import annotations

import asyncio

import pytest

from bge_triton.client.concurrent_calls import gather_or_cancel


def test_results_come_in_call_order() -> None:
    async def value(v: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return v

    assert asyncio.run(gather_or_cancel([value(1, 0.03), value(2, 0.0), value(3, 0.01)])) == [1, 2, 3]


def test_a_failure_cancels_the_others() -> None:
    cancelled: list[bool] = []

    async def slow() -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 0

    async def fails() -> int:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    async def main() -> None:
        with pytest.raises(ValueError, match="boom"):
            await gather_or_cancel([slow(), fails()])
        await asyncio.sleep(0)  # let the cancelled task run its handler

    asyncio.run(main())
    assert cancelled == [True]


def test_a_lone_call_runs_in_the_callers_task() -> None:
    async def task_of() -> asyncio.Task | None:
        return asyncio.current_task()

    async def main() -> tuple[asyncio.Task | None, list[asyncio.Task | None]]:
        return asyncio.current_task(), await gather_or_cancel([task_of()])

    caller, [inner] = asyncio.run(main())
    assert inner is caller
