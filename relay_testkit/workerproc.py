"""A worker subprocess (``python -m relay.worker``) for end-to-end tests and the handoff benchmark."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


class WorkerProc:
    """One worker with its own relay_root (its own "pod") and env-only configuration."""

    def __init__(
        self,
        root: Path,
        *,
        commander_url: str,
        run_id: str | None,
        worker_id: str,
        remote: str | None = None,
        train: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        fast_settings: bool = True,
    ) -> None:
        """``fast_settings``: the quick backoffs, grace and margins tests use; False keeps every worker
        default (the handoff benchmark measures the worker as shipped)."""
        self.root = Path(root)
        self.run_id = run_id
        self.worker_id = worker_id
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        self.env.update(
            PYTHONPATH=str(REPO_ROOT),
            COMMANDER_URL=commander_url,
            RUN_ID=run_id or "",
            WORKER_ID=worker_id,
            MODE="sft",
            RELAY_ROOT=str(self.root),
            RELAY_TRAINER="mock",
            TRAIN=json.dumps(train or {}),
        )
        if fast_settings:
            self.env.update(self._FAST)
        for key in ("HF_TOKEN", "HF_REPO", "RELAY_SHARED_SECRET"):
            self.env.pop(key, None)
        if remote:
            self.env["RELAY_REMOTE"] = remote
        for key, value in (settings or {}).items():
            self.env[key.upper()] = str(value)
        self.env.update(env or {})
        self.log_path = self.root.parent / f"{worker_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    #: quick settings for tests: short backoffs, margins, grace and report interval
    _FAST = dict(
        RENEW_SAFETY_MARGIN_S="1",
        REPORT_INTERVAL_S="0.5",
        ACQUIRE_BACKOFF_S="0.1",
        ACQUIRE_BACKOFF_MAX_S="0.3",
        COMMANDER_WAIT_S="20",
        KILL_GRACE_S="0.5",
        GRACE_S="15",
        RESTART_BACKOFF_S="0.1",
    )

    # -- paths ------------------------------------------------------------------------------------
    def run_dir(self, run_id: str | None = None) -> Path:
        return self.root / "runs" / (run_id or self.run_id or "")

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir(run_id) / "events.jsonl")

    def mock_log(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir(run_id) / "mock_steps.jsonl")

    def progress(self, run_id: str | None = None) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir(run_id) / "progress.jsonl")

    # -- process ----------------------------------------------------------------------------------
    def start(
        self,
        *args: str,
        output: int | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> WorkerProc:
        """Start the worker; its stdout and stderr go to :attr:`log_path`, or to the file descriptor
        ``output`` (a pipe a test may stop reading: a stalled log driver). ``wrap`` turns the command
        into the one to run (``relay_testkit.mountns.wrapped``: a volume that is full or read-only)."""
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "relay.worker", *args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                wrap(argv) if wrap is not None else argv,
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log if output is None else output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.worker_id} still running after {timeout}s:\n{self.output()}"
            ) from None

    def send(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_event(
        self,
        name: str,
        timeout: float = 30.0,
        pred: Callable[[dict[str, Any]], bool] = lambda e: True,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for ev in self.events(run_id):
                if ev["event"] == name and pred(ev):
                    return ev
            if self.proc is not None and self.proc.poll() is not None:
                for ev in self.events(run_id):
                    if ev["event"] == name and pred(ev):
                        return ev
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}) without event {name}:\n{self.output()}"
                )
            time.sleep(0.02)
        raise AssertionError(f"no event {name} within {timeout}s:\n{self.output()}")


def step_counts(mock_log: list[dict[str, Any]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for rec in mock_log:
        if rec.get("event") == "step":
            counts[rec["step"]] = counts.get(rec["step"], 0) + 1
    return counts
