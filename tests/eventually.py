"""``eventually()``: the one bounded wait of the tests, sync and async.

A check is polled until it returns something truthy (returned to the caller) or until the
timeout, then the test fails naming what was awaited, the last value or assertion seen and,
when given, some context (a log tail, a status summary). ``gave_up`` stops the wait at once
when waiting is pointless (the process under test exited). The pause between polls is only
a poll period: every iteration makes a real check.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["aeventually", "eventually"]


class _Waiting:
    """Deadline and the last thing seen, shared by the sync and async loops."""

    def __init__(self, what: str, timeout: float, context: Callable[[], str] | None,
                 gave_up: Callable[[], str | None] | None) -> None:
        self.what = what
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.context = context
        self.gave_up = gave_up
        self.last: str = "no check finished"

    def saw(self, value: Any) -> None:
        self.last = f"last value: {value!r}"[:2000]

    def failed_check(self, exc: AssertionError) -> None:
        self.last = f"last check failed: {exc}"[:2000]

    def fail_if_over(self) -> None:
        reason = self.gave_up() if self.gave_up is not None else None
        if reason:
            self._fail(f"gave up waiting for {self.what}: {reason}")
        if time.monotonic() >= self.deadline:
            self._fail(f"{self.what}: not reached within {self.timeout:g} s")

    def _fail(self, headline: str) -> None:
        extra = f"\n{self.context()}" if self.context is not None else ""
        raise AssertionError(f"{headline} ({self.last}){extra}")


def eventually(check: Callable[[], T], *, timeout: float, what: str, interval: float = 0.2,
               context: Callable[[], str] | None = None,
               gave_up: Callable[[], str | None] | None = None) -> T:
    """Call ``check`` until it returns a truthy value (returned) within ``timeout`` seconds.

    An ``AssertionError`` from ``check`` counts as "not yet" and is reported if time runs
    out; other exceptions propagate at once.
    """
    waiting = _Waiting(what, timeout, context, gave_up)
    while True:
        try:
            value = check()
        except AssertionError as exc:
            waiting.failed_check(exc)
        else:
            if value:
                return value
            waiting.saw(value)
        waiting.fail_if_over()
        time.sleep(interval)  # poll period between real checks


async def aeventually(check: Callable[[], T | Awaitable[T]], *, timeout: float, what: str,
                      interval: float = 0.2, context: Callable[[], str] | None = None,
                      gave_up: Callable[[], str | None] | None = None) -> T:
    """:func:`eventually` for async tests: ``check`` may be a plain or a coroutine function."""
    waiting = _Waiting(what, timeout, context, gave_up)
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except AssertionError as exc:
            waiting.failed_check(exc)
        else:
            if value:
                return value  # type: ignore[return-value]
            waiting.saw(value)
        waiting.fail_if_over()
        await asyncio.sleep(interval)  # poll period between real checks
