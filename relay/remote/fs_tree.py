"""The directories of a ``file://`` remote, reached and changed through file descriptors, never a symlink.

A shared directory is writable by others: a pod, an operator, a hostile tenant.  If ``relay/tmp``
were a symbolic link to ``/home``, a push cleaning its staging area would delete ``/home``'s
contents.  So below the remote's root (which may itself be a link: the operator chose it) every
directory is opened relative to its parent's descriptor with ``O_NOFOLLOW | O_DIRECTORY``, every
file with ``O_NOFOLLOW``, and every create, rename, link and delete is made relative to an open
directory (``dir_fd``).  A swap of a directory for a link after it was opened changes nothing: the
descriptor still names the real directory.  A link (or a file where a directory must be) is refused
with :class:`~relay.remote.errors.UnsafeLayoutError`; ``shutil.rmtree(dir_fd=...)`` never follows
one either.

:class:`PublishLock` is the remote's compare-and-swap: an exclusive ``flock`` on ``relay/.lock``
(opened the same way), waited for a bounded time, with its holder written in the file so a timeout
can say who holds it.  ``flock`` is released by the kernel when its holder dies, but not while the
holder is stopped: a worker SIGSTOPped in the middle of a publish (milliseconds: a rename and a small
file) blocks the others until it dies or resumes, and the timeout names it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from relay.remote.errors import RemoteError, UnsafeLayoutError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOCK_POLL_S = 0.05


def _name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a single path component: {name!r}")
    return name


class SafeDir:
    """One open directory of the remote's layout (a context manager that closes it)."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages only: never opened by name

    @classmethod
    def open_root(cls, root: Path, *, create: bool) -> SafeDir | None:
        """The remote's root (a link here is the operator's choice, so it is followed); None if missing."""
        if create:
            root.mkdir(parents=True, exist_ok=True)
        try:
            return cls(os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), root)
        except FileNotFoundError:
            if create:
                raise
            return None

    def __enter__(self) -> SafeDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _unsafe(self, name: str, exc: OSError) -> OSError | UnsafeLayoutError:
        """What an open refused with O_NOFOLLOW (ELOOP) or O_DIRECTORY (ENOTDIR, also for a link) means."""
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            return exc
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode)
        except OSError:
            link = exc.errno == errno.ELOOP
        return UnsafeLayoutError(
            str(self.path / name), "is a symbolic link" if link else "is not a directory"
        )

    def sub(self, name: str, *, create: bool = False) -> SafeDir | None:
        """The directory ``name`` inside this one (created when ``create``); None when missing."""
        name = _name(name)
        for _ in range(2):
            try:
                return SafeDir(os.open(name, DIR_FLAGS, dir_fd=self.fd), self.path / name)
            except FileNotFoundError:
                if not create:
                    return None
            except OSError as exc:
                raise self._unsafe(name, exc) from None
            with contextlib.suppress(FileExistsError):  # a concurrent creator won: open theirs
                os.mkdir(name, 0o755, dir_fd=self.fd)
        raise RemoteError(f"{self.path / name} vanished while being created", retryable=True)

    def need(self, name: str) -> SafeDir:
        d = self.sub(name, create=True)
        assert d is not None
        return d

    @contextlib.contextmanager
    def walk(self, parts: list[str], *, create: bool) -> Iterator[SafeDir | None]:
        """The directory ``parts`` below this one (each level opened without following links)."""
        opened: list[SafeDir] = []
        cur: SafeDir | None = self
        try:
            for part in parts:
                assert cur is not None
                cur = cur.sub(part, create=create)
                if cur is None:
                    break
                opened.append(cur)
            yield cur
        finally:
            for d in reversed(opened):
                d.close()

    # -- files ------------------------------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(_name(name), dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open_read(self, name: str) -> int:
        """A descriptor to read the regular file ``name`` (FileNotFoundError when missing)."""
        try:
            # O_NONBLOCK: a FIFO planted in the layout must not hang the open (no effect on regular files)
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(_name(name), flags, dir_fd=self.fd)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise self._unsafe(name, exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeLayoutError(str(self.path / name), "is not a regular file")
        return fd

    def read_bytes(self, name: str) -> bytes | None:
        try:
            fd = self.open_read(name)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def create(self, name: str) -> int:
        """A new, empty file ``name`` for writing (whatever was there, a link included, is removed first,
        never followed)."""
        name = _name(name)
        with contextlib.suppress(FileNotFoundError):
            self.remove(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, 0o644, dir_fd=self.fd)

    def write_atomic(self, name: str, data: bytes) -> None:
        """Replace ``name`` with ``data``: a temp file, fsync, rename (a link at ``name`` is replaced,
        not followed), directory fsync."""
        tmp = f".relay-{_name(name)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        old = self.lstat(name)
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise UnsafeLayoutError(str(self.path / name), "is a directory, not a file")
        fd = self.create(tmp)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self.fd)
            raise
        self.fsync()

    def rename(self, name: str, dst: SafeDir, dst_name: str) -> None:
        os.rename(_name(name), _name(dst_name), src_dir_fd=self.fd, dst_dir_fd=dst.fd)

    def link_into(self, name: str, dst: SafeDir, dst_name: str) -> None:
        """Hard-link this directory's regular file ``name`` as ``dst/dst_name`` (a link is never followed)."""
        os.link(_name(name), _name(dst_name), src_dir_fd=self.fd, dst_dir_fd=dst.fd, follow_symlinks=False)

    def remove(self, name: str) -> None:
        """Delete ``name``: a directory tree (links inside are removed, never followed) or anything else."""
        st = self.lstat(name)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self.path / name))
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=self.fd)
        else:
            os.unlink(name, dir_fd=self.fd)

    def names(self) -> list[tuple[str, bool]]:
        """(name, is a real directory) of every entry; links count as not directories."""
        with os.scandir(self.fd) as it:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in it]

    def empty(self) -> None:
        """Delete everything inside (best effort: only trash and staging areas are emptied)."""
        for name, _is_dir in self.names():
            with contextlib.suppress(OSError):
                self.remove(name)

    def move_to(self, name: str, trash: SafeDir) -> None:
        """Rename ``name`` into ``trash`` under a unique name (atomic), to delete it later."""
        self.rename(name, trash, f"{name}.{uuid.uuid4().hex[:12]}")

    def fsync(self) -> None:
        os.fsync(self.fd)


class PublishLock:
    """An exclusive ``flock`` on ``name`` in ``where`` (see the module docstring); a context manager."""

    def __init__(self, where: SafeDir, name: str, *, timeout_s: float, holder: str) -> None:
        self.where = where
        self.name = name
        self.timeout_s = timeout_s
        self.holder = holder
        self._fd: int | None = None

    def __enter__(self) -> PublishLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def try_acquire(self) -> bool:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(_name(self.name), flags, 0o644, dir_fd=self.where.fd)
        except OSError as exc:
            raise self.where._unsafe(self.name, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        with contextlib.suppress(OSError):  # who holds it, for whoever times out waiting
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"{self.holder} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(), 0
            )
        return True

    def acquire(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise RemoteError(
                    f"{self.where.path / self.name} has been held for {self.timeout_s:g}s by {self._current()}: "
                    "a worker stopped in the middle of a publish (SIGSTOP, a frozen container) keeps it until "
                    "it dies or resumes",
                    retryable=True,
                )
            time.sleep(LOCK_POLL_S)

    def _current(self) -> str:
        try:
            fd = self.where.open_read(self.name)
        except (OSError, RemoteError):
            return "an unknown process"
        try:
            text = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
        return text or "an unknown process"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def holder_name(what: str) -> str:
    """Who takes a lock, as the lock file shows it: this process, this host, what it does."""
    return f"pid {os.getpid()} on {socket.gethostname()} ({what})"
