"""Checks that run before the worker asks for a lease: can this pod carry a run at all?

A worker that acquires a run and only then finds that its volume is read-only, that ``RELAY_ROOT``
names a file, that the trainer launcher is missing or that a ``file://`` remote cannot be written,
has taken the run from the queue for nothing (and, before these checks, died with a traceback
holding the lease until its TTL ran out).  Each of these is a property of the pod, not of the run,
so it is checked first, and a failure is one line naming the setting, exit code 2 (configuration
error), nothing acquired.

The probes leave the volume as they found it: a directory they had to create is removed again, so a
worker refused for another reason (a wrong secret, a closed run) has still written nothing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from relay.config import WorkerConfig


class PreflightError(Exception):
    """The pod cannot carry a run; ``str()`` is one line naming the setting."""


def probe_writable_dir(path: Path) -> None:
    """``mkdir -p path``, then create, write and remove a probe file in it; raises OSError.

    Directories this call created are removed again afterwards (deepest first, only when still empty).
    """
    created: list[Path] = []
    p = path
    while not os.path.lexists(p) and p.parent != p:
        created.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".relay-probe-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"relay write probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    finally:
        for d in created:
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _os_reason(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def check_relay_root(cfg: WorkerConfig) -> None:
    """``relay_root/runs`` can be created and written (not /proc, not a file, not read-only, not full)."""
    runs = cfg.relay_root / "runs"
    try:
        probe_writable_dir(runs)
    except OSError as exc:
        raise PreflightError(
            f"config error: relay_root: {cfg.relay_root} cannot hold runs: writing {runs} failed: "
            f"{_os_reason(exc)} (set RELAY_ROOT to a writable directory on the pod's volume)"
        ) from None


def launcher_path(cfg: WorkerConfig, mode: str) -> Path:
    """The launcher the worker would start for ``mode``, resolved exactly as the run session does."""
    from relay.worker.launcher import trainer_argv

    return Path(trainer_argv(cfg.launcher_dir(), mode)[-1])


def check_launcher(cfg: WorkerConfig) -> None:
    """``launch_<mode>.sh`` exists and is readable, for the configured mode.

    One mode is enough in pool mode too: the worker asks the commander for runs of ``cfg.mode`` only,
    and the commander grants no run of another mode (``mode_mismatch``), so the spec's mode of any run
    this worker gets is ``cfg.mode``.
    """
    try:
        script = launcher_path(cfg, cfg.mode)
    except Exception as exc:  # noqa: BLE001 - trainer_blackbox not importable: say so in one line
        raise PreflightError(
            f"config error: trainer_dir: cannot locate the trainer launchers: {exc}"
        ) from None
    if not script.is_file() or not os.access(script, os.R_OK):
        what = "is not a readable file" if script.exists() else "does not exist"
        raise PreflightError(
            f"config error: trainer_dir: the {cfg.mode} launcher {script} {what} "
            "(set RELAY_TRAINER_DIR to the directory holding launch_<mode>.sh, or unset it)"
        )


def check_file_remote(cfg: WorkerConfig) -> None:
    """A ``file://`` remote's root can be created and written (an ``hf://`` remote is not probed here)."""
    if not cfg.remote or not cfg.remote.startswith("file:"):
        return
    from relay.remote import FilesystemRemote, RemoteError, open_remote

    try:
        remote = open_remote(cfg.remote, "preflight")
    except RemoteError as exc:
        raise PreflightError(f"config error: remote: {exc}") from None
    assert isinstance(remote, FilesystemRemote)
    try:
        probe_writable_dir(remote.root)
    except OSError as exc:
        raise PreflightError(
            f"config error: remote: {cfg.remote} is not writable: {_os_reason(exc)} "
            "(set RELAY_REMOTE to a writable directory, e.g. a mounted network volume)"
        ) from None


CHECKS = (check_launcher, check_relay_root, check_file_remote)


def preflight(cfg: WorkerConfig) -> None:
    """Every check, cheapest first; raises PreflightError (one line) at the first failure."""
    for check in CHECKS:
        check(cfg)


def preflight_problems(cfg: WorkerConfig) -> list[PreflightError]:
    """Every check, each on its own: all the failures, for ``relayctl worker --check``."""
    problems = []
    for check in CHECKS:
        try:
            check(cfg)
        except PreflightError as exc:
            problems.append(exc)
    return problems


def volume_warning(cfg: WorkerConfig) -> str | None:
    """A warning when relay_root lies on the same filesystem as ``/``: in a container, no volume is
    mounted there, and every local checkpoint dies with the container (the remote keeps the synced ones).
    """
    here = cfg.relay_root
    while not here.exists() and here.parent != here:
        here = here.parent
    try:
        same = here.stat().st_dev == Path("/").stat().st_dev
    except OSError:
        return None
    if not same:
        return None
    return (
        f"warning: relay_root {cfg.relay_root} is on the root filesystem (no volume mounted there?); "
        "in a container its local checkpoints die with the container"
    )
