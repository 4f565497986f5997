"""The transaction engine: one SQLite connection, WAL, two durability levels, and group commit.

One connection, used only from the event loop's thread, in autocommit mode with explicit
transactions.  Every call is short (tens of microseconds of SQL), so an aiohttp handler calls the
store directly: nothing else runs on the loop between a decision and the statements that record
it, which is what makes "check then grant" atomic without locks.

Durability: the database is in WAL mode.  A change of ownership (a grant, a release, an expiry, a
cancel) is written with ``durable=True``: committed with ``synchronous=FULL``, i.e. fsynced,
before the commander answers.  Progress reports use ``synchronous=NORMAL`` (no fsync of their
own): they survive a ``kill -9`` of the commander (the data is in the OS page cache) and lose at
most the last few reports on a power cut, which the next report repairs.

Group commit: inside the running commander (:meth:`TxEngine.start_group_commit`) the writes made
during one turn of the event loop share one transaction and one fsync; an endpoint that mutates
awaits :meth:`TxEngine.committed` before it answers.  Outside it (tests, tools) every write
commits before it returns.

An exclusive ``flock`` on ``<state>.lock`` keeps a second commander off the same state file,
which would otherwise be a split brain with two epoch counters.

This module runs transactions; the statements come from the query modules beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from relay.commander.store.checks import (
    StateFileError,
    announce_new_state_file,
    check_integrity,
    inspect_state_file,
)
from relay.commander.store.migrations import MigrationError, migrate

#: One statement and its parameters; a write is a list of them, applied all or nothing.
Statement = tuple[str, Sequence[object]]

_Self = TypeVar("_Self", bound="TxEngine")


class StoreError(RuntimeError):
    """The state file cannot be used (locked by another commander, unreadable, newer schema)."""


class TxEngine:
    """The connection and its transactions.  Construct with :meth:`open`."""

    def __init__(self, conn: sqlite3.Connection, path: str, lock_fd: int | None) -> None:
        self._conn = conn
        self.path = path
        self._lock_fd = lock_fd
        self._sync_full: bool | None = None
        # Group commit (see start_group_commit): the open batch transaction and who waits for it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tx_open = False
        self._tx_durable = False
        self._waiters: list[asyncio.Future[None]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._on_commit_error: Callable[[BaseException], None] | None = None
        self._on_recovered: Callable[[], None] | None = None
        self.batches = 0  # commits of group-commit batches (for tests and metrics)
        self.commit_error: StoreError | None = None  # why the last batch failed; None once one commits
        self.lost_state = False  # the file was missing although its lock file showed it had been used

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls: type[_Self], path: str | os.PathLike[str]) -> _Self:
        """Open (creating if needed) the state at ``path``; ``":memory:"`` for a throwaway one."""
        path_s = str(path)
        lock_fd = None
        existed = used_before = True
        if path_s != ":memory:":
            parent = Path(path_s).resolve().parent
            if not parent.is_dir():
                raise StoreError(f"state directory {parent} does not exist")
            existed = _checked(Path(path_s), parent)  # before the lock file changes the directory
            used_before = Path(path_s + ".lock").exists()
            lock_fd = _lock(path_s + ".lock")
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path_s, isolation_level=None, timeout=5.0)
            if existed and path_s != ":memory:":
                check_integrity(conn, Path(path_s))
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            migrate(conn, path_s)
            store = cls(conn, path_s, lock_fd)
            store.lost_state = not existed and used_before
        except BaseException as exc:
            if conn is not None:
                conn.close()
            if lock_fd is not None:
                os.close(lock_fd)
            if isinstance(exc, (MigrationError, StateFileError)):
                raise StoreError(str(exc)) from None
            if isinstance(exc, sqlite3.DatabaseError):
                raise StoreError(f"cannot use state file {path_s}: {_why(exc)}") from exc
            raise
        store._sync_full = True
        return store

    def close(self) -> None:
        """Commit what is pending, checkpoint the WAL into the main file and let go of the lock."""
        self.stop_group_commit()
        with contextlib.suppress(sqlite3.DatabaseError):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ transactions

    def start_group_commit(
        self,
        loop: asyncio.AbstractEventLoop,
        on_error: Callable[[BaseException], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
    ) -> None:
        """Batch the commits of writes made during one event-loop iteration into one transaction.

        A write's statements still run at once, inside the open batch transaction, so
        every later read on this connection sees them and the caller's check-then-write
        stays atomic.  Only the COMMIT (and its fsync) is deferred to a callback that
        runs once the handlers already scheduled have had their turn: under load one
        fsync covers many grants.  A caller that must not answer before its write is
        on disk awaits :meth:`committed`.  ``on_error`` is called when a batch fails
        to commit (it was rolled back), so in-memory state can be rebuilt from disk;
        ``on_recovered`` when a batch commits again after one failed.
        """
        self._loop = loop
        self._on_commit_error = on_error
        self._on_recovered = on_recovered

    def stop_group_commit(self) -> None:
        """Commit the open batch now and go back to one commit per write."""
        if self._tx_open:
            self._commit_batch()
        self._loop = None

    def committed(self) -> Awaitable[None]:
        """Resolves once every write made so far is committed (fsynced, if any of them was durable).

        Raises StoreError (through the awaitable) when that batch failed to commit.
        """
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._tx_open:
            self._waiters.append(fut)
        else:
            fut.set_result(None)
        return fut

    def _set_sync(self, durable: bool) -> None:
        if self._sync_full is not durable:
            self._conn.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
            self._sync_full = durable

    def _write(self, durable: bool, work: Sequence[Statement]) -> None:
        """Apply ``work`` all or nothing: committed now, or inside the open group-commit batch."""
        if self._loop is None:  # one transaction per write, committed before returning
            self._set_sync(durable)
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in work:
                    self._conn.execute(sql, params)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back itself (a full disk)
                    self._conn.execute("ROLLBACK")
                raise
            return
        if self._tx_open and durable and not self._tx_durable:
            # The safety level cannot change inside a transaction: commit the non-durable batch now
            # (no fsync) and start a durable one.
            self._commit_batch()
        if not self._tx_open:
            self._set_sync(durable)
            self._conn.execute("BEGIN IMMEDIATE")
            self._tx_open, self._tx_durable = True, durable
            self._flush_handle = self._loop.call_soon(self._flush)
        self._conn.execute("SAVEPOINT relay_write")
        try:
            for sql, params in work:
                self._conn.execute(sql, params)
        except BaseException as exc:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK TO relay_write")
                self._conn.execute("RELEASE relay_write")
            else:  # SQLite rolled the whole batch back itself (a full disk, an I/O error): it is lost
                self._end_batch(StoreError(f"could not write to state file {self.path}: {exc}"))
            raise
        self._conn.execute("RELEASE relay_write")

    def _flush(self) -> None:
        self._flush_handle = None
        if self._tx_open:
            self._commit_batch()

    def _commit_batch(self) -> None:
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            self._end_batch(StoreError(f"could not commit to state file {self.path}: {exc}"))
            return
        self.batches += 1
        self._end_batch(None)

    def _end_batch(self, error: StoreError | None) -> None:
        """The batch is over, committed (``error`` None) or lost: answer its waiters, tell the owner."""
        waiters, self._waiters = self._waiters, []
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._tx_open = self._tx_durable = False
        recovered = error is None and self.commit_error is not None
        self.commit_error = error
        for fut in waiters:
            if not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(error)
        if error is not None and self._on_commit_error is not None:
            self._on_commit_error(error)
        if recovered and self._on_recovered is not None:
            self._on_recovered()


def _checked(path: Path, parent: Path) -> bool:
    """The file checks that need no SQLite (``relay.commander.store.checks``): True when the state file
    exists and passed them; a missing one is announced.  Raises StoreError naming the failed check."""
    try:
        existed = inspect_state_file(path)
    except StateFileError as exc:
        raise StoreError(str(exc)) from None
    except OSError as exc:
        raise StoreError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    if not existed:
        announce_new_state_file(path)
    return existed


def _why(exc: sqlite3.DatabaseError) -> str:
    """SQLite's words, plus what to do about the two an operator meets most."""
    text = str(exc)
    if "readonly" in text or "read-only" in text:
        return f"{text} (the state file or its directory is read-only: the commander must write its state)"
    if "disk is full" in text:
        return f"{text} (free space on the state file's volume)"
    return text


def _lock(lock_path: str) -> int:
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        where = Path(lock_path).parent
        if exc.errno == errno.EROFS:
            raise StoreError(
                f"cannot write the state next to {lock_path[: -len('.lock')]}: {where} is on a read-only "
                "filesystem; the commander must write its state there (mount it read-write, or pick another "
                "--state / RELAY_STATE)"
            ) from None
        raise StoreError(f"cannot create the state lock file {lock_path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise StoreError(
            f"state file {lock_path[: -len('.lock')]} is in use by another commander (pid {holder})"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd
