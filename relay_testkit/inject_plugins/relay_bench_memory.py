"""Bench plugin for the relay instrumentation: peak memory of an instrumented trainer, for
bench/train_bench.py (loaded when named in RELAY_INJECT_PLUGINS).

At every step end (rank 0) it writes ``{"host_peak_gb": VmHWM, "device_peak_gb": torch's max allocated}``
to ``RELAY_BENCH_MEMORY_FILE``: the trainer exits through ``os._exit``, so the last step's figures are the
run's.  Host memory includes the async checkpoints' host copy, which stays allocated from one save to
the next.
"""

from __future__ import annotations

import json
import os
import sys

import relay_inject

PATH = os.environ.get("RELAY_BENCH_MEMORY_FILE", "")


def _record(step: int) -> None:
    if not PATH or os.environ.get("RANK", "0") != "0":
        return
    out = {"host_peak_gb": 0.0}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                out["host_peak_gb"] = int(line.split()[1]) * 1024 / 1e9
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        out["device_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    tmp = PATH + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(out, fh)
    os.replace(tmp, PATH)


relay_inject.add_step_hook(_record)
