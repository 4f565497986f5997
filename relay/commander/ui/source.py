"""What the dashboard reads from the commander, in one place: the same models the HTTP API answers with.

The dashboard never builds its own view of a run: the run list, a run's detail and its log pages are
the API's (``RunList``, ``RunDetail``, ``LogsResponse``), computed by the same code the API handlers
call.  This module is the only one in ``relay.commander.ui`` that knows where that code lives.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from relay.commander.auth import SharedSecretAuth
from relay.commander.control import RunControl
from relay.commander.routes import Endpoint
from relay.commander.store import Store
from relay.commander.views import RunViews
from relay.schema import LogsResponse, RunDetail, RunList


class Commander(Protocol):
    """What the dashboard uses of the commander's API object (``relay.commander.app.CommanderApi``),
    typed by shape so that the dashboard never imports the app that installs it."""

    auth: SharedSecretAuth
    views: RunViews
    control: RunControl
    store: Store

    def wrap(self, endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]: ...


#: How much history the run page asks for: every event and metrics point the store keeps is cheap to send.
DETAIL_EVENTS = 1000
DETAIL_METRICS = 2000
DETAIL_LEASES = 1000


def run_list(api: Commander) -> RunList:
    """Every run, as ``GET /api/runs`` answers (built without revalidating the summaries)."""
    return RunList.model_construct(runs=api.views.summaries(), now=time.time())


def run_detail(api: Commander, run_id: str) -> RunDetail:
    """One run with its history, as ``GET /api/runs/{run_id}?events=1000&metrics=2000&leases=1000`` answers.

    Raises RunNotFoundError for an unknown run."""
    return api.views.detail(run_id, events=DETAIL_EVENTS, metrics=DETAIL_METRICS, leases=DETAIL_LEASES)


def log_page(api: Commander, run_id: str, *, after: int, limit: int, tail: int = 0) -> LogsResponse:
    """A page of the run's log timeline, each line with its pod and epoch, as ``GET /api/runs/{run_id}/logs``
    answers."""
    return api.views.log_page(run_id, after=after, limit=limit, tail=tail)
