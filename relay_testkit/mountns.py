"""Run a command in a mount namespace of its own, where one directory is read-only or a tiny tmpfs.

Real failures, not stand-ins: a read-only bind mount gives EROFS from the kernel, a full tmpfs gives
ENOSPC, to the unmodified program.  ``unshare --mount`` needs root (CAP_SYS_ADMIN) or unprivileged user
namespaces (``--user --map-root-user``); :func:`unavailable` says why neither works, so a test can
skip with that reason on a machine that has neither.

The namespace's mounts are private (``unshare`` makes them so), so nothing leaks to the host.  The
process keeps the pid ``Popen`` reports (``unshare`` and ``sh`` exec), and another process can reach
its view of the files through ``/proc/<pid>/root`` (:func:`seen_by`): that is how a test fills or
frees the tmpfs the program writes to.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path


def _unshare() -> list[str]:
    base = ["unshare", "--mount", "--propagation", "private"]
    return base if os.geteuid() == 0 else [*base, "--user", "--map-root-user"]


def wrapped(
    argv: Sequence[str], directory: Path, *, readonly: bool = False, tmpfs_bytes: int = 0
) -> list[str]:
    """``argv`` run with ``directory`` read-only (``readonly``) or replaced by an empty tmpfs of
    ``tmpfs_bytes`` (kept as ``directory`` for every process in the namespace)."""
    d = shlex.quote(str(directory))
    if readonly:
        setup = f"mount --bind {d} {d} && mount -o remount,ro,bind {d} {d}"
    elif tmpfs_bytes:
        setup = f"mount -t tmpfs -o size={int(tmpfs_bytes)} relay-test {d}"
    else:
        raise ValueError("say what to mount: readonly=True or tmpfs_bytes")
    return [*_unshare(), "sh", "-c", f'{setup} && exec "$@"', "sh", *argv]


def seen_by(pid: int, path: Path) -> Path:
    """``path`` as the process ``pid`` sees it (inside its mount namespace)."""
    return Path(f"/proc/{pid}/root") / Path(path).relative_to("/")


@functools.cache
def unavailable() -> str | None:
    """None when :func:`wrapped` works on this machine, else why not (for ``pytest.skip``)."""
    if shutil.which("unshare") is None:
        return "no unshare binary (util-linux)"
    with tempfile.TemporaryDirectory() as tmp:
        probe = wrapped(
            ["sh", "-c", f"touch {shlex.quote(tmp)}/x 2>/dev/null && exit 3 || exit 0"],
            Path(tmp),
            readonly=True,
        )
        try:
            done = subprocess.run(probe, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unshare --mount failed: {exc}"
    if done.returncode != 0:
        return f"cannot make a mount namespace here: {done.stderr.decode(errors='replace').strip()[:200]}"
    return None
