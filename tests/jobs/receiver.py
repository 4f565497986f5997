"""A real HTTP callback receiver on loopback (aiohttp in its own thread), usable from sync and async tests.

It records every request it answers with 2xx (headers and JSON body) and counts every attempt, and
can be told to fail: answer ``fail_status`` (500) while ``failing`` is set, or hold each request
``delay_s`` seconds.  ``Receiver(port=P)`` binds a port chosen earlier, so a test can point a
callback at a closed port (connection refused) and start the receiver there later.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay_testkit.threaded_app import ThreadedApp
from relay_testkit.wait import wait_for


@dataclass
class Received:
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


class Receiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.failing = False
        self.fail_status = 500
        self.delay_s = 0.0
        self.attempts = 0
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadedApp | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._server = ThreadedApp(
            app, port=self.port, name="callback-receiver", shutdown_timeout=0.2, reuse_address=True
        ).start(timeout_s=10)
        self.port = self._server.port
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        with self._lock:
            self.attempts += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failing:
            return web.Response(status=self.fail_status, text="receiver failing on purpose")
        body = await request.json()
        with self._lock:
            self._received.append(Received(dict(request.headers), body, time.time()))
        return web.Response(text="ok")

    # ------------------------------------------------------------------ reading

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def events(self, run_id: str | None = None) -> list[str]:
        return [r.body["event"] for r in self.received if run_id is None or r.body["run_id"] == run_id]

    def wait_for(self, cond: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll ``cond`` (from a sync test); the failure lists what arrived."""
        wait_for(cond, timeout, "the callbacks", detail=lambda: f"received {self.events()}")
