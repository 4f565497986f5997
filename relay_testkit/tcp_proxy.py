"""A small TCP proxy that a test can cut, to put a network partition between a worker and the commander.

Typical use::

    with TcpProxy("127.0.0.1", commander_port) as proxy:
        worker_env["COMMANDER_URL"] = proxy.url
        ...
        proxy.cut("blackhole")   # bytes vanish: requests hang until the client's timeout (a dead link)
        proxy.cut("reset")       # every connection, old and new, is reset at once (a refusing peer)
        proxy.heal()             # new connections are forwarded again

The proxy runs its own asyncio loop in a daemon thread, so synchronous tests and benchmarks can
drive it without an event loop of their own.  ``blackhole`` is the nastier partition: nothing
answers, nothing fails fast, so the worker's self-fencing must come from its own deadline and not
from an error.  Connections held during a blackhole are reset on ``heal`` (their streams lost bytes,
so they could never be used again), as a real connection would time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["open", "blackhole", "reset"]


@dataclass(eq=False)  # hashable by identity: connections live in a set
class _Conn:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with a TCP RST (SO_LINGER 0), not a polite FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


class TcpProxy:
    """Forwards ``listen_host:port`` to ``target_host:target_port`` until cut."""

    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self.mode: Mode = "open"
        self.connections = 0  # accepted so far
        self.bytes_forwarded = 0
        self.cut_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[_Conn] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closed = False

    # ------------------------------------------------------------------ control (any thread)

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    def start(self) -> TcpProxy:
        self._thread = threading.Thread(target=self._main, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tcp proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"tcp proxy failed to start: {self._error}")
        return self

    def cut(self, mode: Literal["blackhole", "reset"] = "blackhole") -> None:
        """Partition: from now on nothing gets through, in the given style."""
        if mode not in ("blackhole", "reset"):
            raise ValueError(f"unknown cut mode {mode!r}")
        self.cut_at = time.time()
        self._call(self._set_mode, mode)

    def heal(self) -> None:
        """End the partition: new connections are forwarded (held ones are reset)."""
        self.cut_at = None
        self._call(self._set_mode, "open")

    def close(self) -> None:
        if self._loop is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):
            self._call(self._shutdown)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> TcpProxy:
        return self.start() if self._loop is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        """Run ``fn`` on the proxy's loop and wait until it has run (nothing to do once closed)."""
        if self._closed:
            return
        if self._loop is None:
            raise RuntimeError("tcp proxy not started")

        async def call() -> None:
            fn(*args)

        asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    # ------------------------------------------------------------------ the loop's side

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                asyncio.start_server(self._handle, self.listen_host, 0, reuse_address=True)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode == "reset" or (mode == "open" and previous == "blackhole"):
            for conn in list(self._conns):
                self._drop(conn)

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        _abort(conn.client)
        _abort(conn.upstream)
        for task in conn.tasks:
            task.cancel()
        self._conns.discard(conn)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":
            _abort(writer)
            return
        conn = _Conn(writer)
        self._conns.add(conn)
        try:
            if self.mode == "open":
                try:
                    up_reader, conn.upstream = await asyncio.open_connection(
                        self.target_host, self.target_port
                    )
                except OSError:
                    _abort(writer)
                    return
                conn.tasks = [
                    asyncio.ensure_future(self._pipe(reader, conn.upstream)),
                    asyncio.ensure_future(self._pipe(up_reader, writer)),
                ]
                await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
            else:  # blackhole: swallow everything, answer nothing
                conn.tasks = [asyncio.ensure_future(self._pipe(reader, None))]
                await asyncio.wait(conn.tasks)
        except asyncio.CancelledError:
            pass
        finally:
            if conn in self._conns:
                self._conns.discard(conn)
                for task in conn.tasks:
                    task.cancel()
                for w in (conn.upstream, writer):
                    if w is not None:
                        with contextlib.suppress(Exception):
                            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if writer is None or self.mode != "open":
                    continue  # a blackhole: the bytes vanish
                writer.write(data)
                self.bytes_forwarded += len(data)
                await writer.drain()
        if writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
