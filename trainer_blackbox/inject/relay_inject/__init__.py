"""Zero-code relay instrumentation for trainers the relay did not write (trainer_blackbox/README.md §9).

Loaded in the trainer's own Python environment by ``trainer_blackbox/inject/sitecustomize.py`` (the relay
puts that directory first on the trainer's PYTHONPATH), or called by the built-in trainers.  It needs
nothing but the standard library until the trainer itself imports ``transformers.trainer``; then every
``transformers.Trainer`` (LLaMA-Factory's, TRL's, axolotl's, a user's own) follows the relay contract:
checkpoints staged in RELAY_OUTPUT_DIR with COMPLETE after every rank saved, resume from
RELAY_RESUME_FROM, save-and-exit-0 on SIGTERM, progress lines, the final export in RELAY_FINAL_DIR.

``RELAY_INSTRUMENT=0`` turns it off.  ``RELAY_INJECT_PLUGINS=mod1,mod2`` imports those modules after
activation (from the trainer's path): how tests add behaviour, e.g. a pause at an exact step, through the
public hooks below instead of a switch in this code.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from relay_inject.env import EnvError, RelayEnv
from relay_inject.heartbeat import Heartbeat, resumed_step
from relay_inject.hooks import when_imported
from relay_inject.progress import ProgressWriter
from relay_inject.stop import StopSignal

__all__ = ["EnvError", "Runtime", "activate", "add_step_hook", "enabled", "runtime", "stop_requested"]

PROG = "relay-inject"
OFF_VALUES = {"0", "off", "false", "no"}


class Runtime:
    """The one per-process state every instrumented Trainer shares: the environment, the stop flag, the
    progress writer (rank 0) and the heartbeat."""

    def __init__(self, env: RelayEnv, prog: str) -> None:
        self.env = env
        self.prog = prog
        self.stop = StopSignal(prog)
        self.step_hooks: list[Callable[[int], None]] = []
        rank0 = os.environ.get("RANK", "0") == "0"
        self.progress = ProgressWriter(env.progress_file if rank0 else None, env.epoch)
        self.heartbeat = Heartbeat(self.progress, resumed_step(env.resume_from))


_RUNTIME: Runtime | None = None


def enabled(environ: dict[str, str] | None = None) -> bool:
    """Whether the sitecustomize should instrument this process: under the relay, and not switched off."""
    env = os.environ if environ is None else environ
    if env.get("RELAY_INSTRUMENT", "1").strip().lower() in OFF_VALUES:
        return False
    return bool(env.get("RELAY_OUTPUT_DIR", "").strip())


def runtime() -> Runtime | None:
    return _RUNTIME


def activate(prog: str = PROG) -> Runtime:
    """Install the SIGTERM handler and the Trainer patch (idempotent); load the plugins named in
    RELAY_INJECT_PLUGINS.  Raises EnvError for a malformed RELAY_* environment."""
    global _RUNTIME
    if _RUNTIME is not None:
        if prog != PROG:  # a built-in trainer names itself in the lines it prints
            _RUNTIME.prog = _RUNTIME.stop.prog = prog
        return _RUNTIME
    rt = Runtime(RelayEnv.from_environ(), prog)
    _RUNTIME = rt
    import threading

    if threading.current_thread() is threading.main_thread():
        rt.stop.install()
    rt.heartbeat.start()
    import atexit

    atexit.register(rt.heartbeat.at_exit)
    when_imported("transformers.trainer", _patch_transformers)
    for name in filter(None, (p.strip() for p in os.environ.get("RELAY_INJECT_PLUGINS", "").split(","))):
        importlib.import_module(name)
    return rt


def _patch_transformers(module: object) -> None:
    from relay_inject.hf import patch_trainer_class

    patch_trainer_class(module.Trainer)  # type: ignore[attr-defined]


def add_step_hook(hook: Callable[[int], None]) -> None:
    """Call ``hook(step)`` on every rank at the end of every optimizer step, after its progress line is
    written and before the stop flag is checked (so a hook that waits for SIGTERM stops at that step)."""
    if _RUNTIME is None:
        raise RuntimeError("relay_inject is not active (RELAY_OUTPUT_DIR unset or RELAY_INSTRUMENT=0)")
    _RUNTIME.step_hooks.append(hook)


def stop_requested() -> bool:
    return _RUNTIME is not None and _RUNTIME.stop.requested
