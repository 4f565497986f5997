"""Can this pod's volume still carry the run? One clear name for each way it cannot, and logs that never
turn a full or read-only volume into a crash.

The preflight checks the volume before anything is acquired; a volume can also fail later: it fills
up (checkpoints are large), or the kernel remounts it read-only after an I/O error.  Then the
trainer cannot save, a restart cannot help, and writing the worker's own files fails too.  So:

- :func:`volume_problem` says what is wrong with the run's directories ("read-only", "full") from
  the filesystem itself (``statvfs`` and a small probe write), for the supervisor to stop restarting
  and release the run for another pod with that one message;
- :class:`VolumeError` is how building a run's directories on an unusable volume is reported (the
  grant is handed back, the worker exits 2, like the preflight);
- :class:`QuietFileHandler` is the worker's ``worker.log``: a write that fails disables it for good
  instead of printing a logging traceback on every line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path

#: errno -> how the volume is named in messages
VOLUME_ERRNOS = {
    errno.EROFS: "read-only",
    errno.ENOSPC: "full",
    errno.EDQUOT: "over its quota",
    errno.EIO: "failing (I/O error)",
    errno.EACCES: "not writable (permission denied)",
}


class VolumeError(Exception):
    """The run's directories cannot be created or written on this pod's volume; ``str()`` is one line."""


def volume_error(root: Path, exc: OSError, what: str) -> VolumeError:
    """``exc`` (raised doing ``what`` under ``root``) as a one-line VolumeError naming the volume."""
    state = VOLUME_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return VolumeError(f"the volume {root} is {state}: {what} failed{where}; this pod cannot carry a run")


def volume_problem(paths: Iterable[Path], *, need_bytes: int = 0) -> str | None:
    """What stops ``paths`` (directories of a run) from taking one more checkpoint of ``need_bytes``:
    a read-only filesystem, too little free space, or a write that fails. None when nothing does."""
    for path in paths:
        try:
            st = os.statvfs(path)
        except OSError:
            continue  # not created yet: the probe of its parent below says more
        if st.f_flag & os.ST_RDONLY:
            return f"{path} is on a read-only filesystem"
        free = st.f_bavail * st.f_frsize
        if need_bytes and free < need_bytes:
            return f"{path} has {free} bytes free, less than one checkpoint ({need_bytes} bytes): the volume is full"
        problem = _probe(path)
        if problem is not None:
            return problem
    return None


def _probe(path: Path) -> str | None:
    probe = path / f".relay-volume-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"relay volume probe\n" * 256)  # a few KiB: a page on any filesystem
            os.fsync(fd)
        finally:
            os.close(fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} is {VOLUME_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))} ({exc.strerror})"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


class QuietFileHandler(logging.FileHandler):
    """A FileHandler on the volume that goes quiet when the volume fails (full, read-only): the worker's
    log on stderr carries on, and no logging traceback is printed for every line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            super().close()

    @classmethod
    def open(cls, path: Path) -> QuietFileHandler | None:
        """The handler, or None when the file cannot even be opened (the volume already failed)."""
        try:
            return cls(path)
        except OSError:
            return None
