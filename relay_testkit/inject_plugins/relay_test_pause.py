"""Test plugin for the relay instrumentation: hold an instrumented trainer at an exact step until SIGTERM.

A real SIGTERM from a test (or from a worker the test signalled) lands at a step the test chose, so
"0 steps lost" can be asserted exactly, with no switch in shipped code.  Loaded by ``relay_inject`` when
named in RELAY_INJECT_PLUGINS, with this directory on the trainer's PYTHONPATH (see
``relay_testkit.trainer_env.pause_at_step_env``).  Stdlib only: it runs in any trainer's environment.

``RELAY_TEST_PAUSE_AT_STEP=N``: after the progress line of step N, wait up to
``RELAY_TEST_PAUSE_TIMEOUT_S`` (default 120) seconds for SIGTERM; the step's checkpoint is then saved and
the trainer exits 0.  Without a SIGTERM in that time, training simply goes on.
"""

from __future__ import annotations

import os
import time

import relay_inject

PAUSE_AT = int(os.environ.get("RELAY_TEST_PAUSE_AT_STEP", "-1") or -1)
TIMEOUT_S = float(os.environ.get("RELAY_TEST_PAUSE_TIMEOUT_S", "120") or 120)


def _pause(step: int) -> None:
    if step != PAUSE_AT:
        return
    beat = relay_inject.runtime().heartbeat
    phase, beat.phase = beat.phase, "paused"  # alive while held here: no hang is reported for the wait
    deadline = time.monotonic() + TIMEOUT_S
    while not relay_inject.stop_requested() and time.monotonic() < deadline:
        time.sleep(0.01)
    beat.phase = phase


relay_inject.add_step_hook(_pause)
