"""An expensive fixture's result computed once per test session, whichever pytest-xdist worker asks first.

A module-scoped fixture is set up once per *worker*: when ``--dist worksteal`` hands tests of one module to
both workers, a fixture that runs a whole demo or five trainers would run twice.  This is pytest-xdist's
documented recipe for that ("Making session-scoped fixtures execute only once"): the first worker computes
the result under a file lock in the session's shared temporary directory and leaves it as JSON; the others
wait on the lock and read it.  A failed computation leaves nothing, so the next asker tries again (and
fails the same way, in its own test)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

__all__ = ["once_per_session"]


def once_per_session(
    factory: pytest.TempPathFactory, name: str, produce: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """``produce(workdir)`` run once per session (its JSON-able result shared by every worker);
    ``workdir`` is a fresh directory under the session's shared temporary root."""
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # popen-gwN's parent: the one directory every worker of this session shares
    result = root / f"once-{name}.json"
    with FileLock(f"{result}.lock"):
        if result.is_file():
            return json.loads(result.read_text(encoding="utf-8"))
        workdir = root / f"once-{name}"
        workdir.mkdir()
        value = produce(workdir)
        result.write_text(json.dumps(value), encoding="utf-8")
        return value
