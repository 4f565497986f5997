"""The commander-side faults of the chaos suite (issue 13): duplicate worker ids, a commander whose state is
wiped or replaced by an older copy, and slow clients.  Each is a function over a running
:class:`relay_testkit.chaos_cluster.ChaosCluster` that does the damage and notes it in the driver's log, so
the checker (:mod:`relay_testkit.chaos_checks`) can attribute what follows; :class:`ChaosDriver` mixes them
in by weight (``ChaosSettings.duplicate_id_weight``, ``state_wipe_weight``, ``slow_clients_weight``).

- :func:`spawn_duplicate`: a second ``relayctl worker`` with the ``WORKER_ID`` of a live holder (a
  copy-pasted config), on another volume, asking for the same run.  It must wait for the holder's lease
  like anyone else.
- :func:`wipe_state`: ``kill -9`` the commander, then delete its state file (its lock file stays: a
  lost state) or put back a copy taken earlier (:func:`backup_state`, an operator restoring an old
  backup), and start it again.
- :class:`SlowFlood`: a burst of never-finishing connections (:mod:`relay_testkit.slow_clients`)
  against the commander for a while.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay_testkit.slow_clients import SlowClients

if TYPE_CHECKING:
    from relay_testkit.chaos_cluster import ChaosCluster, WorkerHandle


def with_fd_limit(argv: Sequence[str], limit: int, soft: int | None = None) -> list[str]:
    """``argv`` run with its open-file limit at ``limit`` (hard) and ``soft`` (default: the same): a small
    machine, where a few hundred idle connections are enough to run a server out of descriptors."""
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft or limit}, {limit})); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *argv]


def spawn_duplicate(cluster: ChaosCluster, holder: WorkerHandle) -> WorkerHandle | None:
    """A second worker process with ``holder``'s WORKER_ID on a free volume, for the run it holds."""
    trainers = cluster.watcher.alive_of(holder.worker_id)
    if not trainers or not cluster.free_volumes():
        return None
    run_id = trainers[0].run_id
    dup = cluster.spawn_worker(run_id, worker_id=holder.worker_id)
    cluster.note("duplicate_worker_id", worker_id=holder.worker_id, run_id=run_id, volume=str(dup.volume))
    return dup


def backup_state(cluster: ChaosCluster) -> Path:
    """A consistent copy of the commander's state as it is now (SQLite's online backup)."""
    src_path = cluster.commander.state_path
    dest_path = src_path.with_name(src_path.name + ".backup")
    dest_path.unlink(missing_ok=True)
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=5)
    dest = sqlite3.connect(dest_path)
    try:
        src.backup(dest)
    finally:
        src.close()
        dest.close()
    cluster.note("state_backup")
    return dest_path


def wipe_state(cluster: ChaosCluster, mode: str, backup: Path | None = None) -> float:
    """kill -9 the commander; ``mode`` ``delete``: remove its state file (the lock stays), ``restore``: put
    ``backup`` back in its place; start it again.  Returns the outage in seconds."""
    import time

    state = cluster.commander.state_path
    killed = time.time()
    cluster.commander.kill()
    cluster.note("state_lost_kill", mode=mode)
    for suffix in ("-wal", "-shm", ""):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    if mode == "restore":
        assert backup is not None
        os.replace(backup, state)
    cluster.commander.start()
    outage = time.time() - killed
    cluster.note("state_lost_up", mode=mode, outage_s=round(outage, 3))
    return outage


class SlowFlood:
    """A burst of ``count`` slow connections against the cluster's commander, for ``seconds``."""

    def __init__(self, cluster: ChaosCluster, count: int, seconds: float) -> None:
        self.cluster = cluster
        self.count = count
        self.seconds = seconds
        self.clients: SlowClients | None = None
        self.until = 0.0

    def start(self, now: float) -> SlowFlood:
        c = self.cluster.commander
        self.clients = SlowClients(c.host, c.port, self.count, trickle_s=0.5).start()
        self.until = now + self.seconds
        self.cluster.note("slow_clients", count=self.count, seconds=round(self.seconds, 2))
        return self

    def stop(self) -> dict[str, Any]:
        stats = vars(self.clients.stop()) if self.clients is not None else {}
        self.cluster.note("slow_clients_end", **stats)
        return stats
