"""``relayctl serve``: run the commander until SIGTERM or SIGINT.

Prints one line ``relay commander <version> listening on http://HOST:PORT ...``
once the socket is bound (``--port 0`` picks a free port; the line says which),
and shuts down gracefully on SIGTERM: stop accepting, finish requests in
flight, checkpoint the SQLite WAL, release the state lock, exit 0.

Its settings are :class:`relay.commander.config.CommanderConfig`: the flags below are generated
from it, and each setting comes from its flag, else its environment variable (``RELAY_STATE``,
``RELAY_LEASE_TTL``, ``RELAY_SHARED_SECRET``, ``RELAY_CALLBACK_*``), else its default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from relay.commander.config import (
    CommanderConfig,
    CommanderConfigError,
    is_loopback,
    load_commander_config,
    settings,
)

__all__ = ["add_arguments", "is_loopback", "resolve_settings", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per top-level setting of :class:`CommanderConfig` that has one."""
    for path, field in settings():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        flag = extra.get("flag")
        if len(path) != 1 or not flag:
            continue
        where = f"env {extra['env']}, " if extra.get("env") else ""
        description = str(field.description).rstrip(".")
        if field.annotation is bool:
            parser.add_argument(flag, dest=path[0], action="store_true", help=description)
            continue
        default = field.default
        shown = "none" if default is None else f"{default:g}" if isinstance(default, float) else str(default)
        note = f"{where}default {shown}" if "secret" not in path[0] else where.rstrip(", ")
        metavar = flag.lstrip("-").upper().replace("-", "_")
        parser.add_argument(flag, dest=path[0], default=None, metavar=metavar, help=f"{description} ({note})")


def resolve_settings(args: argparse.Namespace, env: dict[str, str] | None = None) -> CommanderConfig:
    """The config from the flags in ``args``, then ``env`` (default: the process environment), then
    the defaults; raises CommanderConfigError (one line)."""
    flags = {name: getattr(args, name, None) for name in CommanderConfig.model_fields}
    return load_commander_config(flags, dict(os.environ) if env is None else env)


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve_settings(args)
    except CommanderConfigError as exc:
        print(f"relayctl serve: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, str(config.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from relay.commander.store import StoreError

    try:
        return asyncio.run(_serve(config))
    except StoreError as exc:
        print(f"relayctl serve: error: {exc}", file=sys.stderr)
        return 1
    except ListenError as exc:
        print(
            f"relayctl serve: error: cannot listen on {config.host}:{config.port}: {exc}",
            file=sys.stderr,
        )
        return 1


class ListenError(RuntimeError):
    """The socket could not be bound (address in use, permission, bad host): said as such, and only then."""


async def _serve(config: CommanderConfig) -> int:
    from aiohttp import web

    from relay.commander.app import create_app
    from relay.commander.connections import (
        ConnectionGuard,
        install_accept_error_log,
        listen,
        raise_fd_limit,
        sizing,
    )

    files, _ = raise_fd_limit()
    cap, batch = sizing(files, config.max_connections)
    guard = ConnectionGuard(max_connections=cap, header_timeout_s=config.header_timeout_s)
    app = create_app(
        config.state,
        secret=config.secret(),
        lease_ttl_s=config.lease_ttl_s,
        callback_settings=config.callbacks,
        body_timeout_s=config.body_timeout_s,
    )
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=5.0,
        keepalive_timeout=config.header_timeout_s,  # later heads on a kept-alive connection: same deadline
        lingering_time=2.0,  # an unread body (behind a 401) is drained this long at most
        handler_cancellation=True,  # a long-polled acquire whose pod hung up stops waiting at once
    )
    await runner.setup()
    loop = asyncio.get_running_loop()
    install_accept_error_log(loop)
    try:
        server = await listen(guard, runner.server, config.host, config.port, batch)
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(exc.strerror or str(exc)) from None
    try:
        _announce(config, server.sockets[0].getsockname()[1], files, guard.max_connections)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        print("relay commander: shutting down", flush=True)
    finally:
        server.close()
        await runner.cleanup()
    return 0


def _announce(config: CommanderConfig, port: int, files: int, max_connections: int) -> None:
    """The one line saying where the commander listens (tests and users read the port from it)."""
    from relay import __version__

    shown_host = f"[{config.host}]" if ":" in config.host else config.host
    auth = "shared secret required" if config.secret() else "no auth"
    print(
        f"relay commander {__version__} listening on http://{shown_host}:{port} "
        f"(state {os.path.abspath(config.state)}, lease ttl {config.lease_ttl_s:g}s, {auth})",
        flush=True,
    )
    logging.getLogger("relay.commander").info(
        "at most %d connections (open-file limit %d); request heads within %gs, bodies within %gs",
        max_connections,
        files,
        config.header_timeout_s,
        config.body_timeout_s,
    )
