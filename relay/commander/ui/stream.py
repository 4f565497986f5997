"""One server-sent-events stream per dashboard tab: the run list, and on a run page that run's detail and logs.

A tab opens exactly one ``EventSource`` on ``/ui/api/stream`` (``?run=ID`` on a run page) and gets:

* ``runs`` (runs page): ``{full, runs, removed, now}``, the whole list first, then only the runs that
  changed;
* ``run`` (run page): ``{reset, detail, now}``, the run's detail (``RunDetail``), first whole, then
  with ``events`` and ``metrics_history`` holding only what was appended since the previous message;
* ``logs`` (run page): a ``LogsResponse`` page of new log lines (the last 500 first);
* ``gone`` (run page): the run does not exist.

The run page's detail and logs are read again only when the feed says the run changed (a report, a
renew, a release), so an idle run costs nothing.  Why hand-written rather than aiohttp-sse: the
format is three lines per message, and the stream must end on the commander's shutdown, which is
simplest with the loop in view.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from relay.commander.errors import RunNotFoundError
from relay.commander.ui import source
from relay.commander.ui.feed import RunsFeed, Subscription
from relay.commander.ui.feed import sse_frame as frame
from relay.commander.ui.source import Commander

KEEPALIVE_S = 15.0
LOG_PAGE = 500
APPENDED = ("events", "metrics_history")
LIMITS = {"events": source.DETAIL_EVENTS, "metrics_history": source.DETAIL_METRICS}


def appended(previous: list[Any], current: list[Any], limit: int) -> list[Any] | None:
    """The items of ``current`` after those already sent (``previous``), or None when they cannot be
    told apart (the window slid past everything sent): then the whole list is sent again."""
    if not previous:
        return current
    n, last = len(previous), previous[-1]
    if len(current) < limit and len(current) >= n and current[n - 1] == last:
        return current[n:]
    for index in range(len(current) - 1, -1, -1):
        if current[index] == last:
            return current[index + 1 :]
    return None


class RunFollower:
    """What one run page has been sent: the detail's lists and the log cursor."""

    def __init__(self, api: Commander, run_id: str, cursor: int = 0) -> None:
        self.api = api
        self.run_id = run_id
        self.sent: dict[str, list[Any]] = {name: [] for name in APPENDED}
        self.cursor = cursor  # a reconnecting browser's Last-Event-ID: the lines it already shows
        self.started = False

    def detail_message(self) -> dict[str, Any] | None:
        """The ``run`` message now, or None when the run does not exist."""
        try:
            detail = source.run_detail(self.api, self.run_id).model_dump(mode="json")
        except RunNotFoundError:
            return None
        reset = not self.started
        tails: dict[str, list[Any] | None] = {}
        if self.started:
            tails = {name: appended(self.sent[name], detail[name], LIMITS[name]) for name in APPENDED}
            reset = any(tail is None for tail in tails.values())
        self.sent = {name: detail[name] for name in APPENDED}  # the window the browser now ends with
        if not reset:
            detail.update(tails)
        self.started = True
        return {"reset": reset, "detail": detail}

    def log_messages(self) -> list[dict[str, Any]]:
        """New log pages after the cursor (the last LOG_PAGE lines on the first call)."""
        pages = []
        first = self.cursor == 0
        while True:
            page = source.log_page(
                self.api, self.run_id, after=self.cursor, limit=LOG_PAGE, tail=LOG_PAGE if first else 0
            )
            first = False
            if page.lines:
                pages.append(page.model_dump(mode="json"))
            self.cursor = page.next_cursor
            if not page.more:
                return pages


async def serve_stream(
    request: web.Request, api: Commander, feed: RunsFeed, run_id: str | None
) -> web.StreamResponse:
    """Stream until the tab goes away or the commander shuts down."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    sub, full = feed.subscribe()
    follower = RunFollower(api, run_id, _last_event_id(request)) if run_id else None
    try:
        if follower is None:
            await response.write(b"retry: 2000\n\n" + full.frame)
        else:
            await response.write(b"retry: 2000\n\n")
            if not await _send_run(response, follower, full.now):
                return response
        await _pump(response, feed, sub, follower)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        feed.unsubscribe(sub)
    return response


async def _pump(
    response: web.StreamResponse, feed: RunsFeed, sub: Subscription, follower: RunFollower | None
) -> None:
    closing = asyncio.ensure_future(feed.closing.wait())
    try:
        while not sub.dropped:
            getter = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait(
                {getter, closing}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if closing in done:
                getter.cancel()
                return
            if getter not in done:
                getter.cancel()
                await response.write(b": keep-alive\n\n")
                continue
            change = getter.result()
            if follower is None:
                if change.runs or change.removed:
                    await response.write(change.frame)
            elif follower.run_id in change.changed_ids() or follower.run_id in change.removed:
                if not await _send_run(response, follower, change.now):
                    return
    finally:
        closing.cancel()


async def _send_run(response: web.StreamResponse, follower: RunFollower, now: float) -> bool:
    """Send the followed run's detail and new log lines; False when the run does not exist."""
    message = follower.detail_message()
    if message is None:
        await response.write(frame("gone", {"run_id": follower.run_id}))
        return False
    chunks = [frame("run", {**message, "now": now})]
    # Each log page carries its cursor as the event id: a browser that reconnects (a commander restart, a
    # network blip) sends it back as Last-Event-ID and gets only the lines it has not shown yet.
    chunks += [
        f"id: {page['next_cursor']}\n".encode() + frame("logs", page) for page in follower.log_messages()
    ]
    await response.write(b"".join(chunks))
    return True


def _last_event_id(request: web.Request) -> int:
    """The log cursor of a reconnecting page: the Last-Event-ID its EventSource sends back, or ``after``
    when the page opened a new EventSource itself (0: none, or not one of ours)."""
    raw = request.headers.get("Last-Event-ID") or request.query.get("after", "")
    return int(raw) if raw.isdigit() and len(raw) < 19 else 0
