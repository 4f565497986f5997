"""Hostile clients for tests, chaos and the slow-client benchmark: connections that never finish a request.

:class:`SlowClients` keeps ``count`` connections open to a commander from a background thread (its
own event loop).  Each sends the start of a request head and then one more header line every
``trickle_s`` seconds, forever (a slowloris); a connection the server closes is opened again at once,
so the pressure stays.  ``idle=True`` sends nothing at all after connecting.  It counts what the
server did to them: answered 408, answered 503, closed without an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import threading
from dataclasses import dataclass

_START = b"POST /api/lease/renew HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n"


@dataclass
class SlowStats:
    opened: int = 0
    open_now: int = 0
    open_peak: int = 0  # the most open at once
    answered_408: int = 0
    answered_503: int = 0
    closed_silently: int = 0
    connect_failed: int = 0


class SlowClients:
    """``count`` never-finishing connections to ``host:port`` until :meth:`stop`."""

    def __init__(
        self, host: str, port: int, count: int, *, trickle_s: float = 1.0, idle: bool = False
    ) -> None:
        self.host, self.port, self.count = host, port, count
        self.trickle_s = trickle_s
        self.idle = idle
        self.stats = SlowStats()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="slow-clients", daemon=True
        )

    def start(self, ready_timeout_s: float = 60.0) -> SlowClients:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.count + 256
        if soft < want:
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard)
            )
        self._thread.start()
        if not self._ready.wait(ready_timeout_s):
            raise RuntimeError(
                f"could not open {self.count} slow connections in {ready_timeout_s:g}s: {self.stats}"
            )
        return self

    def stop(self) -> SlowStats:
        self._stop.set()
        self._thread.join(30)
        return self.stats

    def __enter__(self) -> SlowClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._one(i)) for i in range(self.count)]
        while not self._stop.is_set():
            if self.stats.opened >= self.count:
                self._ready.set()
            await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _one(self, index: int) -> None:
        await asyncio.sleep((index % 100) * 0.002)  # do not open them all in one burst
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.stats.connect_failed += 1
                await asyncio.sleep(0.2)
                continue
            self.stats.opened += 1
            self.stats.open_now += 1
            self.stats.open_peak = max(self.stats.open_peak, self.stats.open_now)
            try:
                await self._trickle(reader, writer, index)
            finally:
                self.stats.open_now -= 1
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        """Send a never-ending head until the server answers or closes."""
        with contextlib.suppress(OSError):
            if not self.idle:
                writer.write(_START)
        line = 0
        while not self._stop.is_set():
            try:
                answer = await asyncio.wait_for(reader.read(64), timeout=self.trickle_s)
            except asyncio.TimeoutError:
                if not self.idle:
                    line += 1
                    with contextlib.suppress(OSError):
                        writer.write(f"X-Slow-{index}-{line}: still typing\r\n".encode())
                continue
            except OSError:
                answer = b""
            if answer.startswith(b"HTTP/1.1 408"):
                self.stats.answered_408 += 1
            elif answer.startswith(b"HTTP/1.1 503"):
                self.stats.answered_503 += 1
            else:
                self.stats.closed_silently += 1
            return
