"""The trainer's guard: kills the trainer's process group once the worker can no longer prove its lease.

The worker renews its lease from its own event loop, and its in-process deadman thread fences it when
renewals stop.  Both live in the worker's process, so a worker that is stopped (SIGSTOP, a frozen
cgroup), starved, or blocked writing its own log to a pipe nobody reads cannot act, while its trainer
(another process) trains on.  The guard is the line that does not depend on the worker: one small
process per trainer, in a session of its own, that knows only a deadline and a process group.

It runs as ``python -I -S guard.py PGID KILL_GRACE_S DEADLINE [LOG]`` (stdlib only, nothing of the
package is imported, so it starts in a few tens of milliseconds and shares no lock with the worker).
The worker writes to its stdin, one line each, and never reads from it:

- ``deadline T``: the lease is proven until ``T`` on ``CLOCK_MONOTONIC`` (one clock for every process
  on a Linux machine).  The worker moves it after each successful renewal, and only then.
- ``ok``: an orderly end (the trainer exited, or the worker stopped it): exit without killing.

Then:

- the deadline passes: SIGTERM the whole group, SIGKILL it ``KILL_GRACE_S`` later, exit;
- end of file without ``ok`` (the worker died and the kernel closed the pipe): SIGKILL the group now;
- the group is gone (the trainer exited and nobody said ``ok`` yet): exit.

The guard writes nothing to the worker's stdout or stderr (they are ``/dev/null``); what it did goes
to ``LOG`` (a file on the run's volume), always *after* the signal was sent, so a slow or full log
never delays a kill.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

#: how often the guard looks whether the trainer's group still exists (to exit when nobody is left)
GROUP_CHECK_S = 1.0


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _note(log_path: str | None, text: str) -> None:
    if not log_path:
        return
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{stamp}Z relay-guard[{os.getpid()}] {text}\n")
    except OSError:
        pass


def _expire(pgid: int, grace_s: float, log_path: str | None, deadline: float) -> None:
    """The deadline passed: SIGTERM the group, SIGKILL it after the grace (sooner if it is gone)."""
    sent = _signal_group(pgid, signal.SIGTERM)
    late = time.monotonic() - deadline
    _note(
        log_path,
        f"lease deadline {deadline:.3f} (CLOCK_MONOTONIC) passed {late:.3f}s ago: SIGTERM to process group "
        f"{pgid}" + ("" if sent else " (already gone)"),
    )
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        if not _signal_group(pgid, 0):
            return
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))
    if _signal_group(pgid, signal.SIGKILL):
        _note(log_path, f"SIGKILL to process group {pgid} after {grace_s:g}s")


def run(pgid: int, grace_s: float, deadline: float, log_path: str | None, fd: int = 0) -> int:
    """Guard ``pgid`` until an orderly end, the deadline, the worker's death or the group's end."""
    buf = b""
    while True:
        now = time.monotonic()
        if now >= deadline:
            _expire(pgid, grace_s, log_path, deadline)
            return 0
        ready, _, _ = select.select([fd], [], [], min(deadline - now, GROUP_CHECK_S))
        if not ready:
            if not _signal_group(pgid, 0):
                return 0
            continue
        try:
            chunk = os.read(fd, 4096)
        except InterruptedError:  # pragma: no cover - PEP 475 retries, kept for clarity
            continue
        if not chunk:
            if _signal_group(pgid, signal.SIGKILL):
                _note(log_path, f"the worker is gone (its pipe closed): SIGKILL to process group {pgid}")
            return 0
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for line in lines:
            words = line.split()
            if words == [b"ok"]:
                return 0
            if len(words) == 2 and words[0] == b"deadline":
                try:
                    deadline = float(words[1])
                except ValueError:
                    continue


def main(argv: list[str]) -> int:
    if len(argv) not in (4, 5):
        sys.stderr.write("usage: guard.py PGID KILL_GRACE_S DEADLINE [LOG]\n")
        return 2
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's signals are for the worker, not for us
        signal.signal(sig, signal.SIG_IGN)
    return run(int(argv[1]), float(argv[2]), float(argv[3]), argv[4] if len(argv) == 5 else None)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
