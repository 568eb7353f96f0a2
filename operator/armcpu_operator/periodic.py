"""A step run at start, whenever its event is set, and every resync period: the shape of the
operator's housekeeping loops (garbage collection, the VM webhook's scope)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from armcpu_operator.runtime import Runtime


async def whenever(event: asyncio.Event, runtime: Runtime, step: Callable[[], Awaitable[None]]) -> None:
    """Run ``step`` now, then each time ``event`` is set (a burst of sets after one debounce) and at least
    every resync period. ``step`` handles its own failures (it may set ``event`` again to retry)."""
    event.set()
    while True:
        try:
            await asyncio.wait_for(event.wait(), timeout=runtime.resync_seconds)
        except TimeoutError:
            pass
        event.clear()
        await asyncio.sleep(runtime.debounce_seconds)
        await step()
