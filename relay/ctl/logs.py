"""``relayctl logs RUN_ID [-f]``: print a run's log timeline, and with ``-f`` follow it until the run ends.

The timeline is what workers ship with their reports: the trainer's stdout and stderr and the
worker's own notes (restarts, kills, hand-offs), from every pod that carried the run, in order.
Each line says which pod printed it under which lease epoch (``pod-1/e3``), so a hand-over shows
where one pod's output ends and the next one's begins.
Following polls the commander with the cursor of the last page, so no line is printed twice or
skipped, and stops once the run is completed, cancelled or failed.  A commander that is briefly
unreachable while following (a restart) is waited for, up to ``--retry-s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING

from relay.ctl.common import add_commander_arguments, run_command

if TYPE_CHECKING:
    from relay.client import CommanderClient
    from relay.schema import LogRecord

#: A followed run that reaches one of these has nothing more to say.
FINAL_STATUSES = ("completed", "cancelled", "failed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run whose logs to print")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until the run ends"
    )
    parser.add_argument("--tail", type=int, default=None, help="start with only the last N lines")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between polls while following (default 1)"
    )
    parser.add_argument(
        "--retry-s",
        type=float,
        default=60.0,
        help="while following, how long to wait for an unreachable commander (default 60)",
    )
    add_commander_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.tail is not None and args.tail < 1:
        print("relayctl logs: error: --tail must be at least 1", file=sys.stderr)
        return 2
    if not args.interval > 0:
        print("relayctl logs: error: --interval must be positive", file=sys.stderr)
        return 2
    return run_command("logs", _logs, args)


def format_line(line: LogRecord) -> str:
    """``<local time> <pod>/e<epoch> <stream> <line>`` (``-`` for a pod a commander did not record)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(line.ts)) + f".{int(line.ts % 1 * 1000):03d}"
    pod = line.worker_id or "-"
    if line.epoch is not None:
        pod += f"/e{line.epoch}"
    return f"{stamp} {pod} {line.stream:<6} {line.line}"


async def _logs(client: CommanderClient, args: argparse.Namespace) -> int:
    from relay.client import CommanderUnreachable

    cursor = 0
    tail = args.tail
    unreachable_since: float | None = None
    while True:
        try:
            page = await client.get_logs(args.run_id, cursor, tail=tail)
        except CommanderUnreachable as exc:
            if not args.follow:
                raise
            now = time.monotonic()
            if unreachable_since is None:
                unreachable_since = now
                print(
                    f"relayctl logs: {exc}; retrying every {args.interval:g}s for up to {args.retry_s:g}s "
                    "(--retry-s)",
                    file=sys.stderr,
                )
            elif now - unreachable_since > args.retry_s:
                raise CommanderUnreachable(f"{exc} (gave up after {args.retry_s:g}s)") from None
            await asyncio.sleep(args.interval)
            continue
        if unreachable_since is not None:
            print("relayctl logs: the commander answers again; following", file=sys.stderr)
        unreachable_since = None
        tail = None  # only the first page is a tail
        for line in page.lines:
            if args.json:
                print(json.dumps(line.model_dump(mode="json")))
            else:
                print(format_line(line))
        sys.stdout.flush()
        cursor = page.next_cursor
        if page.more:
            continue
        if not args.follow:
            return 0
        if page.status.value in FINAL_STATUSES:
            print(f"relayctl logs: run {args.run_id} is {page.status.value}", file=sys.stderr)
            return 0
        await asyncio.sleep(args.interval)
