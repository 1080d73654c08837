"""Small asyncio helpers shared by the shells."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel ``tasks`` and wait until each has finished.

    Used when a shell stops: a task that had already failed logged its error where it
    ran, so its exception is not raised again here and cannot stop the shutdown.
    """
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    for task in live:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def wait_for_wake(wake: asyncio.Event, delay: float) -> None:
    """Sleep up to ``delay`` seconds, or less if ``wake`` is set meanwhile (then cleared)."""
    wake.clear()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, delay)):
            await wake.wait()


async def drive_timers(
    get_timer: Callable[[], float | None],
    handle_timer: Callable[[float], None],
    clock: Callable[[], float],
    wake: asyncio.Event,
    max_sleep: float,
) -> None:
    """Run a sans-IO core's timers forever: call ``handle_timer(now)`` whenever its
    ``get_timer()`` is due, otherwise sleep until it is, until ``wake`` is set (an input
    may have moved the timer) or at most ``max_sleep`` (wall-clock steps, no timer)."""
    while True:
        now = clock()
        timer = get_timer()
        if timer is not None and now >= timer:
            handle_timer(now)
            continue
        await wait_for_wake(wake, max_sleep if timer is None else min(max_sleep, timer - now))
