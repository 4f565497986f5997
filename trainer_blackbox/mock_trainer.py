"""The mock trainer: deterministic fake steps and checkpoints, with fault injection, for worker and chaos tests.

Stdlib only, so it starts in a few tens of milliseconds and tests of the worker never wait for torch.
It follows the same contract as the real trainers (README.md): progress lines, ``step_<N>`` checkpoint
directories with ``COMPLETE`` written last, resume from ``RELAY_RESUME_FROM``, save-and-exit-0 on SIGTERM.

Its own log (``RELAY_MOCK_LOG``, default ``mock_steps.jsonl`` next to the progress file) records every
start, step, save, fault and exit with pid, epoch and run id, so a test can prove which steps ran under
which lease epoch.  Faults (``crash_at_step``, ``hang_at_step``) count their earlier occurrences in that
log, which is how ``crash_times: 1`` means "crash once, then train through on the restart".
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainer_blackbox.checkpoint import step_dir, write_complete  # noqa: E402
from trainer_blackbox.env import EnvError, RelayEnv  # noqa: E402
from trainer_blackbox.progress import ProgressWriter  # noqa: E402
from trainer_blackbox.save_request import SaveRequests  # noqa: E402

EXIT_CONFIG = 2
EXIT_CRASH = 3
STATE_FILE = "mock_state.json"
WEIGHTS_FILE = "weights.bin"
FROZEN_FILE = "frozen.bin"

# name -> (accepted types, default, description).  The one table of mock keys: MockConfig below and the
# pydantic MockTrainConfig in train_config.py are both built from it.
MOCK_KEYS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "max_steps": ((int,), 100, "Steps to run; the mock exits 0 after saving the checkpoint of the last one."),
    "save_steps": ((int,), 10, "Save a checkpoint every N steps (0: only at the end and on SIGTERM)."),
    "step_seconds": ((int, float), 0.1, "Wall time of one fake step."),
    "crash_at_step": (
        (int, type(None)),
        None,
        f"Exit {EXIT_CRASH} while running this step (it never completes).",
    ),
    "crash_times": (
        (int, type(None)),
        None,
        "How many times crash_at_step fires, counted in the mock log across restarts (null: every time).",
    ),
    "hang_at_step": (
        (int, type(None)),
        None,
        "Stop while running this step: no more progress lines, SIGTERM ignored, sleep until SIGKILL.",
    ),
    "hang_times": ((int, type(None)), None, "How many times hang_at_step fires (null: every time)."),
    "slow_checkpoint_s": (
        (int, float),
        0.0,
        "Sleep between writing a checkpoint's files and its COMPLETE marker.",
    ),
    "ignore_sigterm": (
        (bool,),
        False,
        "Log SIGTERM and keep training (the worker must SIGKILL after its grace).",
    ),
    "checkpoint_bytes": ((int,), 1024, "Size of the fake weights file in each checkpoint."),
    "frozen_bytes": (
        (int,),
        0,
        "Size of frozen.bin in each checkpoint: the same bytes at every step (a frozen base model), so "
        "consecutive checkpoints share it. 0: no such file.",
    ),
    "save_requests": (
        (bool,),
        True,
        "Honour the worker's save requests (RELAY_SAVE_REQUEST_FILE): save at the next step end. "
        "false: ignore them, like a trainer that predates them.",
    ),
    "symlink_in_checkpoint": (
        (bool,),
        False,
        "Put a symbolic link in every checkpoint: the worker refuses to commit any (a run whose commits all fail).",
    ),
}


class MockConfigError(ValueError):
    """A bad ``train:`` key for the mock; str() is one line naming the key."""


@dataclass(frozen=True)
class MockConfig:
    max_steps: int = 100
    save_steps: int = 10
    step_seconds: float = 0.1
    crash_at_step: int | None = None
    crash_times: int | None = None
    hang_at_step: int | None = None
    hang_times: int | None = None
    slow_checkpoint_s: float = 0.0
    ignore_sigterm: bool = False
    checkpoint_bytes: int = 1024
    frozen_bytes: int = 0
    save_requests: bool = True
    symlink_in_checkpoint: bool = False


assert {f.name for f in fields(MockConfig)} == set(MOCK_KEYS), "MockConfig and MOCK_KEYS disagree"


def parse_mock_config(data: dict[str, Any]) -> MockConfig:
    """Validate a ``train:`` block for the mock: unknown keys, wrong types and negative values are errors."""
    if not isinstance(data, dict):
        raise MockConfigError(f"train: must be a mapping (got {type(data).__name__})")
    for key in data:
        if key not in MOCK_KEYS:
            raise MockConfigError(
                f"train.{key}: unknown key for the mock trainer (known: {', '.join(MOCK_KEYS)})"
            )
    values: dict[str, Any] = {}
    for key, (types, default, _doc) in MOCK_KEYS.items():
        value = data.get(key, default)
        is_bool = isinstance(value, bool)
        if (is_bool and bool not in types) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise MockConfigError(f"train.{key}: must be {names} (got {value!r})")
        if value is not None and not is_bool and value < 0:
            raise MockConfigError(f"train.{key}: must be >= 0 (got {value!r})")
        values[key] = value
    for key in ("crash_at_step", "hang_at_step"):
        if values[key] is not None and values[key] < 1:
            raise MockConfigError(f"train.{key}: steps count from 1 (got {values[key]!r})")
    return MockConfig(**values)


def loss_at(step: int) -> float:
    """The deterministic fake loss of ``step``: a falling curve with a small wiggle."""
    return 0.5 + 2.0 * math.exp(-step / 40.0) + 0.05 * math.sin(step)


class MockLog:
    """Append-only JSON lines recording what this and earlier mock processes did."""

    def __init__(self, path: Path, env: RelayEnv) -> None:
        self.path = path
        self.env = env
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process

    def record(self, event: str, **fields_: Any) -> None:
        line = {
            "event": event,
            "pid": os.getpid(),
            "epoch": self.env.epoch,
            "run_id": self.env.run_id,
            "ts": time.time(),
            **fields_,
        }
        self._fh.write(json.dumps(line) + "\n")
        self._fh.flush()

    def count(self, event: str, step: int) -> int:
        """How often ``event`` at ``step`` was recorded by any run of this log (this run included)."""
        n = 0
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0
        for raw in lines:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                continue
            if obj.get("event") == event and obj.get("step") == step and obj.get("run_id") == self.env.run_id:
                n += 1
        return n


def mock_log_path(env: RelayEnv, environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """RELAY_MOCK_LOG, else ``mock_steps.jsonl`` beside the progress file, else in the output dir's parent."""
    explicit = environ.get("RELAY_MOCK_LOG", "").strip()
    if explicit:
        return Path(explicit)
    base = env.progress_file.parent if env.progress_file is not None else env.output_dir.parent
    return base / "mock_steps.jsonl"


def _fake_weights(step: int, size: int) -> bytes:
    block = hashlib.sha256(f"relay-mock-{step}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


class MockTrainer:
    def __init__(self, env: RelayEnv, cfg: MockConfig, log: MockLog) -> None:
        self.env = env
        self.cfg = cfg
        self.log = log
        self.progress = ProgressWriter(env.progress_file, env.epoch)
        self.stop_requested = False
        self.hanging = False
        self.step = 0
        self.last_saved: int | None = None
        self.requests = SaveRequests.from_environ() if cfg.save_requests else SaveRequests(None)

    # --- signals -------------------------------------------------------------------------------
    def _on_sigterm(self, signum: int, _frame: object) -> None:
        if self.hanging or self.cfg.ignore_sigterm:
            self.log.record("sigterm_ignored", step=self.step)
            return
        if not self.stop_requested:
            self.log.record("sigterm", step=self.step)
        self.stop_requested = True

    def _sleep(self, seconds: float, *, interruptible: bool) -> bool:
        """Sleep ``seconds``; return False when interrupted by a stop request."""
        end = time.monotonic() + seconds
        while True:
            if interruptible and self.stop_requested:
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.02))

    # --- checkpoints ---------------------------------------------------------------------------
    def resume_step(self) -> int:
        if self.env.resume_from is None:
            return 0
        state_path = self.env.resume_from / STATE_FILE
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
            return int(state["step"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EnvError(f"RELAY_RESUME_FROM has no readable {STATE_FILE} ({exc})") from None

    def save(self, step: int, reason: str = "scheduled") -> None:
        d = step_dir(self.env.output_dir, step)
        if d.exists():  # a partial directory of a killed earlier attempt at the same step
            shutil.rmtree(d)
        d.mkdir(parents=True)
        state = {"step": step, "loss": loss_at(step), "run_id": self.env.run_id, "epoch": self.env.epoch}
        (d / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        (d / WEIGHTS_FILE).write_bytes(_fake_weights(step, self.cfg.checkpoint_bytes))
        if self.cfg.frozen_bytes:
            (d / FROZEN_FILE).write_bytes(_fake_weights(-1, self.cfg.frozen_bytes))
        if self.cfg.symlink_in_checkpoint:
            (d / "weights-link.bin").symlink_to(WEIGHTS_FILE)
        if self.cfg.slow_checkpoint_s > 0:
            self.log.record("save_slow", step=step, seconds=self.cfg.slow_checkpoint_s)
            self._sleep(self.cfg.slow_checkpoint_s, interruptible=False)
        write_complete(d, step)
        self.last_saved = step
        self.log.record("save", step=step, path=str(d), reason=reason)
        print(f"mock_trainer: saved checkpoint of step {step} to {d}", flush=True)

    # --- faults --------------------------------------------------------------------------------
    def _fault_fires(self, event: str, at: int | None, times: int | None, step: int) -> bool:
        if at is None or at != step:
            return False
        return times is None or self.log.count(event, step) < times

    def _hang(self, step: int) -> None:
        self.hanging = True
        self.log.record("hang", step=step)
        print(f"mock_trainer: injected hang at step {step}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)

    # --- main loop -----------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        cfg = self.cfg
        self.step = self.resume_step()
        if self.env.resume_from is not None:
            self.last_saved = self.step  # that checkpoint is committed already
        self.log.record("start", step=self.step, resume_from=str(self.env.resume_from or ""))
        print(
            f"mock_trainer: start at step {self.step} (epoch {self.env.epoch}, pid {os.getpid()})", flush=True
        )
        while self.step < cfg.max_steps and not self.stop_requested:
            nxt = self.step + 1
            if self._fault_fires("crash", cfg.crash_at_step, cfg.crash_times, nxt):
                self.log.record("crash", step=nxt)
                print(f"mock_trainer: injected crash at step {nxt}", file=sys.stderr, flush=True)
                return EXIT_CRASH
            if self._fault_fires("hang", cfg.hang_at_step, cfg.hang_times, nxt):
                self._hang(nxt)
            if not self._sleep(cfg.step_seconds, interruptible=True):
                break  # SIGTERM mid-step: the partial step does not count
            self.step = nxt
            loss = loss_at(nxt)
            lr = 1e-4 * (1.0 - (nxt - 1) / max(cfg.max_steps, 1))
            tps = 1000.0 / cfg.step_seconds if cfg.step_seconds > 0 else None
            self.progress.write(nxt, loss=loss, learning_rate=lr, tokens_per_s=tps)
            self.log.record("step", step=nxt, loss=loss)
            if cfg.save_steps and nxt % cfg.save_steps == 0:
                self.save(nxt)
            if self.requests.pending() and self.last_saved != nxt:
                self.save(nxt, reason="request")
        if self.step > 0 and self.last_saved != self.step:
            self.save(self.step)  # the final step, or the current one on SIGTERM
        reason = "sigterm" if self.stop_requested else "done"
        self.log.record("exit", step=self.step, reason=reason)
        print(f"mock_trainer: exit 0 at step {self.step} ({reason})", flush=True)
        self.progress.close()
        return 0


def load_train_block(env: RelayEnv) -> dict[str, Any]:
    """The JSON ``train:`` block from RELAY_TRAIN_CONFIG ({} when unset)."""
    if env.train_config is None:
        return {}
    try:
        data = json.loads(env.train_config.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MockConfigError(f"RELAY_TRAIN_CONFIG cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise MockConfigError(f"RELAY_TRAIN_CONFIG is not JSON: {exc}") from None
    return data if data is not None else {}


def main() -> int:
    try:
        env = RelayEnv.from_environ()
        cfg = parse_mock_config(load_train_block(env))
        trainer = MockTrainer(env, cfg, MockLog(mock_log_path(env), env))
        return trainer.run()
    except (EnvError, MockConfigError) as exc:
        print(f"mock_trainer: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
