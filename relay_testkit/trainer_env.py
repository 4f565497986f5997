"""Environment pieces tests (and the demo) give a trainer: the inject directory and the test plugins."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INJECT_DIR = REPO / "trainer_blackbox" / "inject"
PLUGINS_DIR = Path(__file__).resolve().parent / "inject_plugins"


def with_pythonpath(env: dict[str, str], *dirs: Path) -> dict[str, str]:
    """``env`` with ``dirs`` first on PYTHONPATH (kept in order, before what was there)."""
    old = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = os.pathsep.join([*(str(d) for d in dirs), *([old] if old else [])])
    return env


def pause_at_step_env(env: dict[str, str], step: int) -> dict[str, str]:
    """Make an instrumented trainer wait for SIGTERM after the progress line of ``step``
    (relay_testkit/inject_plugins/relay_test_pause.py)."""
    env = with_pythonpath(dict(env), PLUGINS_DIR)
    plugins = [p for p in env.get("RELAY_INJECT_PLUGINS", "").split(",") if p]
    env["RELAY_INJECT_PLUGINS"] = ",".join([*plugins, "relay_test_pause"])
    env["RELAY_TEST_PAUSE_AT_STEP"] = str(step)
    return env


def injected_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for a third-party trainer command: the relay's inject directory first on its PYTHONPATH
    (what the relay's launcher does for RELAY_TRAINER_CMD / SLIME_*_CMD)."""
    return with_pythonpath(dict(env), INJECT_DIR)
