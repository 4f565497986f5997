"""A chaos cluster on loopback: a real commander, real ``relayctl worker`` processes with the mock trainer,
a shared filesystem remote, and a seeded driver that kills, restarts and partitions them.

Used by ``tests/chaos`` (short, bounded runs) and ``bench/chaos_soak.py`` (minutes).  Everything the
checks in :mod:`relay_testkit.chaos_checks` need is recorded on disk or in :class:`ChaosArtifacts`:

- each worker's volume (``vol-N/runs/<run>/events.jsonl``: the worker's own events),
- each worker's mock-trainer log (``mock/<worker>.jsonl``, RELAY_MOCK_LOG: every start, step and save
  with pid, epoch and timestamp),
- :class:`PidWatcher`: when each trainer process was *seen dead* (an upper bound of its death, polled
  every few milliseconds), which is what makes "the old trainer was dead before the new one started"
  a sound check rather than a guess from the last step it logged,
- the driver's own log of every action (kill with signal and moment, commander restart, partition),
- the commander's view of each run (``GET /api/runs/<id>``) and the remote's state.json.

Kill moments: ``random`` (whenever), ``mid_save`` (the trainer logged ``save_slow``: a checkpoint is
half-written, COMPLETE not yet there), ``after_save`` (COMPLETE just written: the worker is about to
commit or committing), ``after_commit`` (the worker logged ``checkpoint_committed``: the upload is in
flight or just done).  A targeted kill that sees no trigger within a few seconds falls back to
``random`` and says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from relay_testkit import chaos_faults
from relay_testkit.chaos_faults import with_fd_limit
from relay_testkit.chaos_worker_faults import (
    POISON_EPOCH,
    OutputPump,
    RemoteWatcher,
    commit_fail_train,
    poison_remote_state,
)
from relay_testkit.commander_proc import CommanderProcess
from relay_testkit.tcp_proxy import TcpProxy

REPO_ROOT = Path(__file__).resolve().parents[1]
MOMENTS = ("random", "mid_save", "after_save", "after_commit")


# ------------------------------------------------------------------------------------------ processes


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None when it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[19])


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """True while ``pid`` runs (a zombie is dead; a recycled pid with another start time is dead)."""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[1] == starttime


class JsonlTail:
    """Reads the JSON lines appended to a file since the last call (a torn last line waits for its end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


@dataclass
class TrainerSeen:
    """One trainer process, as learned from its ``start`` record and watched until it is gone."""

    pid: int
    run_id: str
    epoch: int
    worker_id: str
    start_ts: float
    starttime: int | None
    death_ts: float | None = None


class PidWatcher:
    """Learns trainer pids from the mock logs and records when each is first seen dead.

    ``death_ts`` is an upper bound of the real death (the first poll that found the process gone),
    so ``death_ts(old) < start_ts(new)`` proves the old trainer was dead before the new one did
    anything.  The poll period is a few milliseconds; a trainer's start takes far longer.
    """

    def __init__(self, period_s: float = 0.005) -> None:
        self.period_s = period_s
        self.trainers: dict[tuple[int, float], TrainerSeen] = {}
        self._tails: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chaos-pid-watcher", daemon=True)

    def watch_log(self, path: Path, worker_id: str, running: Callable[[], bool] | None = None) -> None:
        """Learn trainers from ``path``; once ``running()`` is False (the worker exited) the log is read
        for two more seconds, then no more (a soak starts hundreds of workers)."""
        with self._lock:
            self._tails.setdefault(str(path), _Watched(JsonlTail(path), worker_id, running))

    def start(self) -> PidWatcher:
        self._thread.start()
        return self

    def stop(self, settle_s: float = 3.0) -> None:
        """Stop polling after a last sweep; trainers of workers that just exited get ``settle_s`` to go."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        deadline = time.monotonic() + settle_s
        while True:
            self._poll()
            with self._lock:
                alive = any(t.death_ts is None for t in self.trainers.values())
            if not alive or time.monotonic() >= deadline:
                return
            time.sleep(self.period_s)

    def alive_of(self, worker_id: str) -> list[TrainerSeen]:
        with self._lock:
            return [t for t in self.trainers.values() if t.worker_id == worker_id and t.death_ts is None]

    def snapshot(self) -> list[TrainerSeen]:
        with self._lock:
            return [TrainerSeen(**asdict(t)) for t in self.trainers.values()]

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.period_s)

    def _poll(self) -> None:
        with self._lock:
            watched = list(self._tails.items())
        for key, w in watched:
            worker_id = w.worker_id
            if w.running is not None and not w.running():
                w.retire_at = w.retire_at or time.monotonic() + 2.0
                if time.monotonic() > w.retire_at:
                    with self._lock:
                        self._tails.pop(key, None)
            for rec in w.tail.read_new():
                if rec.get("event") != "start":
                    continue
                pid = int(rec["pid"])
                st = proc_stat(pid)
                seen = TrainerSeen(
                    pid=pid,
                    run_id=str(rec.get("run_id")),
                    epoch=int(rec.get("epoch") or 0),
                    worker_id=worker_id,
                    start_ts=float(rec["ts"]),
                    starttime=st[1] if st is not None and st[0] not in ("Z", "X") else None,
                )
                if seen.starttime is None:
                    seen.death_ts = time.time()
                with self._lock:
                    self.trainers[(pid, seen.start_ts)] = seen
        now = time.time()
        with self._lock:
            for t in self.trainers.values():
                if t.death_ts is None and not pid_alive(t.pid, t.starttime):
                    t.death_ts = now


@dataclass
class _Watched:
    tail: JsonlTail
    worker_id: str
    running: Callable[[], bool] | None
    retire_at: float | None = None


# ------------------------------------------------------------------------------------------ settings


@dataclass
class ChaosSettings:
    """Knobs of one chaos run; the defaults are the bounded test's."""

    runs: int = 2
    workers: int = 3  # live at once (more than runs: they contend)
    volumes: int = 4  # pods' disks; a new worker takes a free one (another machine, or the same one back)
    max_steps: int = 150
    save_steps: int = 10
    step_seconds: float = 0.04
    slow_checkpoint_s: float = 0.15
    checkpoint_bytes: int = 64 * 1024
    ttl_s: float = 3.0
    safety_margin_s: float = 1.0
    kill_grace_s: float = 0.5
    grace_s: float = 10.0
    chaos_s: float = 20.0  # how long faults are injected
    drain_timeout_s: float = 90.0  # then: how long the runs get to finish
    action_every_s: tuple[float, float] = (0.8, 2.0)
    p_sigterm: float = 0.4  # the rest of the kills are SIGKILL
    pool_fraction: float = 0.25  # new workers started without a run id (take the next waiting run)
    commander_restart_weight: float = 0.0  # relative weight of "kill -9 the commander and restart it"
    partition_weight: float = 0.0  # relative weight of "cut a worker's link to the commander"
    partition_s: tuple[float, float] = (0.5, 4.0)
    new_runs: bool = False  # soak: start a fresh run whenever one completes
    # the commander-side faults of relay_testkit.chaos_faults (relative weights, like the two above)
    duplicate_id_weight: float = 0.0  # start a second worker with a live holder's WORKER_ID
    state_wipe_weight: float = 0.0  # kill -9 the commander and delete its state, or restore an old copy
    slow_clients_weight: float = 0.0  # a burst of never-finishing connections against the commander
    slow_clients: int = 300
    slow_clients_s: tuple[float, float] = (3.0, 8.0)
    commander_fd_limit: int | None = None  # the commander's open-file limit (a small machine)
    commander_args: tuple[str, ...] = ()
    kill_weight: float = 1.0  # relative weight of "SIGKILL or SIGTERM a worker at a chosen moment"
    pause_weight: float = 0.0  # SIGSTOP a worker alone (its trainer and guard run on), SIGCONT after pause_s
    pause_s: tuple[float, float] = (4.0, 6.0)  # longer than the TTL: its lease ends while it is stopped
    block_output_weight: float = 0.0  # stop reading a worker's stdout/stderr (workers log through a pipe)
    block_output_s: tuple[float, float] = (4.0, 6.0)
    poison_weight: float = 0.0  # replace an open run's remote state.json with one at POISON_EPOCH
    poison_max: int = 1  # runs poisoned at most in one chaos run
    commit_fail_runs: int = 0  # runs submitted with a train: block whose checkpoints can never be committed
    commit_fail_steps: int = 30  # how long those train (they end failed, never completed)
    seed: int = 0
    secret: str = "chaos-secret"

    def train_block(self) -> dict[str, Any]:
        return {
            "max_steps": self.max_steps,
            "save_steps": self.save_steps,
            "step_seconds": self.step_seconds,
            "slow_checkpoint_s": self.slow_checkpoint_s,
            "checkpoint_bytes": self.checkpoint_bytes,
        }


# ------------------------------------------------------------------------------------------ workers


@dataclass
class WorkerHandle:
    worker_id: str
    volume: Path
    run_id: str | None  # None: pool mode
    mock_log: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    started_ts: float
    proxy: TcpProxy | None = None
    pump: OutputPump | None = None  # its stdout/stderr through a pipe a fault can stall
    paused: bool = False
    exit_code: int | None = None
    exited_ts: float | None = None
    signals: list[tuple[float, str]] = field(default_factory=list)

    def poll(self) -> int | None:
        if self.exit_code is None:
            rc = self.proc.poll()
            if rc is not None:
                self.exit_code, self.exited_ts = rc, time.time()
        return self.exit_code

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def record(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "volume": str(self.volume),
            "run_id": self.run_id,
            "pid": self.proc.pid,
            "started_ts": self.started_ts,
            "exit_code": self.exit_code,
            "exited_ts": self.exited_ts,
            "signals": list(self.signals),
            "via_proxy": self.proxy is not None,
            "mock_log": str(self.mock_log),
            "log_path": str(self.log_path),
        }


@dataclass
class ChaosArtifacts:
    """Everything a chaos run leaves for the checks."""

    settings: ChaosSettings
    workdir: Path
    workers: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    trainers: list[TrainerSeen]
    runs: dict[str, dict[str, Any]]  # commander's GET /api/runs/<id>
    remote_states: dict[str, dict[str, Any] | None]
    expected_runs: list[str]
    commander_restarts: int
    started_ts: float
    finished_ts: float
    remote_history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # RemoteWatcher
    poisoned: dict[str, float] = field(default_factory=dict)  # run -> when its remote was poisoned
    commit_fail_runs: list[str] = field(default_factory=list)

    def worker_events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        for vol in sorted({w["volume"] for w in self.workers}):
            for f in sorted(Path(vol).glob("runs/*/events.jsonl")):
                for ev in read_jsonl(f):
                    ev["_volume"] = vol
                    events.append(ev)
        return events

    def mock_records(self) -> list[dict[str, Any]]:
        out = []
        for w in self.workers:
            for rec in read_jsonl(Path(w["mock_log"])):
                rec["_worker_id"] = w["worker_id"]
                rec["_volume"] = w["volume"]
                out.append(rec)
        return out


class ChaosCluster:
    """The processes of one chaos run, under ``workdir``; a context manager that leaves nothing running."""

    def __init__(self, workdir: Path, settings: ChaosSettings) -> None:
        self.workdir = Path(workdir)
        self.s = settings
        self.remote_dir = self.workdir / "remote"
        self.volumes = [self.workdir / f"vol-{i}" for i in range(settings.volumes)]
        limit = settings.commander_fd_limit
        self.commander = CommanderProcess(
            self.workdir / "commander.db",
            secret=settings.secret,
            lease_ttl_s=settings.ttl_s,
            log_path=self.workdir / "commander.log",
            extra_args=settings.commander_args,
            wrap=(lambda argv: with_fd_limit(argv, limit)) if limit else None,
        )
        self.watcher = PidWatcher()
        self.remote_watcher = RemoteWatcher(self.remote_dir)
        self.workers: list[WorkerHandle] = []
        self.actions: list[dict[str, Any]] = []
        self.commander_restarts = 0
        self.poisoned: dict[str, float] = {}
        self.commit_fail_runs: list[str] = []
        self._seq = 0
        self.started_ts = time.time()

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> ChaosCluster:
        for d in [self.remote_dir, *self.volumes, self.workdir / "mock", self.workdir / "logs"]:
            d.mkdir(parents=True, exist_ok=True)
        self.commander.start()
        self.watcher.start()
        self.remote_watcher.start()
        self.note("settings", **{k: v for k, v in asdict(self.s).items() if k != "secret"})
        return self

    def close(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                with contextlib.suppress(OSError):
                    w.proc.send_signal(signal.SIGCONT)  # a paused worker, too
                    w.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.proc.wait(10)
                w.poll()
            if w.proxy is not None:
                w.proxy.close()
            if w.pump is not None:
                w.pump.unblock()
        self.commander.close()
        with contextlib.suppress(Exception):
            self.watcher.stop()
        with contextlib.suppress(Exception):
            self.remote_watcher.stop()

    def __enter__(self) -> ChaosCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def note(self, action: str, **fields: Any) -> dict[str, Any]:
        rec = {"ts": time.time(), "action": action, **fields}
        self.actions.append(rec)
        with open(self.workdir / "driver.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        return rec

    # -- workers ------------------------------------------------------------------------------------
    def live_workers(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.poll() is None]

    def free_volumes(self) -> list[Path]:
        busy = {w.volume for w in self.live_workers()}
        return [v for v in self.volumes if v not in busy]

    def worker_env(
        self, worker_id: str, volume: Path, run_id: str | None, commander_url: str
    ) -> dict[str, str]:
        s = self.s
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        for key in ("HF_TOKEN", "HF_REPO", "RUN_ID", "WORKER_ID", "TRAIN", "MODE", "COMMANDER_URL"):
            env.pop(key, None)
        env.update(
            PYTHONPATH=str(REPO_ROOT),
            COMMANDER_URL=commander_url,
            RELAY_SHARED_SECRET=s.secret,
            RUN_ID=run_id or "",
            WORKER_ID=worker_id,
            MODE="sft",
            RELAY_ROOT=str(volume),
            RELAY_REMOTE=f"file://{self.remote_dir}",
            RELAY_TRAINER="mock",
            RELAY_MOCK_LOG=str(self.workdir / "mock" / f"{worker_id}.jsonl"),
            TRAIN=json.dumps(s.train_block()),
            RENEW_SAFETY_MARGIN_S=str(s.safety_margin_s),
            REPORT_INTERVAL_S="0.5",
            ACQUIRE_BACKOFF_S="0.1",
            ACQUIRE_BACKOFF_MAX_S="0.5",
            COMMANDER_WAIT_S="60",
            KILL_GRACE_S=str(s.kill_grace_s),
            GRACE_S=str(s.grace_s),
            RESTART_BACKOFF_S="0.1",
            IDLE_EXIT_S="1",
            CKPT_KEEP_LAST_N="3",
            REMOTE_KEEP_LAST_N="3",
            HANG_TIMEOUT_S="60",
        )
        return env

    def spawn_worker(
        self,
        run_id: str | None,
        *,
        volume: Path | None = None,
        via_proxy: bool = False,
        extra_env: dict[str, str] | None = None,
        worker_id: str | None = None,
    ) -> WorkerHandle:
        """Start ``relayctl worker`` for ``run_id`` (None: pool mode) on a free volume; ``worker_id`` reuses
        an id (a duplicate: its logs are still its own, named by the process's sequence number)."""
        if volume is None:
            free = self.free_volumes()
            if not free:
                raise RuntimeError("no free volume")
            volume = free[0]
        self._seq += 1
        handle_name = f"w{self._seq:03d}"
        worker_id = worker_id or handle_name
        proxy = None
        url = self.commander.url
        if via_proxy:
            proxy = TcpProxy(self.commander.host, self.commander.port).start()
            url = proxy.url
        env = self.worker_env(worker_id, volume, run_id, url)
        env["RELAY_MOCK_LOG"] = str(self.workdir / "mock" / f"{handle_name}.jsonl")
        env.update(extra_env or {})
        mock_log = Path(env["RELAY_MOCK_LOG"])
        log_path = self.workdir / "logs" / f"{handle_name}.log"
        handle: list[WorkerHandle] = []
        self.watcher.watch_log(mock_log, worker_id, lambda: not handle or handle[0].exit_code is None)
        pump, out = OutputPump.pipe(log_path) if self.s.block_output_weight > 0 else (None, None)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "relay.cli", "worker"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log if out is None else out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if out is not None:
            os.close(out)
        w = WorkerHandle(worker_id, volume, run_id, mock_log, log_path, proc, time.time(), proxy)
        w.pump = pump.start(proc.pid) if pump is not None else None
        handle.append(w)
        self.workers.append(w)
        self.note(
            "spawn", worker_id=worker_id, run_id=run_id, volume=str(volume), pid=proc.pid, via_proxy=via_proxy
        )
        return w

    def signal_worker(self, w: WorkerHandle, sig: signal.Signals, **fields: Any) -> None:
        if w.poll() is not None:
            return
        held = [(t.run_id, t.epoch) for t in self.watcher.alive_of(w.worker_id)]
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(sig)
        w.signals.append((time.time(), sig.name))
        self.note("signal", worker_id=w.worker_id, signal=sig.name, trainers=held, **fields)

    def pause_worker(self, w: WorkerHandle, seconds: float) -> None:
        """SIGSTOP the worker process alone: its trainer and the trainer's guard run on."""
        if w.poll() is not None or w.paused:
            return
        held = [(t.run_id, t.epoch) for t in self.watcher.alive_of(w.worker_id)]
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(signal.SIGSTOP)
        w.paused = True
        self.note("pause", worker_id=w.worker_id, seconds=round(seconds, 2), trainers=held)

    def resume_worker(self, w: WorkerHandle) -> None:
        if w.paused:
            with contextlib.suppress(ProcessLookupError):
                w.proc.send_signal(signal.SIGCONT)
            w.paused = False
            self.note("resume", worker_id=w.worker_id)
        if w.pump is not None and w.pump.blocked:
            w.pump.unblock()
            self.note("unblock_output", worker_id=w.worker_id)

    def block_output(self, w: WorkerHandle, seconds: float) -> None:
        """Stop reading the worker's stdout/stderr and fill the pipe: its next log line blocks."""
        if w.pump is None or w.poll() is not None:
            return
        held = [(t.run_id, t.epoch) for t in self.watcher.alive_of(w.worker_id)]
        if w.pump.block():
            self.note("block_output", worker_id=w.worker_id, seconds=round(seconds, 2), trainers=held)

    def poison(self, run_id: str) -> None:
        """A run's remote state.json at POISON_EPOCH, as if its storage had seen an epoch nobody granted."""
        poison_remote_state(self.remote_dir, run_id)
        self.poisoned[run_id] = time.time()
        self.note("poison", run_id=run_id, epoch=POISON_EPOCH)

    def submit_commit_fail_run(self, run_id: str) -> None:
        """A run whose every checkpoint the worker refuses to commit (submitted with its own train: block)."""
        train = commit_fail_train({**self.s.train_block(), "max_steps": self.s.commit_fail_steps})
        self.api("/api/runs", method="POST", body={"run_id": run_id, "mode": "sft", "train": train})
        self.commit_fail_runs.append(run_id)
        self.note("commit_fail_run", run_id=run_id)

    def stop_all_workers(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every live worker (graceful: they hand their runs on) and wait; SIGKILL stragglers."""
        for w in self.live_workers():
            self.resume_worker(w)
        for w in self.live_workers():
            self.signal_worker(w, signal.SIGTERM, moment="shutdown")
        deadline = time.monotonic() + timeout_s
        while self.live_workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        for w in self.live_workers():
            self.signal_worker(w, signal.SIGKILL, moment="shutdown_stuck")
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.proc.wait(10)

    # -- commander ----------------------------------------------------------------------------------
    def restart_commander(self) -> float:
        """kill -9 the commander and start it again on the same state and port; returns the outage (s)."""
        killed = time.time()
        self.commander.kill()
        self.note("commander_kill")
        self.commander.start()
        healthy = time.time()
        self.commander_restarts += 1
        self.note("commander_up", outage_s=round(healthy - killed, 3))
        return healthy - killed

    def api(self, path: str, *, method: str = "GET", body: Any = None, timeout_s: float = 5.0) -> Any:
        data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
        req = urllib.request.Request(
            self.commander.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.s.secret}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return json.loads(resp.read())

    def run_statuses(self) -> dict[str, str] | None:
        try:
            return {r["run_id"]: r["status"] for r in self.api("/api/runs")["runs"]}
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def remote_state(self, run_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.remote_dir / run_id / "relay" / "state.json").read_text())
        except (OSError, ValueError):
            return None

    # -- the record ----------------------------------------------------------------------------------
    def artifacts(self, expected_runs: list[str]) -> ChaosArtifacts:
        self.watcher.stop()
        runs: dict[str, dict[str, Any]] = {}
        statuses = self.run_statuses() or {}
        for run_id in sorted(set(statuses) | set(expected_runs)):
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                runs[run_id] = self.api(f"/api/runs/{run_id}?events=1000&metrics=1")
        return ChaosArtifacts(
            settings=self.s,
            workdir=self.workdir,
            workers=[w.record() for w in self.workers],
            actions=list(self.actions),
            trainers=self.watcher.snapshot(),
            runs=runs,
            remote_states={r: self.remote_state(r) for r in sorted(set(runs) | set(expected_runs))},
            expected_runs=list(expected_runs),
            commander_restarts=self.commander_restarts,
            started_ts=self.started_ts,
            finished_ts=time.time(),
            remote_history=self.remote_watcher.stop(),
            poisoned=dict(self.poisoned),
            commit_fail_runs=list(self.commit_fail_runs),
        )


# ------------------------------------------------------------------------------------------ the driver


@dataclass
class _PendingKill:
    worker: WorkerHandle
    sig: signal.Signals
    moment: str
    deadline: float
    mock_tail: JsonlTail
    events_tail: JsonlTail | None
    holder: bool = False


class ChaosDriver:
    """Seeded fault injection: keeps ``workers`` workers alive, kills them at chosen moments for
    ``chaos_s`` seconds, optionally restarts the commander and cuts links, then lets the runs finish."""

    def __init__(self, cluster: ChaosCluster, *, log: Callable[[str], None] | None = None) -> None:
        self.c = cluster
        self.s = cluster.s
        self.rng = random.Random(self.s.seed)
        self.log = log or (lambda msg: None)
        self.runs = [f"run-{i:03d}" for i in range(self.s.runs)]
        self.completed: set[str] = set()
        self.pending: _PendingKill | None = None
        self.partitions: list[tuple[WorkerHandle, float]] = []  # (worker, heal at)
        self.stalled: list[tuple[WorkerHandle, float]] = []  # paused or output-blocked (worker, resume at)
        self.done: set[str] = set()  # the kinds of fault injected so far
        self.kills = 0
        self.holder_signals: set[signal.Signals] = set()  # the signals a training holder has had
        self.adding_runs = self.s.new_runs
        self.flood: chaos_faults.SlowFlood | None = None
        self.backup: Path | None = None

    # -- helpers --------------------------------------------------------------------------------------
    def _open_runs(self) -> list[str]:
        return [r for r in self.runs if r not in self.completed]

    def _refresh(self) -> None:
        statuses = self.c.run_statuses()
        if statuses is None:
            return
        for run_id, status in statuses.items():  # failed: a poisoned or never-committing run (or a bug)
            if status in ("completed", "cancelled", "failed") and run_id not in self.completed:
                self.completed.add(run_id)
                self.log(f"{run_id} {status}")
                self.c.note("run_ended", run_id=run_id, status=status, detail=self._detail(run_id))
                if self.adding_runs:
                    self.runs.append(f"run-{len(self.runs):03d}")

    def _detail(self, run_id: str) -> str | None:
        """The commander's reason for a run's end, kept in the driver's log: a later state loss may make
        the commander forget the run, and the checker then reads its end from here."""
        try:
            return self.c.api(f"/api/runs/{run_id}").get("detail")
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def _fill(self, *, allow_pool: bool) -> None:
        """Keep ``workers`` workers alive, each on a free volume; close the links of those that exited."""
        for w in self.c.workers:
            if (
                w.proxy is not None
                and w.exit_code is not None
                and not any(p is w for p, _ in self.partitions)
            ):
                w.proxy.close()  # a soak starts hundreds of workers: do not keep their proxies' threads
        open_runs = self._open_runs()
        if not open_runs:
            return
        while len(self.c.live_workers()) < self.s.workers and self.c.free_volumes():
            # the first workers name their run (creating it); later ones may take the next waiting one
            pool = allow_pool and self.rng.random() < self.s.pool_fraction
            run_id = None if pool else self.rng.choice(open_runs)
            volume = self.rng.choice(self.c.free_volumes())
            via_proxy = self.s.partition_weight > 0 and self.rng.random() < 0.5
            self.c.spawn_worker(run_id, volume=volume, via_proxy=via_proxy)

    def _holders(self) -> list[WorkerHandle]:
        return [
            w
            for w in self.c.live_workers()
            if self.c.watcher.alive_of(w.worker_id)
            and not w.signals
            and not w.paused
            and not (w.pump is not None and w.pump.blocked)
        ]

    def _pick_action(self) -> str:
        weights = {
            "kill": self.s.kill_weight,
            "commander_restart": self.s.commander_restart_weight,
            "partition": self.s.partition_weight,
            "duplicate_id": self.s.duplicate_id_weight,
            "state_wipe": self.s.state_wipe_weight,
            "slow_clients": self.s.slow_clients_weight,
            "pause": self.s.pause_weight,
            "block_output": self.s.block_output_weight,
            "poison": self.s.poison_weight if len(self.c.poisoned) < self.s.poison_max else 0.0,
        }
        names = [k for k, v in weights.items() if v > 0]
        fresh = [k for k in names if k not in self.done]  # every enabled fault is injected once first
        if fresh:
            return self.rng.choice(fresh)
        return self.rng.choices(names, weights=[weights[n] for n in names])[0]

    def _arm_kill(self) -> None:
        holders = self._holders()
        # a stalled worker is left to its stall (killing it would be another fault)
        idle = [
            w for w in self.c.live_workers() if not w.signals and not any(w is p for p, _ in self.stalled)
        ]
        candidates = holders or idle
        if not candidates:
            return
        w = self.rng.choice(sorted(candidates, key=lambda h: h.worker_id))
        sig = signal.SIGTERM if self.rng.random() < self.s.p_sigterm else signal.SIGKILL
        if not holders and sig not in self.holder_signals:
            # on a slow machine every worker may still be starting: each signal first waits for a holder
            # that trains, so a run really is preempted (SIGTERM) and really killed (SIGKILL) mid-training
            return
        moment = self.rng.choice(MOMENTS) if w in holders else "random"
        tail = JsonlTail(w.mock_log)
        tail.read_new()  # only what happens from now on triggers
        events_tail = None
        if moment == "after_commit":
            trainers = self.c.watcher.alive_of(w.worker_id)
            if trainers:
                events_tail = JsonlTail(w.volume / "runs" / trainers[0].run_id / "events.jsonl")
                events_tail.read_new()
        self.pending = _PendingKill(
            w, sig, moment, time.monotonic() + 3.0, tail, events_tail, holder=w in holders
        )

    def _fire_pending(self) -> None:
        p = self.pending
        if p is None:
            return
        if p.worker.poll() is not None:
            self.pending = None
            return
        hit = p.moment == "random"
        if not hit:
            new = p.mock_tail.read_new()
            if p.moment == "mid_save":
                hit = any(r.get("event") == "save_slow" for r in new)
            elif p.moment == "after_save":
                hit = any(r.get("event") == "save" for r in new)
            elif p.moment == "after_commit" and p.events_tail is not None:
                hit = any(e.get("event") == "checkpoint_committed" for e in p.events_tail.read_new())
        timed_out = time.monotonic() >= p.deadline
        if hit or timed_out:
            # a targeted kill whose moment did not come within 3 s is carried out anyway, as a random one
            self.c.signal_worker(p.worker, p.sig, moment=p.moment if hit else "random", wanted=p.moment)
            self.kills += 1
            if p.holder:
                self.holder_signals.add(p.sig)
            self.pending = None

    def _partition(self) -> None:
        cands = [w for w in self._holders() if w.proxy is not None and w.proxy.mode == "open"]
        if not cands:
            return
        w = self.rng.choice(cands)
        mode = self.rng.choice(["blackhole", "reset"])
        length = self.rng.uniform(*self.s.partition_s)
        assert w.proxy is not None
        w.proxy.cut(mode)  # type: ignore[arg-type]
        self.partitions.append((w, time.monotonic() + length))
        self.c.note("partition", worker_id=w.worker_id, mode=mode, seconds=round(length, 2))

    def _stall(self, kind: str) -> bool:
        """Pause a worker holding a run (SIGSTOP), or stall its output, for a while."""
        cands = [w for w in self._holders() if kind == "pause" or w.pump is not None]
        if not cands:
            return False
        w = self.rng.choice(sorted(cands, key=lambda h: h.worker_id))
        length = self.rng.uniform(*(self.s.pause_s if kind == "pause" else self.s.block_output_s))
        if kind == "pause":
            self.c.pause_worker(w, length)
        else:
            self.c.block_output(w, length)
        self.stalled.append((w, time.monotonic() + length))
        return True

    def _poison(self) -> bool:
        taken = set(self.c.poisoned) | set(self.c.commit_fail_runs)
        cands = sorted(r for r in self._open_runs() if r not in taken)
        if cands:
            self.c.poison(self.rng.choice(cands))
        return bool(cands)

    def _act(self, action: str, now: float) -> None:
        done = True
        if action == "kill":
            self._arm_kill()
        elif action == "commander_restart":
            outage = self.c.restart_commander()
            self.log(f"commander restarted (outage {outage:.2f}s)")
        elif action == "partition":
            self._partition()
        elif action in ("pause", "block_output"):
            done = self._stall(action)
        elif action == "poison":
            done = self._poison()
        else:
            self._commander_fault(action, now)
        if done:
            self.done.add(action)

    def _heal_due(self, force: bool = False) -> None:
        now = time.monotonic()
        for w, at in list(self.stalled):
            if force or now >= at:
                self.c.resume_worker(w)
                self.stalled.remove((w, at))
        for w, at in list(self.partitions):
            if force or now >= at:
                if w.proxy is not None:
                    w.proxy.heal()
                self.c.note("heal", worker_id=w.worker_id)
                self.partitions.remove((w, at))

    def _commander_fault(self, action: str, now: float) -> None:
        """One of relay_testkit.chaos_faults: a duplicate worker id, a lost state, a slow-client burst."""
        if action == "duplicate_id":
            holders = self._holders()
            if holders:
                chaos_faults.spawn_duplicate(
                    self.c, self.rng.choice(sorted(holders, key=lambda h: h.worker_id))
                )
        elif action == "state_wipe":
            if self.backup is None or self.rng.random() < 0.5:  # the next restore puts back an older copy
                self.backup = chaos_faults.backup_state(self.c)
                mode = "delete"
            else:
                mode = "restore"
            outage = chaos_faults.wipe_state(self.c, mode, self.backup)
            self.backup = None if mode == "restore" else self.backup
            self.log(f"commander state {mode}d (outage {outage:.2f}s)")
        elif action == "slow_clients" and self.flood is None:
            seconds = self.rng.uniform(*self.s.slow_clients_s)
            self.flood = chaos_faults.SlowFlood(self.c, self.s.slow_clients, seconds).start(now)

    def _end_flood(self, force: bool = False) -> None:
        if self.flood is not None and (force or time.monotonic() >= self.flood.until):
            stats = self.flood.stop()
            self.log(f"slow clients gone: {stats}")
            self.flood = None

    # -- phases ---------------------------------------------------------------------------------------
    def run(self) -> ChaosArtifacts:
        s = self.s
        for i in range(s.commit_fail_runs):  # submitted with their spec: every worker trains them alike
            self.c.submit_commit_fail_run(f"commit-fail-{i:03d}")
            self.runs.append(f"commit-fail-{i:03d}")
        # the first wave names every run, so that each exists before pool workers look for one
        for i in range(s.workers):
            self.c.spawn_worker(self.runs[i % len(self.runs)], volume=self.c.volumes[i])
        chaos_end = time.monotonic() + s.chaos_s
        next_action = time.monotonic() + self.rng.uniform(*s.action_every_s)
        last_refresh = 0.0
        while time.monotonic() < chaos_end:
            now = time.monotonic()
            if now - last_refresh > 0.3:
                self._refresh()
                last_refresh = now
            self._heal_due()
            self._end_flood()
            self._fire_pending()
            if self.pending is None and now >= next_action:
                self._act(self._pick_action(), now)
                next_action = now + self.rng.uniform(*s.action_every_s)
            self._fill(allow_pool=True)
            time.sleep(0.01)
        if self.pending is not None:  # a kill already chosen is carried out
            self.pending.deadline = 0.0
            self._fire_pending()
        self._heal_due(force=True)
        self._end_flood(force=True)
        self.c.note("chaos_end", kills=self.kills)
        self.log(f"chaos phase over: {self.kills} kills; draining")
        drain_end = time.monotonic() + s.drain_timeout_s
        if self.adding_runs:  # no new runs while draining; forget those no worker created yet
            self.adding_runs = False
            statuses = self.c.run_statuses() or {}
            self.runs = [r for r in self.runs if r in self.completed or r in statuses]
        while time.monotonic() < drain_end:
            self._refresh()
            if not self._open_runs():
                break
            self._fill(allow_pool=False)
            time.sleep(0.05)
        self.c.note("drain_end", open_runs=self._open_runs())
        self.c.stop_all_workers()
        return self.c.artifacts(self.runs)
