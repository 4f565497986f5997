"""``runs/<run_id>/lease.json``: the lease this worker process holds, kept on its volume.

A worker id names one incarnation of one worker process: the commander lets the same id take a live
lease back at once only when the acquire shows that lease (``AcquireRequest.held_lease``, see
``relay.commander.lease_rules``).  The worker writes the lease it was granted here (atomically) and
removes it when it is done with the run, so a worker that was killed and started again on the same
volume can show it and carry on without waiting for its old lease to expire.  Another pod with a
copied WORKER_ID has no such file and waits like anyone else.

``runs/<run_id>/lease.lock`` is flock'ed by the process that owns the file, from the moment it
reads or writes the proof until it is done with the run.  A second live process with the same id on
the *same* volume finds the lock taken and shows nothing; the lock of a process that died is gone
with it (the kernel drops it), so its restart can take it.

The file is a convenience for a fast restart, never a condition for training: when it cannot be
read or written (a full or read-only volume) the worker says so once and goes on; a restart then
waits for the old lease to expire.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from relay.ckpt.fsutil import atomic_write_bytes
from relay.ckpt.layout import RunLayout
from relay.schema import HeldLease
from relay.worker.lease import Lease

log = logging.getLogger("relay.worker")


class HeldLeases:
    """This worker's ``lease.json`` files under one ``relay_root``, and the locks that make them its own."""

    def __init__(self, relay_root: Path, worker_id: str) -> None:
        self.relay_root = Path(relay_root)
        self.worker_id = worker_id
        self._locks: dict[str, int] = {}  # run_id -> fd of its flock'ed lease.lock

    def claim(self, run_id: str) -> HeldLease | None:
        """Take the run's lock and return the lease this worker id held on it, if this volume says so.

        None when there is no such file, it belongs to another worker id, or another live process
        holds the lock (a second process with this worker id on this volume)."""
        layout = RunLayout(self.relay_root, run_id)
        if not layout.held_lease_file.exists():  # nothing to show (and nothing is created before a grant)
            return None
        if not self._lock(layout):
            log.warning(
                "%s is locked by another live process with worker id %s on this volume; "
                "not showing the lease it holds",
                layout.held_lease_lock,
                self.worker_id,
            )
            return None
        try:
            doc = json.loads(layout.held_lease_file.read_bytes())
            if not isinstance(doc, dict) or doc.get("worker_id") != self.worker_id:
                return None
            return HeldLease(lease_id=doc["lease_id"], epoch=doc["epoch"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # ValueError covers a bad model too
            log.warning("ignoring unreadable %s: %s", layout.held_lease_file, exc)
            return None

    def find(self) -> str | None:
        """Pool mode: the run this worker id held when its previous process ended (its newest
        ``lease.json`` on this volume whose lock is free), or None."""
        found: list[tuple[float, str]] = []
        for path in self.relay_root.glob("runs/*/lease.json"):
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(path.read_bytes())
                if isinstance(doc, dict) and doc.get("worker_id") == self.worker_id:
                    found.append((path.stat().st_mtime, path.parent.name))
        return max(found)[1] if found else None

    def keep(self, lease: Lease) -> None:
        """Record the lease just granted (under the run's lock), so a restart of this worker can show it."""
        layout = RunLayout(self.relay_root, lease.run_id)
        doc = {"run_id": lease.run_id, "worker_id": lease.worker_id, "lease_id": lease.lease_id}
        doc.update(epoch=lease.epoch, pid=os.getpid())
        try:
            if self._lock(layout):
                atomic_write_bytes(layout.held_lease_file, (json.dumps(doc) + "\n").encode())
        except OSError as exc:
            log.warning(
                "could not write %s (%s): a restart of this worker will wait for the lease to expire",
                layout.held_lease_file,
                exc.strerror or exc,
            )

    def drop(self, run_id: str) -> None:
        """Done with the run (released, fenced, refused): remove its ``lease.json`` and let go of the lock."""
        layout = RunLayout(self.relay_root, run_id)
        if run_id in self._locks:
            with contextlib.suppress(FileNotFoundError, OSError):
                layout.held_lease_file.unlink()
        fd = self._locks.pop(run_id, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        """Let go of every lock (the files stay: a lease still held survives this process)."""
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()

    def _lock(self, layout: RunLayout) -> bool:
        """Hold the run's ``lease.lock`` (idempotent); False when another live process holds it."""
        if layout.run_id in self._locks:
            return True
        try:
            layout.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(layout.held_lease_lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            log.warning("cannot open %s: %s", layout.held_lease_lock, exc.strerror or exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._locks[layout.run_id] = fd
        return True
