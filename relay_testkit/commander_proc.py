"""A real commander (``python -m relay.cli serve``) in a subprocess, for tests, chaos and benchmarks.

Typical use::

    from relay_testkit.commander_proc import CommanderProcess

    with CommanderProcess(tmp_path / "state.db", lease_ttl_s=2.0, secret="s3cret") as cmd:
        cmd.url            # http://127.0.0.1:<port>, free port picked by the commander itself
        cmd.kill()         # kill -9: no shutdown, no WAL checkpoint
        cmd.start()        # same state file, same port
        cmd.pause()        # SIGSTOP: the socket stays open but nothing answers (a hung commander)
        cmd.resume()       # SIGCONT
        cmd.restart()      # kill -9 then start again, waiting for /api/health
        cmd.terminate()    # SIGTERM, graceful; returns the exit code
        cmd.output()       # everything the process printed so far (all starts), for failure messages

or the pytest fixture :func:`commander_factory` (import it into a conftest.py),
which stops every commander it started at the end of the test.

The first start uses ``--port 0`` and reads the bound port from the commander's
"listening on" line, so there is no race for a free port; later starts reuse
that port so clients keep their URL.  Output goes to a log file (never a pipe
that could fill up and block the commander).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

try:  # the Docker image has no test extras; bench/ uses CommanderProcess, not the fixture
    import pytest
except ImportError:  # pragma: no cover - exercised by tests/deploy/test_image_files.py
    pytest = None  # type: ignore[assignment]

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(rb"listening on http://\S+?:(\d+)")


class CommanderStartError(RuntimeError):
    """The commander did not become healthy; the message carries its output."""


class CommanderProcess:
    """One commander subprocess on loopback with its own state file."""

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        *,
        secret: str | None = None,
        lease_ttl_s: float | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        self.state_path = Path(state_path)
        self.secret = secret
        self.lease_ttl_s = lease_ttl_s
        self.host = host
        self.port = port
        self.extra_args = list(extra_args)
        self.env = env
        self.log_path = Path(log_path) if log_path else self.state_path.with_suffix(".commander.log")
        self.wrap = wrap  # e.g. relay_testkit.mountns.wrapped: the command run inside another command
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("commander not started yet")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def headers(self) -> dict[str, str]:
        """Auth headers for raw HTTP calls."""
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run_detail(self, run_id: str, *, events: int = 200) -> dict[str, Any]:
        """``GET /api/runs/<run_id>`` with its newest ``events`` events, as JSON."""
        req = urllib.request.Request(f"{self.url}/api/runs/{run_id}?events={events}", headers=self.headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    # ------------------------------------------------------------------ lifecycle

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "relay.cli",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--state",
            str(self.state_path),
        ]
        if self.lease_ttl_s is not None:
            cmd += ["--lease-ttl", str(self.lease_ttl_s)]
        cmd += self.extra_args
        return self.wrap(cmd) if self.wrap is not None else cmd

    def start(self, timeout_s: float = 20.0) -> CommanderProcess:
        """Start (or start again) and wait until ``GET /api/health`` answers 200."""
        if self.is_running():
            raise RuntimeError(f"commander already running (pid {self.pid})")
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env.pop("RELAY_SHARED_SECRET", None)
        if self.secret:
            env["RELAY_SHARED_SECRET"] = self.secret
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_running():
                raise CommanderStartError(
                    f"commander exited with {self.proc.returncode if self.proc else '?'}:\n{self.output()}"
                )
            if not self.port:
                found = _LISTENING.search(self._new_output())
                if found:
                    self.port = int(found.group(1))
            if self.port and self.health_ok(timeout_s=1.0):
                return
            time.sleep(0.02)
        self.kill()
        raise CommanderStartError(f"commander not healthy after {timeout_s}s:\n{self.output()}")

    def health_ok(self, timeout_s: float = 1.0) -> bool:
        """True when /api/health answers 200 right now."""
        try:
            with urllib.request.urlopen(f"{self.url}/api/health", timeout=timeout_s) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False

    def kill(self) -> None:
        """kill -9 and reap: the commander gets no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process must be able to die
            self.proc.kill()
            self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait for the graceful exit; returns its exit code."""
        if self.proc is None:
            raise RuntimeError("commander never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return self.proc.returncode

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def restart(self, timeout_s: float = 20.0) -> CommanderProcess:
        """kill -9, then start on the same state file and port."""
        self.kill()
        return self.start(timeout_s)

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> CommanderProcess:
        if not self.is_running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ output

    def output(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _new_output(self) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return f.read()
        except FileNotFoundError:
            return b""


def _commander_factory(tmp_path: Path) -> Iterator[Callable[..., CommanderProcess]]:
    """``commander_factory(**kwargs)`` starts a CommanderProcess (state in tmp_path) and stops it at teardown.

    Keyword arguments are CommanderProcess's; ``state_path`` defaults to a fresh file.
    """
    started: list[CommanderProcess] = []

    def make(**kwargs: object) -> CommanderProcess:
        state = kwargs.pop("state_path", tmp_path / f"commander-{len(started)}.db")
        proc = CommanderProcess(state, **kwargs)  # type: ignore[arg-type]
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.close()


if pytest is not None:
    commander_factory = pytest.fixture(_commander_factory, name="commander_factory")
