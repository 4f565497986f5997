"""The worker-side faults of the chaos suite, and the watcher that lets the checker see the remote.

- :class:`OutputPump`: a worker's stdout and stderr go to a small pipe that a thread copies to its log
  file, like a container's log driver.  ``block()`` stops reading and fills the pipe, so the worker's
  next write to its own output blocks (a stalled log driver); ``unblock()`` drains it again.
- :func:`poison_remote_state`: write a run's ``relay/state.json`` with a huge epoch (a buggy or hostile
  writer that still takes the remote's publish lock), as if something had claimed the run's storage
  at an epoch no commander would grant.
- :class:`RemoteWatcher`: polls every run's ``relay/state.json`` on the shared ``file://`` remote and
  keeps each distinct version it sees (revision, epoch, step, the epoch that published the step) with
  the time it was first seen, so the checker can tell a publish by an older epoch after a newer claim.
- :data:`POISON_EPOCH`, and the ``train:`` block of a run whose commits all fail.

Pausing a worker alone (SIGSTOP, SIGCONT later) needs nothing more than a signal: see the driver.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

#: a remote epoch no commander grants (the commander refuses to jump past 2**53 - 1)
POISON_EPOCH = 2**62
F_SETPIPE_SZ = 1031
PIPE_BYTES = 4096  # a stalled log driver's buffer: one page


def commit_fail_train(train: dict[str, Any]) -> dict[str, Any]:
    """A run's ``train:`` block whose every checkpoint the worker refuses to commit (a symlink inside)."""
    return {**train, "symlink_in_checkpoint": True}


class OutputPump:
    """Copies a worker's output pipe to its log file in a thread, until EOF; can stall on demand."""

    def __init__(self, read_fd: int, log_path: Path) -> None:
        self.read_fd = read_fd
        self.log_path = log_path
        self.pid: int | None = None
        self._reading = threading.Event()
        self._reading.set()
        self._thread = threading.Thread(target=self._run, name="chaos-output-pump", daemon=True)

    @classmethod
    def pipe(cls, log_path: Path) -> tuple[OutputPump, int]:
        """A pump and the write end to give the worker as its stdout and stderr (close it after spawning)."""
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
        return cls(r, log_path), w

    def start(self, pid: int) -> OutputPump:
        self.pid = pid
        self._thread.start()
        return self

    def _run(self) -> None:
        with open(self.log_path, "ab") as log:
            while True:
                self._reading.wait()
                try:
                    chunk = os.read(self.read_fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
        with contextlib.suppress(OSError):
            os.close(self.read_fd)

    def block(self) -> bool:
        """Stop reading and fill the pipe: the worker's next write blocks. False if it is gone."""
        self._reading.clear()
        time.sleep(0.05)  # let a read in progress finish
        try:  # an open file description of our own: O_NONBLOCK must not reach the worker's
            fd = os.open(f"/proc/{self.pid}/fd/1", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            self._reading.set()
            return False
        try:  # the pump may have been waiting in read(): it takes one chunk more, so fill until it stays full
            for _ in range(20):
                if not _fill(fd):
                    break
                time.sleep(0.05)
        finally:
            os.close(fd)
        return True

    def unblock(self) -> None:
        self._reading.set()

    @property
    def blocked(self) -> bool:
        return not self._reading.is_set()


def _fill(fd: int) -> int:
    """Write into a non-blocking pipe until it is full; returns how many bytes went in."""
    n = 0
    try:
        while True:
            n += os.write(fd, b"." * 511 + b"\n")
    except OSError:  # BlockingIOError: full
        return n


def poison_remote_state(remote_root: Path, run_id: str, epoch: int = POISON_EPOCH) -> None:
    """Replace ``run_id``'s state.json with one at ``epoch`` (keeping its checkpoint), under the remote's
    publish lock (so it lands between two publishes, never inside one)."""
    relay = remote_root / run_id / "relay"
    relay.mkdir(parents=True, exist_ok=True)
    fd = os.open(relay / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            doc = json.loads((relay / "state.json").read_text())
        except (OSError, ValueError):
            doc = {"format_version": 2, "run_id": run_id, "step": None, "manifest_sha256": None}
        doc.update(epoch=epoch, claimed_by=None, revision=int(doc.get("revision") or 0) + 1)
        if doc.get("step") is not None:
            doc.setdefault("step_epoch", doc.get("epoch"))
        tmp = relay / f".poison-{os.getpid()}.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, relay / "state.json")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class RemoteWatcher:
    """Records every distinct ``relay/state.json`` of every run on a ``file://`` remote, as first seen."""

    def __init__(self, remote_root: Path, period_s: float = 0.005) -> None:
        self.remote_root = remote_root
        self.period_s = period_s
        self.history: dict[str, list[dict[str, Any]]] = {}
        self._raw: dict[str, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-remote-watcher", daemon=True)

    def start(self) -> RemoteWatcher:
        self._thread.start()
        return self

    def stop(self) -> dict[str, list[dict[str, Any]]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._poll()
        return self.history

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.period_s)

    def _poll(self) -> None:
        try:
            runs = [p.name for p in self.remote_root.iterdir()]
        except OSError:
            return
        for run_id in runs:
            try:
                raw = (self.remote_root / run_id / "relay" / "state.json").read_bytes()
            except OSError:
                continue
            if raw == self._raw.get(run_id):
                continue
            self._raw[run_id] = raw
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            seen = {
                k: doc.get(k)
                for k in ("revision", "epoch", "step", "step_epoch", "manifest_sha256", "claimed_by")
            }
            if doc.get("format_version", 1) == 1 and seen["step_epoch"] is None:
                seen["step_epoch"] = doc.get("epoch")
            self.history.setdefault(run_id, []).append({"ts": time.time(), **seen})
