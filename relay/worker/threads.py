"""Slow blocking work (hashing, commits, pulls, remote calls) off the worker's event loop, abandonable."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` in a fresh daemon thread and await its result.

    Not ``asyncio.to_thread``: the default executor's threads are joined at interpreter exit, so a
    fenced worker would hang on a hash or a download it no longer wants.  A daemon thread is simply
    abandoned when the worker exits.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def _set(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _runner() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set, None, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_set, result, None)

    threading.Thread(target=_runner, name=f"relay-{getattr(fn, '__name__', 'work')}", daemon=True).start()
    return await fut
