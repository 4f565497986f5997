"""Test plugin for the relay instrumentation: hold the background write of one async checkpoint.

With it a test knows that training went on while a checkpoint was being written (so the files must come
from the host copy, not from the live, changed state), or that a SIGTERM arrived while a save was in flight.
Loaded by ``relay_inject`` when named in RELAY_INJECT_PLUGINS (``relay_testkit.trainer_env.hold_save_env``).
Stdlib only: it runs in any trainer's environment.

``RELAY_TEST_HOLD_SAVE_AT=N``: the writer thread of the checkpoint of step N waits, before writing any file,
until ``RELAY_TEST_HOLD_SAVE_UNTIL`` holds: ``step:M`` (the trainer has finished step M) or ``sigterm``
(the trainer got SIGTERM); at most ``RELAY_TEST_PAUSE_TIMEOUT_S`` (default 120) seconds.  It prints when it
holds and when it lets go, with the step the trainer had reached by then.
"""

from __future__ import annotations

import os
import time

import relay_inject

HOLD_AT = int(os.environ.get("RELAY_TEST_HOLD_SAVE_AT", "-1") or -1)
UNTIL = os.environ.get("RELAY_TEST_HOLD_SAVE_UNTIL", "sigterm").strip()
TIMEOUT_S = float(os.environ.get("RELAY_TEST_PAUSE_TIMEOUT_S", "120") or 120)
_reached = {"step": -1}


def _done(until: str) -> bool:
    if until == "sigterm":
        return relay_inject.stop_requested()
    return _reached["step"] >= int(until.split(":", 1)[1])


def _step(step: int) -> None:
    _reached["step"] = step


def _hold(step: int) -> None:
    if step != HOLD_AT:
        return
    print(f"relay-test-hold-save: holding the write of step {step} until {UNTIL}", flush=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not _done(UNTIL) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(
        f"relay-test-hold-save: writing step {step} now, the trainer has finished step {_reached['step']}",
        flush=True,
    )


relay_inject.add_step_hook(_step)
relay_inject.add_save_hook(_hold)
