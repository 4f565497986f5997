"""Run a ``docker run`` line with buildah: the image's own entrypoint, ``-e`` and ``-v``, tini as PID 1.

There is no Docker engine on the machines that test this project, but buildah is there
(tools/install_image_tools.sh). A :class:`Container` takes the very argv that ``relayctl
print-docker-command`` prints (or one written like it) and runs it the way ``docker run`` would:

- a fresh container from the image (``buildah from``), removed afterwards;
- the image's ENTRYPOINT with the line's arguments, or its CMD when there are none; its ENV, USER and
  WORKDIR (``buildah run`` applies them), plus each ``-e KEY=VALUE``;
- each ``-v SRC:DST[:ro]`` as a bind mount (a missing SRC is created, as docker does); the host's network (workers reach a commander on
  127.0.0.1, as with ``--network host``);
- a PID namespace of its own, so PID 1 in the container is the entrypoint's first program (tini),
  as under Docker. buildah's chroot isolation has no PID namespace, so ``unshare --pid`` (util-linux,
  in every Debian/Ubuntu base) adds it in front of the entrypoint; that needs CAP_SYS_ADMIN in the
  container's bounding set, which Docker would not give;
- ``--stop-timeout``: :meth:`Container.stop` sends SIGTERM to PID 1 and SIGKILL after that long.

Anything else on the line (``-p``, ``--gpus`` other than absent, ``--network``...) is refused rather
than silently ignored: the line under test must mean what it says.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_counter = itertools.count()
# What `buildah run` itself adds to stderr when the command fails: not the container's output.
_BUILDAH_TRAILER = re.compile(r"^(subprocess exited with status \d+|Error: exit status \d+)$")


class ContainerError(RuntimeError):
    """A line this runner cannot honour, or buildah failing; the message says which."""


def have_buildah() -> bool:
    return shutil.which("buildah") is not None


@dataclass
class RunLine:
    """A ``docker run`` line, parsed: what the container gets."""

    image: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    volumes: list[str] = field(default_factory=list)
    name: str | None = None
    stop_timeout_s: float = 10.0  # docker's default


def parse_docker_run(argv: Sequence[str]) -> RunLine:
    """``docker run [OPTIONS] IMAGE [ARG...]`` with the options print-docker-command uses."""
    argv = list(argv)
    if argv[:2] != ["docker", "run"]:
        raise ContainerError(f"not a `docker run` line: {argv[:2]}")
    i, line = 2, RunLine(image="")
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt in ("-d", "--detach", "--rm"):
            i += 1
            continue
        if i + 1 >= len(argv):
            raise ContainerError(f"{opt} needs a value")
        value = argv[i + 1]
        if opt == "-e":
            key, sep, val = value.partition("=")
            line.env[key] = val if sep else os.environ.get(key, "")
        elif opt == "-v":
            if len(value.split(":")) not in (2, 3):
                raise ContainerError(f"-v {value}: expected SRC:DST[:OPTIONS]")
            line.volumes.append(value)
        elif opt == "--name":
            line.name = value
        elif opt == "--stop-timeout":
            line.stop_timeout_s = float(value)
        else:
            raise ContainerError(f"{opt} is not supported here (no Docker engine, no GPU)")
        i += 2
    if i >= len(argv):
        raise ContainerError("no image on the line")
    line.image, line.args = argv[i], argv[i + 1 :]
    return line


def image_config(image: str) -> dict[str, Any]:
    """The image's OCI config: Entrypoint, Cmd, Env, User, WorkingDir..."""
    config: dict[str, Any] = json.loads(_buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    return config


def _buildah(*args: str, timeout: float = 120) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ContainerError(f"buildah {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def strip_buildah_trailer(text: str) -> str:
    """The container's stderr without the lines buildah adds when the command exits non-zero."""
    lines = text.splitlines(keepends=True)
    while lines and _BUILDAH_TRAILER.match(lines[-1].strip()):
        lines.pop()
    return "".join(lines)


class Container:
    """One container run in the background from a parsed :class:`RunLine`; output goes to ``log_path``."""

    def __init__(self, line: RunLine, log_path: Path) -> None:
        self.line = line
        self.log_path = Path(log_path)
        self.name = f"relay-test-{os.getpid()}-{next(_counter)}-{line.name or 'c'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._pid1: int | None = None

    @classmethod
    def from_argv(cls, argv: Sequence[str], log_path: Path) -> Container:
        return cls(parse_docker_run(argv), log_path)

    def command(self) -> list[str]:
        """The ``buildah run`` argv: entrypoint + (args or CMD), behind ``unshare --pid``."""
        config = image_config(self.line.image)
        entry = list(config.get("Entrypoint") or [])
        program = entry + (self.line.args or list(config.get("Cmd") or []))
        if not program:
            raise ContainerError(f"{self.line.image} has neither ENTRYPOINT nor CMD and the line no command")
        argv = ["buildah", "run", "--isolation", "chroot", "--network", "host", "--cap-add", "CAP_SYS_ADMIN"]
        for key, value in self.line.env.items():
            argv += ["-e", f"{key}={value}"]
        for volume in self.line.volumes:
            argv += ["-v", volume]
        unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--"]
        return [*argv, self.name, "--", *unshare, *program]

    def start(self) -> Container:
        for volume in self.line.volumes:  # as docker does: a missing host directory is created
            Path(volume.split(":")[0]).mkdir(parents=True, exist_ok=True)
        _buildah("from", "--quiet", "--pull-never", "--name", self.name, self.line.image)
        try:
            declared = image_config(self.line.image).get("Volumes") or {}
            for volume in self.line.volumes:
                # `docker run -v X:/mnt` replaces the image's VOLUME /mnt; `buildah run` would mount
                # its own anonymous volume over X instead, unless the container forgets the VOLUME.
                dest = volume.split(":")[1]
                if dest in declared:
                    _buildah("config", "--volume", f"{dest}-", self.name)
            cmd = self.command()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
        except BaseException:
            self.remove()
            raise
        return self

    def pid1(self, timeout_s: float = 30.0) -> int:
        """The host pid of the container's PID 1 (the process that is pid 1 in its own namespace)."""
        if self._pid1 is not None:
            return self._pid1
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid in _descendants(self.proc.pid):
                if _ns_pids(pid)[-1:] == [1] and len(_ns_pids(pid)) > 1:
                    self._pid1 = pid
                    return pid
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ContainerError(f"no PID 1 found for {self.name}:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """``docker stop``: ``sig`` to PID 1, SIGKILL after the stop timeout; the exit status."""
        os.kill(self.pid1(), sig)
        try:
            return self.wait(self.line.stop_timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.pid1(), signal.SIGKILL)
            return self.wait(30)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def output(self) -> str:
        try:
            return strip_buildah_trailer(self.log_path.read_text(errors="replace"))
        except OSError:
            return ""

    def remove(self) -> None:
        """Kill whatever still runs and delete the container (its writable layer); volumes stay."""
        if self.proc is not None and self.proc.poll() is None:
            if self._pid1 is not None:
                _kill_quietly(self._pid1)
            self.proc.kill()
            self.proc.wait(30)
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=60)

    def __enter__(self) -> Container:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()


def run_once(argv: Sequence[str], log_path: Path, timeout_s: float = 120) -> tuple[int, str]:
    """Run a ``docker run`` line to the end: (exit status, the container's output)."""
    with Container.from_argv(argv, log_path) as c:
        code = c.wait(timeout_s)
        return code, c.output()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for kid in _children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def _ns_pids(pid: int) -> list[int]:
    """``NSpid`` of /proc/PID/status: the pid in each nested PID namespace, outermost first."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(p) for p in line.split()[1:]]
    except OSError:
        pass
    return []


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
