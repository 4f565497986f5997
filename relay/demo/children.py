"""The demo's child processes (the commander, the two workers): start, signal, stop, and never orphan.

Each child runs in its own session, so a Ctrl-C in the terminal reaches only the demo, which then stops
its children in order (workers first, so they release their leases, then the commander) instead of
racing a SIGINT that every process got at once.  On Linux each child also gets SIGTERM from the kernel
if the demo itself dies (even by ``kill -9``): workers and commander then shut down gracefully rather
than training on as orphans.  Output goes to a log file, never to a pipe that nobody reads and that
would block the child once full.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that asks the kernel for SIGTERM when the demo dies (Linux; elsewhere None).

    libc is resolved here, in the parent: the function runs between fork and exec, where importing
    or loading anything could deadlock on a lock another thread of the demo held at the fork.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    sigterm = int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm, 0, 0, 0)
        if os.getppid() != parent_pid:  # the demo died between fork and prctl
            os._exit(1)

    return preexec


class Child:
    """One subprocess with its own session and log file."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: dict[str, str], cwd: Path, log_path: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None

    def start(self) -> Child:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        self.started_at = time.time()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def poll(self) -> int | None:
        """The exit code once the child has exited (it is reaped), else None."""
        return self.proc.poll() if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, grace_s: float, *, term: bool = True) -> int | None:
        """SIGTERM (unless ``term`` is False: already sent), wait up to ``grace_s``, then SIGKILL its
        process group; the exit code.  (Never a second SIGTERM: a worker reads that as "no grace".)

        The group is killed only while its leader is still unreaped, so the pgid cannot have been reused.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if term:
                self.send(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        return self.proc.poll()

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 15) -> list[str]:
        return self.output().splitlines()[-lines:]


def kill_group(pgid: int) -> None:
    """SIGKILL a process group this demo created (a child's session); quiet when it is gone already."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def kill_trainer_group(pid: int) -> bool:
    """SIGKILL a trainer's process group if it is still alive (its worker normally does this).

    The worker starts each trainer as the leader of its own session, so the pgid is the pid.  Before
    killing, check that the pid still names a trainer of this package (a pid can be reused once the
    trainer is gone).  Returns True when something was killed.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 3 or fields[0] == "Z" or int(fields[2]) != pid:
        return False
    if b"trainer_blackbox" not in cmdline and b"launch_sft" not in cmdline:
        return False
    kill_group(pid)
    return True


def log_tails(workdir: Path, run_id: str, pods: tuple[str, ...], *, lines: int = 12) -> list[str]:
    """The last lines of each child's output and of each pod's trainer log: where to look first when the
    demo fails (headed ``--- last lines of PATH``, indented)."""
    logs = [workdir / "logs" / f"{n}.log" for n in ("assets", "commander", *pods)]
    logs += [workdir / pod / "runs" / run_id / "logs" / "trainer.log" for pod in pods]
    out: list[str] = []
    for path in logs:
        try:
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- last lines of {path}")
        out += [f"    {line}" for line in tail]
    return out
