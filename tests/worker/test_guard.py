"""The trainer's guard (relay/worker/guard.py): the lease deadline enforced outside the worker's process.

A worker that is stopped (SIGSTOP), or blocked writing its own log to a pipe nobody reads, cannot renew
its lease nor fence itself; its trainer, another process, would train on after the commander granted the
run to someone else.  The guard holds the deadline the worker last proved and kills the trainer's whole
process group when it passes, whatever the worker is doing.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

from relay.worker.launcher import TrainerProcess
from relay.worker.trainer_log import TrainerLog
from relay_testkit.chaos_cluster import pid_alive, proc_stat
from relay_testkit.wait import wait_for
from relay_testkit.workerproc import WorkerProc

TTL = 3.0
MARGIN = 1.0  # WorkerProc's renew_safety_margin_s
F_SETPIPE_SZ = 1031


class DeathWatch:
    """When a process was first seen dead (monotonic and wall clock), polled every few milliseconds."""

    def __init__(self, pid: int) -> None:
        st = proc_stat(pid)
        self.pid, self.starttime = pid, st[1] if st else None
        self.dead_mono: float | None = None
        self.dead_wall: float | None = None
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while pid_alive(self.pid, self.starttime):
            time.sleep(0.003)
        self.dead_mono, self.dead_wall = time.monotonic(), time.time()


def guard_deadlines(log: Path) -> list[float]:
    text = log.read_text() if log.exists() else ""
    return [float(m) for m in re.findall(r"lease deadline ([0-9.]+) \(CLOCK_MONOTONIC\) passed", text)]


# --------------------------------------------------------------------------------------------- unit


async def test_the_guard_kills_the_whole_group_at_the_deadline_even_with_the_worker_s_loop_stuck(
    tmp_path: Path,
) -> None:
    tlog = TrainerLog(tmp_path / "logs", max_bytes=1 << 20, backups=1)
    # the trainer ignores SIGTERM and has a child of its own: SIGKILL of the group must get both
    script = "trap '' TERM; sleep 60 & echo child=$!; while true; do sleep 0.05; done"
    deadline = time.monotonic() + 1.0
    trainer = await TrainerProcess.start(
        ["/bin/bash", "-c", script],
        env=dict(os.environ),
        cwd=tmp_path,
        log_=tlog,
        deadline=deadline,
        kill_grace_s=0.3,
        guard_log=tmp_path / "guard.log",
    )
    await asyncio.sleep(0.3)
    child = int(next(line for line in tlog.tail() if line.startswith("child="))[6:])
    leader, grandchild = DeathWatch(trainer.pid), DeathWatch(child)
    time.sleep(2.5)  # the event loop is stuck: nothing in this process renews, signals or logs
    assert leader.dead_mono is not None and grandchild.dead_mono is not None, "the guard did not kill"
    # SIGTERM at the deadline was ignored; SIGKILL came kill_grace_s later
    assert deadline + 0.3 <= leader.dead_mono < deadline + 0.3 + 1.0, leader.dead_mono - deadline
    assert guard_deadlines(tmp_path / "guard.log") == [round(deadline, 3)]
    assert "SIGKILL to process group" in (tmp_path / "guard.log").read_text()
    assert await asyncio.wait_for(trainer.wait(), 5) == -signal.SIGKILL
    tlog.close()


async def test_a_moved_deadline_keeps_the_trainer_and_ok_stands_the_guard_down(tmp_path: Path) -> None:
    tlog = TrainerLog(tmp_path / "logs", max_bytes=1 << 20, backups=1)
    trainer = await TrainerProcess.start(
        ["/bin/sleep", "60"],
        env=dict(os.environ),
        cwd=tmp_path,
        log_=tlog,
        deadline=time.monotonic() + 0.5,
        kill_grace_s=0.2,
        guard_log=tmp_path / "guard.log",
    )
    trainer.set_deadline(time.monotonic() + 1.5)  # a renewal succeeded
    await asyncio.sleep(1.0)
    assert pid_alive(trainer.pid), "killed at the old deadline"
    trainer.disarm_guard()  # an orderly end: the guard leaves without killing
    assert trainer.guard.proc.wait(2) == 0
    await asyncio.sleep(1.0)
    assert pid_alive(trainer.pid) and not (tmp_path / "guard.log").exists()
    trainer.kill_now(0.2)
    await asyncio.wait_for(trainer.wait(), 5)
    tlog.close()


# --------------------------------------------------------------------------------------------- e2e


def _worker(tmp_path: Path, cmd: Any, name: str, run_id: str) -> WorkerProc:
    # one checkpoint every 0.6 s: never two staged in one poll, so the event loop (which logs each commit)
    # is the only thread that writes to the worker's output while it trains
    return WorkerProc(
        tmp_path / name,
        commander_url=cmd.url,
        run_id=run_id,
        worker_id=name,
        train={"max_steps": 2000, "save_steps": 20, "step_seconds": 0.03},
    )


def _main_thread_blocked_on_output(pid: int) -> bool:
    try:
        return "pipe_write" in Path(f"/proc/{pid}/task/{pid}/wchan").read_text()
    except OSError:
        return False


def _trainer_of(w: WorkerProc) -> int:
    start = wait_for(
        lambda: next((r for r in w.mock_log() if r.get("event") == "step"), None), 30, "the trainer to step"
    )
    return int(start["pid"])


def test_a_stopped_worker_s_trainer_dies_before_its_lease_ends_and_before_anyone_else_is_granted(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    a = _worker(tmp_path, cmd, "pod-a", "stall").start()
    watch = DeathWatch(_trainer_of(a))
    os.kill(a.pid, signal.SIGSTOP)  # the worker alone: its trainer and guard run on
    stopped_at = time.monotonic()
    try:
        b = _worker(tmp_path, cmd, "pod-b", "stall").start()
        grant = b.wait_event("acquired", timeout=30)
        assert grant["epoch"] == 2
        assert watch.dead_wall is not None and watch.dead_wall < grant["ts"], "A's trainer outlived its lease"
        # killed by the guard at A's deadline (the last renewal's send time + ttl - margin): the lease
        # itself ran at least `margin` longer, so nothing trained past it
        deadlines = guard_deadlines(a.run_dir() / "logs" / "guard.log")
        assert len(deadlines) == 1, deadlines
        assert watch.dead_mono is not None
        assert deadlines[0] <= watch.dead_mono < deadlines[0] + MARGIN
        assert deadlines[0] - stopped_at < TTL - MARGIN
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert a.wait(30) == 3, a.output()  # awake again, it finds its lease gone: fenced
    assert "FENCED" in a.output()
    b.send(signal.SIGTERM)
    assert b.wait(30) == 0, b.output()


def test_a_worker_blocked_on_its_own_output_still_loses_its_trainer_at_the_deadline(
    tmp_path: Path, commander_factory: Any
) -> None:
    cmd = commander_factory(lease_ttl_s=TTL)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # a stalled log driver's small buffer
    a = _worker(tmp_path, cmd, "pod-a", "mute").start(output=write_end)
    watch = DeathWatch(_trainer_of(a))
    os.close(write_end)
    # fill the pipe through an open file description of our own (O_NONBLOCK on the shared one would make
    # the worker's writes fail instead of block): the worker's next log line blocks in write(2)
    filler = os.open(f"/proc/{a.pid}/fd/1", os.O_WRONLY | os.O_NONBLOCK)
    try:
        while True:
            os.write(filler, b"x" * 512)
    except BlockingIOError:
        pass
    os.close(filler)
    wait_for(lambda: _main_thread_blocked_on_output(a.pid), 10, "A's event loop to block on its output")
    try:
        b = _worker(tmp_path, cmd, "pod-b", "mute").start()
        grant = b.wait_event("acquired", timeout=30)
        assert grant["epoch"] == 2
        assert watch.dead_wall is not None and watch.dead_wall < grant["ts"], "A's trainer outlived its lease"
        assert a.proc is not None and a.proc.poll() is None  # A itself is still stuck on its output
    finally:
        drain = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_end, 65536), b"")])
        drain.start()
    assert a.wait(30) == 3
    b.send(signal.SIGTERM)
    assert b.wait(30) == 0, b.output()
    drain.join(10)
    os.close(read_end)
