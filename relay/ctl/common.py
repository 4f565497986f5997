"""What every ``relayctl`` command that talks to the commander shares: options, client, error lines."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_COMMANDER_URL = "http://127.0.0.1:8080"


def add_commander_arguments(parser: argparse.ArgumentParser) -> None:
    """--commander-url, --secret, --json, --timeout (URL and secret default from the environment)."""
    parser.add_argument(
        "--commander-url",
        default=None,
        help=f"commander base URL (env COMMANDER_URL, default {DEFAULT_COMMANDER_URL})",
    )
    parser.add_argument("--secret", default=None, help="shared secret (env RELAY_SHARED_SECRET)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the commander (default 5)"
    )


def commander_url(args: argparse.Namespace) -> str:
    return args.commander_url or os.environ.get("COMMANDER_URL") or DEFAULT_COMMANDER_URL


def commander_secret(args: argparse.Namespace) -> str | None:
    return args.secret if args.secret is not None else (os.environ.get("RELAY_SHARED_SECRET") or None)


def run_command(prog: str, body: Callable[..., Awaitable[int]], args: argparse.Namespace) -> int:
    """Run ``body(client, args)`` with a client; a CommanderError becomes one line on stderr and exit 1."""
    from relay.client import CommanderClient, CommanderError

    async def main() -> int:
        async with CommanderClient(
            commander_url(args), commander_secret(args), timeout_s=args.timeout
        ) as client:
            return await body(client, args)

    try:
        return asyncio.run(main())
    except CommanderError as exc:
        print(f"relayctl {prog}: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a malformed --commander-url
        print(f"relayctl {prog}: error: {exc}", file=sys.stderr)
        return 2
