"""Faults injected into a worker process from outside its code: put this directory first on PYTHONPATH.

Python imports ``sitecustomize`` at start-up, so a worker started with this directory on its path runs
the unmodified ``relay`` package with the faults its environment asks for (and passes none of them on
to its trainer: the variables are removed from the environment once read).

- ``RELAY_FAULT_SLOW_UPLOAD_S=<s>``: a ``file://`` push sleeps ``s`` at ``RELAY_FAULT_UPLOAD_PHASE``
  (``copy_chunk``, the default: after each chunk it copies; ``staged``: once, staged and about to take
  the publish lock; ``before_publish``: holding it), so an upload stays in flight long enough for a test to stall the
  worker in the middle of it; ``RELAY_FAULT_UPLOADING=<path>`` is created when that phase is first
  reached.
"""

from __future__ import annotations

import os
import time

_slow = os.environ.pop("RELAY_FAULT_SLOW_UPLOAD_S", "")
_phase = os.environ.pop("RELAY_FAULT_UPLOAD_PHASE", "") or "copy_chunk"
_marker = os.environ.pop("RELAY_FAULT_UPLOADING", "")

if _slow:
    from relay.remote import filesystem as _fs

    def _hook(phase: str, _delay: float = float(_slow)) -> None:
        if phase != _phase:
            return
        if _marker and not os.path.exists(_marker):
            with open(_marker, "w") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(_delay)

    _fs.PHASE_HOOK = _hook
