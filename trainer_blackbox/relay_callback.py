"""The transformers ``TrainerCallback`` that makes any HF/TRL Trainer follow the relay trainer contract.

It owns three things (README.md is the contract):

- **progress**: one JSON line per optimizer step (``step``, ``ts``, ``epoch``, loss, learning rate,
  tokens/s and whatever else the trainer logs, e.g. GRPO's ``reward`` and ``kl``);
- **SIGTERM**: the handler only sets a flag; at the end of the step in flight the callback asks the Trainer
  to save and stop (``control.should_save`` / ``should_training_stop``), so the checkpoint is the state
  after a whole optimizer step: exactly what resume continues from.  With several ranks the flag is
  all-reduced at every step end so that all ranks stop at the same step;
- **COMPLETE**: the Trainer is pointed at a hidden work directory (``RELAY_OUTPUT_DIR/.relay_partial``)
  and writes ``checkpoint-N`` there.  When every rank has saved (a barrier), rank 0 renames it to
  ``RELAY_OUTPUT_DIR/step_%08d`` and writes ``COMPLETE`` last.  The worker therefore never sees a
  checkpoint directory that some rank is still writing.

Import cost: transformers is imported at module import; only the built-in trainers import this module.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer_blackbox.checkpoint import step_dir, write_complete
from trainer_blackbox.progress import ProgressWriter
from trainer_blackbox.stop import StopSignal

__all__ = ["PARTIAL_DIRNAME", "RelayCallback", "StopSignal", "is_world_zero", "prepare_partial_dir"]

PARTIAL_DIRNAME = ".relay_partial"
# Test hook: after writing the progress line of this step, wait (up to 120 s) for SIGTERM before going on,
# so a test can deliver a real SIGTERM at an exact step.  Never set it in production.
PAUSE_ENV = "RELAY_TEST_PAUSE_AT_STEP"

# HF's cumulative speed summaries: noise in a per-step progress line.
_DROP_LOG_KEYS = {
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_tokens_per_second",
    "total_flos",
    "num_input_tokens_seen",
    "num_tokens",
    "step_time",
}


def is_world_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _dist_world() -> Any | None:
    """torch.distributed when it is initialised with more than one rank, else None."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class RelayCallback(TrainerCallback):
    """Progress lines, save-and-stop on SIGTERM, and the COMPLETE marker after every rank saved."""

    def __init__(self, *, output_dir: Path, progress: ProgressWriter, stop: StopSignal, prog: str) -> None:
        self.output_dir = output_dir
        self.partial_dir = output_dir / PARTIAL_DIRNAME
        self.progress = progress
        self.stop = stop
        self.prog = prog
        self.last_saved: int | None = None
        self.last_logged = -1
        self._t_prev = time.time()
        self._tokens_prev = 0
        pause = os.environ.get(PAUSE_ENV, "").strip()
        self.pause_at = int(pause) if pause.isdigit() else None

    # --- helpers -------------------------------------------------------------------------------
    def _stop_requested(self, args: Any) -> bool:
        dist = _dist_world()
        if dist is None:
            return self.stop.requested
        import torch

        flag = torch.tensor([1 if self.stop.requested else 0], dtype=torch.int32, device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _request_save_and_stop(self, state: Any, control: Any) -> None:
        if self.last_saved != state.global_step:
            control.should_save = True
        control.should_training_stop = True

    # --- TrainerCallback -----------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.stop.training = True
        self._t_prev = time.time()
        self._tokens_prev = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if state.global_step > 0:
            self.last_saved = state.global_step  # resumed: that checkpoint is committed already
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self._stop_requested(args):
            self._request_save_and_stop(state, control)
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        logs = logs or {}
        step = state.global_step
        if "loss" not in logs or step <= self.last_logged:
            return control
        self.last_logged = step
        now = time.time()
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        dt = now - self._t_prev
        tokens_per_s = (tokens - self._tokens_prev) / dt if tokens > self._tokens_prev and dt > 0 else None
        self._t_prev, self._tokens_prev = now, tokens
        metrics: dict[str, Any] = {}
        for key, value in logs.items():
            if key in _DROP_LOG_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metrics["data_epoch" if key == "epoch" else key] = value
        metrics["tokens_per_s"] = tokens_per_s
        metrics["tokens_seen"] = tokens or None
        if state.is_world_process_zero:
            self.progress.write(step, **metrics)
        if self.pause_at is not None and step == self.pause_at and _dist_world() is None:
            deadline = time.monotonic() + 120.0
            while not self.stop.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.stop.requested:
                self._request_save_and_stop(state, control)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Every rank has returned from _save_checkpoint; publish ``step_N`` with COMPLETE last."""
        step = state.global_step
        dist = _dist_world()
        if dist is not None:
            dist.barrier()
        if state.is_world_process_zero:
            src = self.partial_dir / f"checkpoint-{step}"
            dst = step_dir(self.output_dir, step)
            if dst.exists():  # a partial directory left by a killed earlier attempt
                shutil.rmtree(dst)
            os.replace(src, dst)
            t0 = time.monotonic()
            write_complete(dst, step)
            size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
            print(
                f"{self.prog}: checkpoint of step {step} complete at {dst} "
                f"({size / 1e6:.1f} MB, fsync {time.monotonic() - t0:.2f}s)",
                flush=True,
            )
        self.last_saved = step
        if self._stop_requested(args):  # SIGTERM during a scheduled save: that save was the one to make
            control.should_training_stop = True
        return control


def prepare_partial_dir(output_dir: Path) -> Path:
    """Empty ``RELAY_OUTPUT_DIR/.relay_partial`` (leftovers of a killed run); rank 0 only."""
    partial = output_dir / PARTIAL_DIRNAME
    if is_world_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
    return partial
