"""What the dashboard reads from the commander, in one place: the same models the HTTP API answers with.

The dashboard never builds its own view of a run: the run list, a run's detail and its log pages are
the API's (``RunList``, ``RunDetail``, ``LogsResponse``), computed by the same code the API handlers
call.  This module is the only one in ``relay.commander.ui`` that knows where that code lives.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from relay.schema import LogLine, LogsResponse, RunDetail, RunList

if TYPE_CHECKING:
    from relay.commander.app import CommanderApi

#: How much history the run page asks for: every event and metrics point the store keeps is cheap to send.
DETAIL_EVENTS = 1000
DETAIL_METRICS = 2000


def run_list(api: CommanderApi) -> RunList:
    """Every run, as ``GET /api/runs`` answers (built without revalidating the summaries)."""
    return RunList.model_construct(runs=api.leases.list_summaries(), now=time.time())


def run_detail(api: CommanderApi, run_id: str) -> RunDetail:
    """One run with its history, as ``GET /api/runs/{run_id}?events=1000&metrics=2000`` answers.

    Raises the lease manager's RunNotFoundError for an unknown run."""
    return api._detail(run_id, events=DETAIL_EVENTS, metrics=DETAIL_METRICS)


def log_page(api: CommanderApi, run_id: str, *, after: int, limit: int, tail: int = 0) -> LogsResponse:
    """A page of the run's log timeline, as ``GET /api/runs/{run_id}/logs`` answers."""
    row, lines, more = api.leases.log_page(run_id, after=after, limit=limit, tail=tail)
    return LogsResponse(
        run_id=run_id,
        status=row.status,
        lines=[LogLine.model_construct(ts=line.ts, stream=line.stream, line=line.line) for line in lines],
        next_cursor=lines[-1].id if lines else after,
        more=more,
    )
