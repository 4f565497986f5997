"""The commander's sockets under hostile clients: a cap on connections, a deadline on request heads and
bodies, and accept errors that cannot flood the log.

A renewal is a few hundred bytes every ``ttl/3`` seconds; what must never happen is that clients who
never finish a request (a slowloris, a port scanner, a stuck proxy) use up the file descriptors, so
that workers' renewals cannot connect and every worker fences itself.  aiohttp reads a request's head
without a deadline of its own, so the listening socket's protocol is wrapped (:class:`GuardedProtocol`,
plain asyncio, around aiohttp's own request handler):

* **head deadline**: a connection must deliver its first request head (up to the blank line) within
  ``header_timeout_s`` of connecting (less up to a quarter, at random, so that a flood opened at once is
  not closed in one go), else it is answered 408 and closed; aiohttp sees the connection
  only once that head is in.  Later requests on a kept-alive connection are bounded by aiohttp's
  keep-alive timeout, set to the same value.
* **connection cap**: at ``max_connections`` a new connection takes the place of the oldest one that
  has not delivered its first head yet (the slow ones, never a worker mid-request); when every
  connection has, the new one is answered 503 and closed.
* **body deadline**: a request's body must arrive within ``body_timeout_s`` of its head
  (:func:`body_deadline`): the API answers 408 (``relay.commander.app``), and a body nobody reads (the
  answer was a 401, sent before reading it) cannot hold the connection past the deadline either.

:func:`install_accept_error_log` keeps the event loop's accept errors (EMFILE when descriptors run
out) to one line per interval, and :func:`raise_fd_limit` lifts the soft descriptor limit to the hard
one when ``relayctl serve`` starts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay.commander.ratelog import RateLimitedLog

log = logging.getLogger("relay.commander")

_HEAD_END = b"\r\n\r\n"


def _answer(status: str, text: str, *headers: str) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, written before aiohttp ever sees it."""
    body = (text + "\n").encode()
    head = [f"HTTP/1.1 {status}", "Connection: close", "Content-Type: text/plain", *headers]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


_TIMEOUT = _answer("408 Request Timeout", "request head not received in time")
_FULL = _answer("503 Service Unavailable", "commander at its connection limit", "Retry-After: 1")
_TOO_LARGE = _answer("431 Request Header Fields Too Large", "request head over 64 KiB")
#: a request head longer than this is refused (aiohttp's own limits are 8 KiB a line)
MAX_HEAD_BYTES = 64 * 1024
#: descriptors kept for the state file, its WAL, logs and outgoing callbacks when the cap follows the limit
FD_RESERVE = 64


#: the kernel's queue of connections not accepted yet (they hold no descriptor of ours): a worker's
#: connection waits there behind a flood instead of being dropped and retried a second later
LISTEN_BACKLOG = 1024


def sizing(files: int, max_connections: int) -> tuple[int, int]:
    """(connection cap, accept batch) for an open-file limit of ``files``.

    asyncio accepts up to ``backlog`` connections in one go before any of them reaches
    :meth:`ConnectionGuard.admit` (each holding a descriptor already), the next batch may come before
    those, and a connection closed to make room lets go of its descriptor one loop turn later: the cap
    leaves room for three such batches as well as :data:`FD_RESERVE`, so that the process does not run
    out of descriptors (EMFILE stops *every* accept, workers' included, for a second at a time)."""
    batch = min(LISTEN_BACKLOG, max(16, files // 8))
    return max(16, min(max_connections, files - FD_RESERVE - 3 * batch)), batch


async def listen(
    guard: ConnectionGuard, inner: Callable[[], Any], host: str, port: int, batch: int
) -> asyncio.Server:
    """The listening socket, with ``guard`` around aiohttp's protocol factory (``inner``).

    asyncio uses its ``backlog`` argument both for ``listen(2)`` and as how many connections it accepts
    in one go; the second must stay small on a small open-file limit, the first need not: the queue is
    set again to :data:`LISTEN_BACKLOG` once the server is up."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(guard.factory(inner), host, port, backlog=batch, reuse_address=True)
    for sock in server.sockets:
        with socket.fromfd(sock.fileno(), sock.family, sock.type) as same:  # a dup of the listening socket
            same.listen(LISTEN_BACKLOG)
    return server


@dataclass
class ConnectionStats:
    """Counters for tests, benchmarks and the metrics endpoint."""

    accepted: int = 0
    refused: int = 0  # at the cap with nobody to evict: answered 503
    evicted: int = 0  # slow connections closed to make room for a new one
    head_timeouts: int = 0  # closed for not sending a request head in time


class ConnectionGuard:
    """The live connections of one listening socket, and the rules above over them."""

    def __init__(self, *, max_connections: int, header_timeout_s: float) -> None:
        if max_connections < 1 or header_timeout_s <= 0:
            raise ValueError("max_connections and header_timeout_s must be positive")
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.stats = ConnectionStats()
        self._live: dict[GuardedProtocol, None] = {}
        self._unproven: dict[GuardedProtocol, None] = {}  # no complete head yet, oldest first
        self._log = RateLimitedLog(log, every_s=30.0)

    def __len__(self) -> int:
        return len(self._live)

    def factory(self, inner: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """The protocol factory to listen with, around aiohttp's (``runner.server``)."""
        return lambda: GuardedProtocol(self, inner)

    def admit(self, conn: GuardedProtocol) -> bool:
        if len(self._live) >= self.max_connections:
            victim = next(iter(self._unproven), None)
            if victim is None:
                self.stats.refused += 1
                self._log.log(
                    logging.WARNING,
                    "full",
                    "%d connections open (max_connections): refusing new ones with 503",
                    len(self._live),
                )
                return False
            self.stats.evicted += 1
            self._log.log(
                logging.WARNING,
                "evict",
                "%d connections open (max_connections): closing the oldest that sent no request yet",
                len(self._live),
            )
            victim.close_slow()
        self.stats.accepted += 1
        self._live[conn] = None
        self._unproven[conn] = None
        return True

    def proven(self, conn: GuardedProtocol) -> None:
        self._unproven.pop(conn, None)

    def gone(self, conn: GuardedProtocol) -> None:
        self._live.pop(conn, None)
        self._unproven.pop(conn, None)


class GuardedProtocol(asyncio.Protocol):
    """One connection: a deadline until the first request head is in, then aiohttp's handler.

    aiohttp's handler (and the task it starts) is made only once that head is complete, and is fed the
    bytes held until then: a connection that never finishes its head costs a buffer and a timer, so
    thousands of them (and the churn of closing and reopening them) stay cheap for the event loop that
    answers the renewals."""

    def __init__(self, guard: ConnectionGuard, inner: Callable[[], Any]) -> None:
        self._guard = guard
        self._make_inner = inner
        self._inner: Any = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if not self._guard.admit(self):
            transport.write(_FULL)  # type: ignore[attr-defined]
            transport.close()
            return
        loop = asyncio.get_running_loop()
        # jittered down by up to a quarter: a flood opened at once does not time out in one loop turn
        deadline = self._guard.header_timeout_s * random.uniform(0.75, 1.0)
        self._timer = loop.call_later(deadline, self._head_too_slow)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        if self._timer is None:  # refused or closed: nothing more is read
            return
        searched = max(0, len(self._head) - 3)
        self._head += data
        if self._head.find(_HEAD_END, searched) >= 0:
            self._start_inner()
        elif len(self._head) > MAX_HEAD_BYTES:
            self._close_with(_TOO_LARGE)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._guard.gone(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)
            self._inner = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def close_slow(self) -> None:
        """Answer 408 and close: the head did not come in time (or room is needed for a new connection)."""
        self._close_with(_TIMEOUT)

    def _start_inner(self) -> None:
        self._cancel_timer()
        self._guard.proven(self)
        head, self._head = bytes(self._head), bytearray()
        self._inner = self._make_inner()
        self._inner.connection_made(self._transport)
        self._inner.data_received(head)

    def _close_with(self, answer: bytes) -> None:
        self._cancel_timer()
        self._guard.gone(self)
        self._head = bytearray()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(answer)
            self._transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_too_slow(self) -> None:
        self._timer = None
        self._guard.stats.head_timeouts += 1
        self._close_with(_TIMEOUT)


#: when the body of the request must be in, on the loop's clock (set by :func:`body_deadline`); a typed
#: key where aiohttp has them (3.13+), else the plain string older ones take
BODY_DEADLINE: Any = (
    web.RequestKey("relay_body_deadline", float) if hasattr(web, "RequestKey") else "relay_body_deadline"
)


def body_deadline(timeout_s: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: the request's body must be in ``timeout_s`` after its head.  Handlers that read it
    (``app._body``) stop at the deadline with a 408; one second later the connection is closed whether
    anyone reads the body or not (a body behind a 401 is never read)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        content = request.content
        if request.body_exists and not content.is_eof():
            loop = asyncio.get_running_loop()
            request[BODY_DEADLINE] = loop.time() + timeout_s
            transport = request.transport

            def too_slow() -> None:
                if not content.is_eof() and transport is not None and not transport.is_closing():
                    transport.close()

            timer = loop.call_later(timeout_s + 1.0, too_slow)
            content.on_eof(timer.cancel)
        return await handler(request)

    return middleware


def install_accept_error_log(loop: asyncio.AbstractEventLoop) -> None:
    """Route the loop's accept errors (EMFILE, ENFILE, ENOBUFS) to one warning per 30 s; everything
    else goes to the default handler as before."""
    limited = RateLimitedLog(log, every_s=30.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept" in message:
            exc = context.get("exception")
            limited.log(
                logging.WARNING,
                "accept",
                "cannot accept connections: %s (%s); clients are kept waiting in the backlog",
                exc,
                message,
            )
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def raise_fd_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit (connections are descriptors); returns
    (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft, hard
