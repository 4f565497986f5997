"""``runs/<run_id>/state.json``: the volume's human/debug view of who last carried a run and where it stood.

One JSON object, replaced whole (temp file, fsync, rename, directory fsync: a reader never sees a
torn file), written when the worker's state or the run's checkpoints change meaningfully (each state
transition, commit, sync, and the release), never on every step::

    {"run_id": "r1", "worker_id": "pod-a", "epoch": 3, "state": "supervising",
     "step": 120, "committed_step": 120, "synced_step": 110, "remote": "hf://owner/repo",
     "outcome": null, "updated_at": 1718000000.5, "pid": 4242}

- ``state``: the worker's lifecycle state for this run (:class:`relay.worker.lifecycle.State`);
  ``done`` once the lease was given back, ``fenced`` when it was lost.
- ``step``: the trainer's last progress line at the time of writing; ``committed_step``: the newest
  checkpoint on this volume; ``synced_step``: the newest step known to be on the remote.
- ``outcome``: the release outcome (completed, preempted, failed, cancelled) once released, else null.

Nothing ever reads this file to decide anything (the commander owns ownership; ``ckpt/latest`` and
the manifests own checkpoints).  The one check made before writing keeps the file's own history
forward: a worker never replaces a file written under a newer epoch (a fenced worker on a shared
volume must not clobber its successor's view).

Writes run in one daemon thread, newest wins, so an fsync on a slow volume never delays the event
loop (lease renewal); :meth:`StateFile.flush` waits for the last one at the end of a lease.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relay.ckpt.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from relay.worker.lease import Lease

log = logging.getLogger("relay.worker.state")


@dataclass(frozen=True)
class RunState:
    """The document in ``state.json`` (field order is the file's)."""

    run_id: str
    worker_id: str
    epoch: int
    state: str
    step: int
    committed_step: int | None
    synced_step: int | None
    remote: str | None
    outcome: str | None
    updated_at: float
    pid: int

    def to_json_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2) + "\n").encode("utf-8")


class StateFile:
    """Writes one run's ``state.json`` for one lease, off the caller's thread."""

    def __init__(self, path: Path, lease: Lease, *, remote: str | None) -> None:
        self.path = path
        self.run_id = lease.run_id
        self.worker_id = lease.worker_id
        self.epoch = lease.epoch
        self.remote = remote
        self._cond = threading.Condition()
        self._pending: RunState | None = None
        self._queued = 0  # number of snapshots handed over
        self._done = 0  # number of snapshots handled (written, skipped or failed)
        self._closed = False
        self._warned = False
        self._thread: threading.Thread | None = None

    def update(
        self,
        *,
        state: str,
        step: int,
        committed_step: int | None,
        synced_step: int | None,
        outcome: str | None = None,
    ) -> None:
        """Queue a snapshot (never blocks; a newer one replaces one not yet written)."""
        snap = RunState(
            run_id=self.run_id,
            worker_id=self.worker_id,
            epoch=self.epoch,
            state=state,
            step=step,
            committed_step=committed_step,
            synced_step=synced_step,
            remote=self.remote,
            outcome=outcome,
            updated_at=time.time(),
            pid=os.getpid(),
        )
        with self._cond:
            if self._closed:
                return
            if self._pending is not None:
                self._done += 1  # superseded before it was written
            self._pending = snap
            self._queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="relay-state-file", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait (blocking) until every queued snapshot is handled; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= self._queued, timeout_s)

    def close(self) -> None:
        """Write what is pending, then let the thread end (without waiting for it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                snap, self._pending = self._pending, None
            if snap is None:
                return  # closed and drained
            self._write(snap)
            with self._cond:
                self._done += 1
                self._cond.notify_all()

    def _write(self, snap: RunState) -> None:
        try:
            newer = _written_epoch(self.path)
            if newer is not None and newer > snap.epoch:
                log.debug("%s was written under epoch %d; not replacing it", self.path, newer)
                return
            atomic_write_bytes(self.path, snap.to_json_bytes())
        except OSError as exc:  # a full or failing volume must not take the worker down
            if not self._warned:
                self._warned = True
                log.warning("could not write %s: %s", self.path, exc)


def _written_epoch(path: Path) -> int | None:
    """The epoch an existing state.json was written under; None when absent or unreadable."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    epoch = doc.get("epoch") if isinstance(doc, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
