"""``relayctl status [RUN_ID]``: commander health and a table of runs, or one run in detail."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

from relay.ctl.common import add_commander_arguments, commander_url, run_command

if TYPE_CHECKING:
    from relay.client import CommanderClient
    from relay.schema import HealthResponse, RunDetail, RunSummary

COLUMNS = ("RUN", "STATUS", "EPOCH", "HOLDER", "STEP", "CHECKPOINT", "REMOTE", "RENEWED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", nargs="?", help="show this run in detail, with its recent events")
    add_commander_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_command("status", _status, args)


async def _status(client: CommanderClient, args: argparse.Namespace) -> int:
    url = commander_url(args)
    health = await _health(client, url)
    if args.run_id:
        detail = await client.get_run(args.run_id)
        if args.json:
            print(
                json.dumps(
                    {
                        "commander": {"url": url, **health.model_dump(mode="json")},
                        "run": detail.model_dump(mode="json"),
                    },
                    indent=2,
                )
            )
        else:
            print(f"commander {url}: ok (version {health.version})")
            print(format_detail(detail))
        return 0
    runs = await client.list_runs()
    if args.json:
        print(
            json.dumps(
                {
                    "commander": {"url": url, **health.model_dump(mode="json")},
                    "runs": [r.model_dump(mode="json") for r in runs],
                },
                indent=2,
            )
        )
        return 0
    ttl = f", lease ttl {health.lease_ttl_s:g}s" if health.lease_ttl_s else ""
    print(f"commander {url}: ok (version {health.version}{ttl}), {len(runs)} run(s)")
    if runs:
        print(format_table(runs))
    return 0


async def _health(client: CommanderClient, url: str) -> HealthResponse:
    """The commander's health, or one line saying that what answers at ``url`` is not a commander."""
    from relay.client import CommanderError, NotFound

    try:
        return await client.health()
    except NotFound:
        raise CommanderError(
            f"{url} is not a relay commander: GET /api/health answered 404 (check --commander-url or "
            "COMMANDER_URL; `relayctl serve` prints the URL it listens on)"
        ) from None


def format_age(seconds: float | None) -> str:
    """'4s ago', '3m05s ago', '2h01m ago', or '-' when unknown."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s ago"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s ago"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m ago"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def format_table(runs: list[RunSummary]) -> str:
    """One row per run: status, epoch, holder, local step, last checkpoint step, remote step, renew age."""
    rows = [COLUMNS]
    for r in runs:
        status = r.status.value + ("*" if r.cancel_requested and r.status.value == "running" else "")
        rows.append(
            (
                r.run_id,
                status,
                str(r.epoch),
                _dash(r.holder),
                _dash(r.step),
                _dash(r.latest_checkpoint.step if r.latest_checkpoint else None),
                _dash(r.remote_step),
                format_age(r.last_renew_age_s) if r.holder else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    if any(r.cancel_requested and r.status.value == "running" for r in runs):
        lines.append("* cancel requested; the holder stops at its next renew")
    return "\n".join(lines)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_detail(run: RunDetail) -> str:
    now = time.time()
    lines = [f"run {run.run_id}" + (f" ({run.mode})" if run.mode else "")]

    def kv(key: str, value: str) -> None:
        lines.append(f"  {key:<12} {value}")

    kv("status", run.status.value + ("  (cancel requested)" if run.cancel_requested else ""))
    kv("epoch", str(run.epoch))
    if run.holder:
        expires = f"expires in {max(0.0, (run.lease_expires_at or now) - now):.0f}s"
        kv("holder", f"{run.holder}  (lease {expires}, renewed {format_age(run.last_renew_age_s)})")
    else:
        kv("holder", "-")
    kv("step", _dash(run.step))
    ckpt = run.latest_checkpoint
    if ckpt:
        rev = f"  (remote revision {ckpt.remote_revision})" if ckpt.remote_revision else ""
        kv("checkpoint", f"step {ckpt.step}  {ckpt.path}{rev}")
    else:
        kv("checkpoint", "-")
    kv("remote step", _dash(run.remote_step))
    if run.max_restarts is not None or run.restarts:
        budget = f" of {run.max_restarts}" if run.max_restarts is not None else ""
        kv("restarts", f"{run.restarts}{budget}")
    if run.spec is not None:
        kv("priority", str(run.priority))
    if run.callbacks is not None:
        cb = run.callbacks
        state = f"{cb.delivered} delivered, {cb.pending} pending" + (
            f", {cb.dropped} dropped" if cb.dropped else ""
        )
        if cb.last_error:
            state += f"; last error {cb.last_error} at {_when(cb.last_attempt_at)}"
        kv("callbacks", f"{cb.webhook_url}: {state}")
    if run.detail:
        kv("detail", run.detail)
    kv("created", _when(run.created_at))
    kv("updated", _when(run.updated_at))
    if run.metrics_history:
        last = run.metrics_history[-1]
        shown = ", ".join(
            f"{k}={v:.4g}" if v is not None else f"{k}=nan" for k, v in sorted(last.metrics.items())
        )
        kv("metrics", f"step {last.step}: {shown}")
    lines.append("recent events:" if run.events else "recent events: none")
    for e in run.events:
        who = f" {e.worker_id}" if e.worker_id else ""
        msg = f"  {e.message}" if e.message else ""
        lines.append(f"  {_when(e.ts)}  epoch {e.epoch:<3} {e.name}{who}{msg}")
    return "\n".join(lines)
