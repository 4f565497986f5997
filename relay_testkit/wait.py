"""The one way tests and benches wait for something: poll a condition until it holds, or fail saying what.

Every wait in the suite goes through :func:`wait_for` (from a thread or a synchronous test) or
:func:`until` (from a coroutine, without blocking the loop the condition may depend on), so a timeout
always names what was awaited, and a process that died first is reported at once instead of after the
whole timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time (an AssertionError, so pytest shows it as a failed check)."""


def _failure(what: str, timeout_s: float, detail: Callable[[], object] | None) -> WaitTimeout:
    extra = ""
    if detail is not None:
        try:
            extra = f"; {detail()}"
        except Exception as exc:  # the detail is a courtesy: never hide the timeout behind it
            extra = f"; (detail failed: {exc})"
    return WaitTimeout(f"timed out after {timeout_s:g}s waiting for {what}{extra}")


def wait_for(
    cond: Callable[[], T],
    timeout_s: float = 10.0,
    what: str = "the condition",
    proc: subprocess.Popen[Any] | None = None,
    *,
    interval_s: float = 0.02,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``cond`` until it returns something truthy and return that value.

    Raises :class:`WaitTimeout` naming ``what`` (plus ``detail()``) when ``timeout_s`` passes, or at once
    when ``proc`` exits before the condition holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            value = cond()
            if value:
                return value
            raise WaitTimeout(f"process exited with {proc.returncode} before {what}")
        if time.monotonic() >= deadline:
            raise _failure(what, timeout_s, detail)
        time.sleep(interval_s)


async def until(
    cond: Callable[[], Any],
    timeout_s: float = 10.0,
    what: str = "the condition",
    *,
    interval_s: float = 0.02,
    detail: Callable[[], object] | None = None,
) -> Any:
    """:func:`wait_for` for coroutines: sleeps on the loop between polls, so servers on it keep running.
    ``cond`` may be a coroutine function (a condition that calls an API)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(what, timeout_s, detail)
        await asyncio.sleep(interval_s)
