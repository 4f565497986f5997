"""``relayctl cancel RUN_ID``: ask the commander to cancel a run."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from relay.ctl.common import add_commander_arguments, run_command

if TYPE_CHECKING:
    from relay.client import CommanderClient


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the run to cancel")
    add_commander_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return run_command("cancel", _cancel, args)


async def _cancel(client: CommanderClient, args: argparse.Namespace) -> int:
    run = await client.cancel(args.run_id)
    if args.json:
        print(json.dumps(run.model_dump(mode="json"), indent=2))
    elif run.status.value == "cancelled":
        print(f"run {run.run_id} cancelled")
    else:
        holder = f"the holder {run.holder}" if run.holder else "its next holder"
        print(f"cancel requested for run {run.run_id} ({run.status.value}); {holder} stops at its next renew")
    return 0
