"""Before the commander trusts a state file: is it there, is it whole, is it an SQLite database that
passes SQLite's own integrity check?

The state file holds every run's epoch.  A commander that starts on an empty one hands out epoch 1
again, and every pod it grants is refused by its run's remote (which holds a higher epoch), so it must
never start on a file that is *there but damaged* as if it were new.  The checks, in order, each named
in the refusal so the operator knows which one failed:

* ``size``: a 0-byte file (a volume that was mounted empty, a copy that never happened);
* ``header``: the first 16 bytes are SQLite's magic string (not some other file);
* ``length``: the file is at least as long as the page count its header declares (a truncated copy;
  left to the integrity check when a write-ahead log is there to complete it);
* ``integrity_check``: ``PRAGMA integrity_check`` answers ``ok`` (every page, every index; this is a
  superset of ``quick_check`` and runs once, at start-up).

A missing file is created, and said out loud (a warning naming the path), because it is also what a
volume that did not mount looks like; when the state's directory is empty and is not a mount point the
warning says that too.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

log = logging.getLogger("relay.commander")

SQLITE_MAGIC = b"SQLite format 3\x00"
_HEADER_BYTES = 100


class StateFileError(RuntimeError):
    """The state file is there but cannot be trusted; the message names the file and the failed check."""


def _refuse(path: Path, check: str, what: str) -> StateFileError:
    return StateFileError(
        f"state file {path} {what} (check: {check}); refusing to start on it, since a commander without "
        "its state would hand out epochs from 1 again. Restore the file from a backup, or move it aside "
        "to start with no runs"
    )


def inspect_state_file(path: Path) -> bool:
    """The checks that need no SQLite (size, header, length): True when the file exists and passed
    them, False when there is none.  Raises :class:`StateFileError` naming the check that failed."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    if not path.is_file():
        raise _refuse(path, "type", "is not a regular file")
    if st.st_size == 0:
        raise _refuse(path, "size", "is empty (0 bytes)")
    with open(path, "rb") as f:
        header = f.read(_HEADER_BYTES)
    if len(header) < _HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        raise _refuse(path, "header", "is not an SQLite database (its first bytes are not SQLite's header)")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    counted = header[24:28] == header[92:96]  # the in-header page count is valid only when these agree
    wal = path.with_name(path.name + "-wal")
    pending = wal.exists() and wal.stat().st_size > 0  # a checkpoint cut short: SQLite recovers it
    if counted and pages and not pending and st.st_size < pages * page_size:
        raise _refuse(
            path,
            "length",
            f"is truncated ({st.st_size} bytes; its header declares {pages} pages of {page_size})",
        )
    return True


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA integrity_check`` on an opened state file; raises :class:`StateFileError` unless ``ok``."""
    try:
        rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check(20)").fetchall()]
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, "integrity_check", f"is corrupt: {exc}") from None
    if rows != ["ok"]:
        raise _refuse(path, "integrity_check", f"is corrupt: {'; '.join(rows[:3])}")


def announce_new_state_file(path: Path) -> None:
    """A new state file is about to be created: say so, and warn when it looks like a volume is missing
    or when the state was lost (its lock file is there: a commander used it)."""
    parent = path.parent
    log.warning("no state file at %s: creating a new one (no runs; epochs start at 1)", path)
    if path.with_name(path.name + ".lock").exists():
        log.warning(
            "%s.lock is there: a commander used this state before, and its runs and leases are lost; "
            "no run is granted for one lease TTL, so that every lease it had granted runs out first",
            path,
        )
    try:
        empty = not any(parent.iterdir())
    except OSError:
        return
    if empty and not os.path.ismount(parent):
        log.warning(
            "the state directory %s is empty and is not a mount point: if a volume should be mounted "
            "there, it is not, and this state will be lost with the container",
            parent,
        )
