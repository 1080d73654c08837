"""The tests' one bounded wait: returns the first truthy value, fails naming what it awaited."""

from __future__ import annotations

import pytest

from tests.eventually import aeventually, eventually


def test_returns_first_truthy_value_after_retrying_failed_assertions():
    calls = iter([None, AssertionError("not yet"), 0, "ready"])

    def check():
        value = next(calls)
        if isinstance(value, AssertionError):
            raise value
        return value

    assert eventually(check, timeout=5, interval=0.001, what="ready") == "ready"


def test_timeout_names_what_and_last_value_and_context():
    with pytest.raises(AssertionError, match=r"the flag: not reached within 0.05 s \(last value: "
                                             r"False\)\nlog tail"):
        eventually(lambda: False, timeout=0.05, interval=0.01, what="the flag",
                   context=lambda: "log tail")


def test_gave_up_stops_at_once():
    with pytest.raises(AssertionError, match="gave up waiting for start: process exited"):
        eventually(lambda: None, timeout=60, what="start", gave_up=lambda: "process exited")


def test_other_exceptions_propagate():
    with pytest.raises(ZeroDivisionError):
        eventually(lambda: 1 / 0, timeout=5, what="x")


async def test_async_accepts_plain_and_coroutine_checks():
    seen = []

    async def check():
        seen.append(1)
        return len(seen) >= 3 and "done"

    assert await aeventually(check, timeout=5, interval=0.001, what="three") == "done"
    assert await aeventually(lambda: 7, timeout=5, what="plain") == 7
    with pytest.raises(AssertionError, match="never: not reached"):
        await aeventually(lambda: None, timeout=0.02, interval=0.005, what="never")
