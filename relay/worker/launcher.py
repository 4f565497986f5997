"""The trainer subprocess: its own process group, death with the worker, signals, and log capture.

Invariant: nothing trains without a live worker holding the lease.  Three mechanisms give that:

- The trainer runs in its own session (``start_new_session``), so the worker can signal the whole
  tree (launcher script, python, dataloader workers) with one ``killpg`` and a terminal's Ctrl-C
  reaches only the worker, which then stops the trainer in order.
- ``PR_SET_PDEATHSIG = SIGKILL`` is set in the child before ``exec``: the kernel kills the trainer
  when the worker dies, even by ``kill -9``.  It fires on the death of the *thread* that forked, so
  the trainer must be spawned from the worker's main thread (the asyncio loop thread; never from
  ``asyncio.to_thread``).  It is not inherited by the trainer's own children, hence:
- a *guard* (:mod:`relay.worker.guard`): a small process in its own session that holds the lease's
  deadline and the trainer's process group.  The worker moves the deadline after each successful
  renewal (:meth:`TrainerProcess.set_deadline`, through a non-blocking pipe write); when it passes,
  the guard kills the group (SIGTERM, SIGKILL after ``kill_grace_s``), whether the worker is alive,
  stopped, starved or blocked on its own output.  When the worker dies the pipe closes and the guard
  SIGKILLs the group at once.  On an orderly end the worker writes ``ok`` first.

stdout and stderr are read by asyncio tasks into the run's :class:`~relay.worker.trainer_log.TrainerLog`.

What the trainer is started with lives here too: its command (:func:`trainer_argv`), its
environment, the ``RELAY_*`` contract of trainer_blackbox/README.md (:func:`trainer_env`), and the
``train:`` block as a file (:func:`write_train_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.ckpt.layout import RunLayout
    from relay.ckpt.manifest import CommittedCheckpoint
    from relay.config import WorkerConfig
    from relay.worker.trainer_log import TrainerLog

log = logging.getLogger("relay.worker.launcher")

PR_SET_PDEATHSIG = 1
#: the guard runs as a script, isolated (-I) and without site packages (-S): stdlib only, fast to start
GUARD_SCRIPT = Path(__file__).with_name("guard.py")


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None


_LIBC = _load_libc()  # loaded in the parent: the forked child must not load libraries


def _pdeathsig_preexec(parent_pid: int):  # type: ignore[no-untyped-def]
    """preexec_fn: die with the parent; and if the parent is already gone, do not start at all."""

    def _fn() -> None:
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(137)

    return _fn


# ------------------------------------------------------------------------------------------ process


class TrainerProcess:
    """One trainer run: spawned, read, signalled as a group, guarded against the worker's death."""

    def __init__(self, proc: asyncio.subprocess.Process, guard: GuardLink, log_: TrainerLog) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.pgid = proc.pid  # start_new_session: the trainer leads its own session and group
        self.started_at = time.monotonic()
        self.guard = guard
        self._log = log_
        self._readers = [
            asyncio.ensure_future(self._pump(proc.stdout, "stdout")),
            asyncio.ensure_future(self._pump(proc.stderr, "stderr")),
        ]
        self._kill_timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._finished = False

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_: TrainerLog,
        deadline: float = math.inf,
        kill_grace_s: float = 3.0,
        guard_log: Path | None = None,
    ) -> TrainerProcess:
        """Spawn ``argv`` and its guard (which kills the group at ``deadline``, a ``time.monotonic()``
        value, unless moved); must be awaited on the loop running in the worker's main thread (pdeathsig).
        Raises OSError when the trainer or its guard cannot be started (then nothing is left running)."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("trainer spawned off the main thread: PR_SET_PDEATHSIG follows that thread")
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=str(cwd),
            start_new_session=True,
            preexec_fn=_pdeathsig_preexec(os.getpid()),
            limit=1 << 20,
        )
        try:
            guard = GuardLink.start(proc.pid, deadline=deadline, kill_grace_s=kill_grace_s, log=guard_log)
        except OSError as exc:  # without its guard a trainer could outlive a stalled worker's lease
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise OSError(f"cannot start the trainer's guard ({GUARD_SCRIPT}): {exc}") from None
        return cls(proc, guard, log_)

    def set_deadline(self, deadline: float) -> None:
        """The lease is proven until ``deadline`` (monotonic): tell the guard. Never blocks."""
        self.guard.deadline(deadline)

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        buf = b""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                self._log.add(name, raw.decode("utf-8", errors="replace"))
            if len(buf) > 65536:  # a very long line without newline: cut it
                self._log.add(name, buf.decode("utf-8", errors="replace"))
                buf = b""
        if buf:
            self._log.add(name, buf.decode("utf-8", errors="replace"))

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def signal_group(self, sig: int) -> bool:
        """Signal every process of the trainer's group; False when none is left. Thread-safe."""
        try:
            os.killpg(self.pgid, sig)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - pgid reused by someone else's process
            return False

    def kill_now(self, grace_s: float) -> None:
        """SIGTERM the group now and SIGKILL it after ``grace_s``; callable from any thread, idempotent."""
        with self._lock:
            if self._kill_timer is not None:
                return
            self.signal_group(signal.SIGTERM)
            self._kill_timer = threading.Timer(grace_s, self.signal_group, args=(signal.SIGKILL,))
            self._kill_timer.daemon = True
            self._kill_timer.start()

    async def wait(self) -> int:
        """Wait for the trainer to exit; then kill stragglers of its group and drain its output."""
        rc = await self.proc.wait()
        self._finish()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True), timeout=1.0)
        for r in self._readers:
            r.cancel()
        return rc

    async def stop(self, grace_s: float) -> int:
        """SIGTERM the group, wait up to ``grace_s`` for the exit, then SIGKILL it."""
        if self.proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                return await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout=grace_s)
            except asyncio.TimeoutError:
                log.warning("trainer pid %d ignored SIGTERM for %.1fs: SIGKILL", self.pid, grace_s)
                self._log.note(f"trainer did not exit {grace_s:.1f}s after SIGTERM: SIGKILL")
                self.signal_group(signal.SIGKILL)
        return await self.wait()

    def _finish(self) -> None:
        """The leader is gone: SIGKILL what remains of its group and stand the guard down."""
        if self._finished:
            return
        self._finished = True
        self.signal_group(signal.SIGKILL)
        if self._kill_timer is not None:
            self._kill_timer.cancel()
        self.disarm_guard()

    def disarm_guard(self) -> None:
        self.guard.disarm()


class GuardLink:
    """The worker's end of one trainer's guard (:mod:`relay.worker.guard`): a pipe it only writes to.

    Writes are non-blocking and their failures ignored: the guard drains the pipe at once, and a guard
    that is gone cannot be helped by waiting.  Safe to call from any thread."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        assert proc.stdin is not None
        self._fd: int | None = proc.stdin.fileno()
        os.set_blocking(self._fd, False)
        self._lock = threading.Lock()

    @classmethod
    def start(cls, pgid: int, *, deadline: float, kill_grace_s: float, log: Path | None) -> GuardLink:
        argv = [sys.executable, "-I", "-S", str(GUARD_SCRIPT), str(pgid), f"{kill_grace_s:g}", repr(deadline)]
        if log is not None:
            argv.append(str(log))
        return cls(
            subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # no signal meant for the worker (a terminal's, a group's) reaches it
                close_fds=True,
            )
        )

    def deadline(self, deadline: float) -> None:
        self._send(f"deadline {deadline!r}\n".encode())

    def disarm(self) -> None:
        """An orderly end: the guard exits without killing. Idempotent."""
        self._send(b"ok\n")
        with self._lock:
            if self.proc.stdin is not None and self._fd is not None:
                self._fd = None
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=0.5)

    def _send(self, line: bytes) -> None:
        with self._lock:
            if self._fd is None:
                return
            with contextlib.suppress(OSError):  # BlockingIOError, BrokenPipeError: nothing to wait for
                os.write(self._fd, line)


def trainer_argv(launcher_dir: Path, mode: str) -> list[str]:
    """The command that starts a trainer of ``mode``: ``bash trainer_blackbox/launch_<mode>.sh``."""
    script = launcher_dir / f"launch_{mode}.sh"
    return ["/bin/bash", str(script)]


def trainer_env(
    cfg: WorkerConfig, layout: RunLayout, *, epoch: int, resume: CommittedCheckpoint | None
) -> dict[str, str]:
    """The trainer's environment: the worker's, minus the commander secret, plus the ``RELAY_*``
    contract of trainer_blackbox/README.md."""
    env = dict(os.environ)
    env.pop("RELAY_SHARED_SECRET", None)  # the trainer never talks to the commander
    env.update(
        RELAY_RUN_ID=layout.run_id,
        RELAY_MODE=cfg.mode,
        RELAY_EPOCH=str(epoch),
        RELAY_WORKER_ID=cfg.worker_id,
        RELAY_OUTPUT_DIR=str(layout.staging_dir),
        RELAY_RESUME_FROM=str(resume.path) if resume is not None else "",
        RELAY_PROGRESS_FILE=str(layout.progress_file),
        RELAY_TRAIN_CONFIG=str(layout.train_config_file),
        RELAY_SAVE_REQUEST_FILE=str(layout.save_request_file),
        RELAY_FINAL_DIR=str(layout.final_dir),
        RELAY_PYTHON=sys.executable,
        RELAY_INSTRUMENT="1" if cfg.instrument else "0",
        RELAY_HEARTBEAT_S=f"{heartbeat_interval(cfg):g}",
        RELAY_HEARTBEAT_STARTUP_S=f"{max(60.0, cfg.startup_timeout_s or cfg.hang_timeout_s or 60.0):g}",
        PYTHONUNBUFFERED="1",
    )
    env.pop("RELAY_TRAINER_CMD", None)  # the configuration (or the run spec) decides, not a stray variable
    if cfg.trainer_cmd:
        env["RELAY_TRAINER_CMD"] = cfg.trainer_cmd
    token = cfg.token()
    if token:
        env["HF_TOKEN"] = token
    return env


def heartbeat_interval(cfg: WorkerConfig) -> float:
    """How often an instrumented trainer says it is alive while not stepping: well inside the hang timeout."""
    limits = [t for t in (cfg.hang_timeout_s, cfg.startup_timeout_s) if t is not None]
    return max(0.2, min([2.0, *(t / 4 for t in limits)]))


def write_train_config(path: Path, train: Mapping[str, Any]) -> None:
    """The ``train:`` block as the JSON file ``RELAY_TRAIN_CONFIG`` names, replaced whole (tmp + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(train, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
