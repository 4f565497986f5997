"""``relayctl serve``: run the commander until SIGTERM or SIGINT.

Prints one line ``relay commander <version> listening on http://HOST:PORT ...``
once the socket is bound (``--port 0`` picks a free port; the line says which),
and shuts down gracefully on SIGTERM: stop accepting, finish requests in
flight, checkpoint the SQLite WAL, release the state lock, exit 0.

Run callbacks are tuned through the environment (``RELAY_CALLBACK_INTERVAL_S``,
``_TIMEOUT_S``, ``_BACKOFF_S``, ``_BACKOFF_MAX_S``, ``_MAX_ATTEMPTS``, ``_CONCURRENCY``,
``_DELIVER``; see ``relay.commander.callbacks.CallbackSettings``).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.commander.callbacks import CallbackSettings

DEFAULT_STATE = "./commander_state.db"
DEFAULT_TTL_S = 60.0
MIN_TTL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)"
    )
    parser.add_argument(
        "--state",
        default=None,
        help=f"SQLite state file (env RELAY_STATE, default {DEFAULT_STATE})",
    )
    parser.add_argument(
        "--shared-secret",
        default=None,
        help="require this secret on every endpoint but health (env RELAY_SHARED_SECRET)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=None,
        help=f"seconds a lease lives without a renew, at least {MIN_TTL_S:g} "
        f"(env RELAY_LEASE_TTL, default {DEFAULT_TTL_S:g})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow listening on a non-loopback address without a shared secret",
    )
    parser.add_argument("--log-level", default="INFO", help="commander log level (default INFO)")


class ServeError(Exception):
    """A configuration problem, reported as one line."""


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 / ::1; everything else (0.0.0.0, names, LAN) is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_settings(
    args: argparse.Namespace, env: dict[str, str] | None = None
) -> tuple[str, str | None, float]:
    """(state path, secret, ttl) from flags, then environment, then defaults; raises ServeError."""
    env = dict(os.environ) if env is None else env
    state = args.state or env.get("RELAY_STATE") or DEFAULT_STATE
    secret = args.shared_secret if args.shared_secret is not None else env.get("RELAY_SHARED_SECRET")
    secret = secret or None
    ttl: float
    if args.lease_ttl is not None:
        ttl = args.lease_ttl
    else:
        raw = env.get("RELAY_LEASE_TTL")
        try:
            ttl = float(raw) if raw else DEFAULT_TTL_S
        except ValueError:
            raise ServeError(f"RELAY_LEASE_TTL must be a number of seconds (got {raw!r})") from None
    if not ttl >= MIN_TTL_S or ttl == float("inf"):  # NaN fails the comparison too
        raise ServeError(
            f"lease TTL must be a positive number of seconds, at least {MIN_TTL_S:g} (got {ttl!r}): "
            "workers renew every third of it, and a shorter lease expires on ordinary scheduling delays"
        )
    if not 0 <= args.port <= 65535:
        raise ServeError(f"--port must be 0-65535 (got {args.port})")
    if not is_loopback(args.host) and not secret and not args.insecure:
        raise ServeError(
            f"refusing to listen on non-loopback address {args.host!r} without a shared secret; "
            "set RELAY_SHARED_SECRET / --shared-secret, or pass --insecure"
        )
    return state, secret, ttl


def run(args: argparse.Namespace) -> int:
    try:
        state, secret, ttl = resolve_settings(args)
    except ServeError as exc:
        print(f"relayctl serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from relay.commander.callbacks import CallbackSettings
    from relay.commander.store import StoreError

    try:
        callbacks = CallbackSettings.from_env()
    except ValueError as exc:
        print(f"relayctl serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args.host, args.port, state, secret, ttl, callbacks))
    except StoreError as exc:
        print(f"relayctl serve: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"relayctl serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1


async def _serve(
    host: str, port: int, state: str, secret: str | None, ttl: float, callbacks: CallbackSettings
) -> int:
    from aiohttp import web

    from relay import __version__
    from relay.commander.app import create_app

    app = create_app(state, secret=secret, lease_ttl_s=ttl, callback_settings=callbacks)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        bound = runner.addresses[0]
        shown_host = f"[{host}]" if ":" in host else host
        auth = "shared secret required" if secret else "no auth"
        print(
            f"relay commander {__version__} listening on http://{shown_host}:{bound[1]} "
            f"(state {os.path.abspath(state)}, lease ttl {ttl:g}s, {auth})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("relay commander: shutting down", flush=True)
    finally:
        await runner.cleanup()
    return 0
