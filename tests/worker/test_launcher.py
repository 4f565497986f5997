"""The trainer subprocess: own process group, log capture and rotation, and death with the worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from relay.worker.launcher import TrainerProcess
from relay.worker.trainer_log import RotatingLog, TrainerLog
from relay_testkit.wait import wait_for

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists": look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_group_kill_reaches_grandchildren_and_logs_are_captured(tmp_path: Path) -> None:
    tlog = TrainerLog(tmp_path / "logs", max_bytes=1 << 20, backups=2)
    script = "echo out-line; echo err-line >&2; sleep 60 & echo child=$!; wait"
    trainer = await TrainerProcess.start(
        ["/bin/sh", "-c", script], env=dict(os.environ), cwd=tmp_path, log_=tlog
    )
    assert os.getpgid(trainer.pid) == trainer.pid != os.getpgid(0)
    for _ in range(200):
        if any(line.startswith("child=") for line in tlog.tail()):
            break
        await asyncio.sleep(0.02)
    child = int(next(line for line in tlog.tail() if line.startswith("child="))[6:])
    trainer.kill_now(0.5)
    rc = await asyncio.wait_for(trainer.wait(), 5)
    assert rc != 0
    assert wait_for(lambda: not alive(child), 5), "grandchild survived the group kill"
    assert "out-line" in tlog.tail() and "err-line" in tlog.tail()
    assert {e.stream for e in tlog.since(0)} >= {"stdout", "stderr"}
    text = (tmp_path / "logs" / "trainer.log").read_text()
    assert "out-line" in text and "err-line" in text
    tlog.close()


async def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    tlog = TrainerLog(tmp_path, max_bytes=1 << 20, backups=1)
    script = "trap '' TERM; echo ready; while true; do sleep 0.05; done"
    trainer = await TrainerProcess.start(
        ["/bin/bash", "-c", script], env=dict(os.environ), cwd=tmp_path, log_=tlog
    )
    for _ in range(200):
        if "ready" in tlog.tail():
            break
        await asyncio.sleep(0.02)
    started = time.monotonic()
    rc = await trainer.stop(0.3)
    assert rc == -signal.SIGKILL
    assert time.monotonic() - started < 3


def test_rotating_log(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "t.log", max_bytes=100, backups=2)
    for i in range(30):
        log.write(f"line {i:03d} xxxxxxxxxx\n")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t.log", "t.log.1", "t.log.2"]
    assert (tmp_path / "t.log.1").stat().st_size >= 100
    assert "line 029" in (tmp_path / "t.log").read_text() + (tmp_path / "t.log.1").read_text()


WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from relay.worker.launcher import TrainerProcess
    from relay.worker.trainer_log import TrainerLog

    async def main():
        tmp = Path(sys.argv[1])
        tlog = TrainerLog(tmp, max_bytes=1 << 20, backups=1)
        # the trainer forks a child that does NOT inherit pdeathsig: the group guard must get it
        t = await TrainerProcess.start(
            ["/bin/sh", "-c", "sleep 60 & echo $! > grandchild.pid; wait"], env=dict(os.environ), cwd=tmp, log_=tlog)
        (tmp / "trainer.pid").write_text(str(t.pid))
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def test_worker_kill_9_kills_trainer_and_its_children(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], env=env)
    try:
        assert wait_for(
            lambda: (tmp_path / "trainer.pid").exists() and (tmp_path / "grandchild.pid").exists()
        )
        time.sleep(0.05)
        trainer_pid = int((tmp_path / "trainer.pid").read_text())
        grandchild = int((tmp_path / "grandchild.pid").read_text().strip())
        assert alive(trainer_pid) and alive(grandchild)
        worker.kill()
        worker.wait(5)
        assert wait_for(lambda: not alive(trainer_pid), 5), "trainer outlived its worker"
        assert wait_for(lambda: not alive(grandchild), 5), "trainer's child outlived the worker"
    finally:
        if worker.poll() is None:
            worker.kill()
