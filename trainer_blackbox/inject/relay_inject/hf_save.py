"""Where an instrumented Trainer's checkpoints go, and when they count as complete (README §3, §9).

The Trainer's own ``_save_checkpoint`` writes ``checkpoint-N`` into the hidden work directory
``RELAY_OUTPUT_DIR/.relay_partial``; once every callback's ``on_save`` has run and every rank's files are on
disk, rank 0 renames it to ``RELAY_OUTPUT_DIR/step_%08d`` and writes ``COMPLETE`` last (``publish``).

Async (the default, README §12): training pauses only while the Trainer's save runs with its large writes
replaced by host copies (relay_inject.async_save); the writes, fsync, the rename and COMPLETE follow in a
background thread.  Ranks then agree through marker files instead of a barrier (a collective from a
background thread would interleave with training's).  DeepSpeed and FSDP write their own sharded checkpoints
through their engines, ``push_to_hub`` uploads a checkpoint as soon as it is saved, and other accelerators
than CUDA have no copy path here: those save synchronously, said in one line.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import shutil
import time
from typing import Any

from transformers.trainer_callback import TrainerCallback, TrainerState

from relay_inject.async_save import AsyncCheckpointer, AsyncSaveError, DeferredMethod, Job
from relay_inject.checkpoint import PARTIAL_DIRNAME, step_dir, write_complete
from relay_inject.heartbeat import SAVING, TRAINING

__all__ = [
    "DEFERRED_METHODS",
    "PARTIAL_DIRNAME",
    "CheckpointSaving",
    "dist_world",
    "sync_reason",
    "trainer_state_snapshot",
    "world_zero",
]

MARKER_FMT = ".relay-written-rank%d"
MARKER_WAIT_S = 1800.0  # how long rank 0 waits for another rank's background write before giving up


def dist_world() -> Any | None:
    """torch.distributed when it is initialised with more than one rank, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def world_zero() -> bool:
    dist = dist_world()
    if dist is not None:
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def trainer_state_snapshot(state: TrainerState) -> TrainerState:
    """The TrainerState as it is now, for ``save_to_json`` in the writer thread: a shallow copy with its
    lists copied one level (``log_history`` only grows; the Trainer never changes an entry once logged) and
    its dicts deep-copied (callback states, trial parameters: small).  O(logged steps) pointer copies
    instead of the JSON encoding of every logged step in each pause."""
    snap = copy.copy(state)
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, list):
            setattr(snap, f.name, list(value))
        elif isinstance(value, dict):
            setattr(snap, f.name, copy.deepcopy(value))
    return snap


DEFERRED_METHODS = (DeferredMethod(TrainerState, "save_to_json", trainer_state_snapshot),)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} kB"


def sync_reason(trainer: Any, async_enabled: bool) -> str | None:
    """Why this Trainer's checkpoints are written synchronously, or None when they can be async."""
    if not async_enabled:
        return "RELAY_ASYNC_SAVE=0"
    if getattr(trainer, "is_deepspeed_enabled", False):
        return "DeepSpeed writes its own checkpoints through its engine"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP writes its own sharded checkpoints"
    args = trainer.args
    if getattr(args, "push_to_hub", False):
        return "push_to_hub uploads each checkpoint as soon as it is saved"
    device = getattr(args, "device", None)
    kind = getattr(device, "type", "cpu")
    if kind not in ("cpu", "cuda"):
        return f"no host-copy path for {kind} devices"
    return None


class CheckpointSaving:
    """The checkpoint side of one instrumented Trainer: redirect, save (sync or async), publish."""

    def __init__(self, trainer: Any, rt: Any, callback: Any) -> None:
        self.trainer = trainer
        self.rt = rt
        self.env = rt.env
        self.callback = callback
        self.partial = self.env.output_dir / PARTIAL_DIRNAME
        self._saved_args: tuple[Any, Any] | None = None
        self._t_save: float | None = None
        self.reason = sync_reason(trainer, self.env.async_save)
        self.saver: AsyncCheckpointer | None = None
        if self.reason is None:
            pin = getattr(trainer.args.device, "type", "cpu") == "cuda"
            self.saver = AsyncCheckpointer(
                pin=pin, save_hooks=rt.save_hooks, deferred_methods=DEFERRED_METHODS
            )

    def install(self) -> None:
        t = self.trainer
        if self.saver is not None:
            t.add_callback(_ReserveAfterFirstStep(self))
        t._save_checkpoint = self._wrap_save_checkpoint(t._save_checkpoint)
        handler = t.callback_handler
        handler.on_save = self._wrap_on_save(handler.on_save)
        if world_zero():
            shutil.rmtree(self.partial, ignore_errors=True)  # leftovers of a killed earlier attempt
            self.partial.mkdir(parents=True, exist_ok=True)
            how = (
                "async (training pauses for a host copy of the state; files, fsync and COMPLETE follow in "
                "the background; RELAY_ASYNC_SAVE=0 saves synchronously)"
                if self.saver is not None
                else f"synchronous ({self.reason})"
            )
            print(f"{self.rt.prog}: checkpoints: {how}", flush=True)

    # --- output directory ---------------------------------------------------------------------
    def _redirect(self) -> None:
        args = self.trainer.args
        if self._saved_args is None:
            self._saved_args = (args.output_dir, args.save_total_limit)
        args.output_dir, args.save_total_limit = str(self.partial), None

    def _restore(self) -> None:
        if self._saved_args is not None:
            args = self.trainer.args
            args.output_dir, args.save_total_limit = self._saved_args
            self._saved_args = None

    # --- the save -----------------------------------------------------------------------------
    def _wrap_save_checkpoint(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def _save_checkpoint(*a: Any, **kw: Any) -> Any:
            self._t_save = time.monotonic()
            self._redirect()  # restored once on_save has published the checkpoint
            self.rt.heartbeat.set(SAVING)  # a large model's save is minutes of silence
            try:
                if self.saver is None:
                    return orig(*a, **kw)
                if self.saver.in_flight is not None and world_zero():  # at most one in flight: wait for it
                    print(
                        f"{self.rt.prog}: waiting for the checkpoint of step {self.saver.in_flight} "
                        "(still being written) before saving the next",
                        flush=True,
                    )
                with self.saver.capture(self.partial, self.trainer.state.global_step):
                    return orig(*a, **kw)
            except BaseException:
                self._restore()
                raise

        return _save_checkpoint

    def _wrap_on_save(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def on_save(args: Any, state: Any, control: Any) -> Any:
            step = state.global_step
            try:
                control = orig(args, state, control)
                if self.saver is None or not self._submit(step):
                    self.publish(step)
                self.callback.last_saved = step
            except BaseException:
                if self.saver is not None:
                    self.saver.discard()
                raise
            finally:
                self._restore()
                self.rt.heartbeat.set(TRAINING)
            if self._t_save is not None:
                self.callback.save_pause_s = time.monotonic() - self._t_save
                self._t_save = None
            if self.callback._stop_requested(args):  # SIGTERM during a scheduled save: that save was it
                control.should_training_stop = True
            return control

        return on_save

    def _submit(self, step: int) -> bool:
        """Hand the captured save to the writer thread; False when no save was captured (an on_save
        without a ``_save_checkpoint`` before it: published as it is)."""
        assert self.saver is not None
        dist = dist_world()
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)
        job = self.saver.submit(lambda job: self._finish_async(job, rank, world))
        if job is None:
            return False
        if world_zero():
            b = self.saver.buffers
            if b.pin_error is not None:  # said once: copies now go to pageable memory (slower, still exact)
                print(f"{self.rt.prog}: warning: host memory not page-locked: {b.pin_error}", flush=True)
                b.pin_error = None
            new = f", {_size(b.allocated_bytes)} of it newly allocated" if b.allocated_bytes else ""
            kind = "page-locked" if b.pin else "pageable"
            sync = f"; saved synchronously: {', '.join(job.sync_files)}" if job.sync_files else ""
            print(
                f"{self.rt.prog}: checkpoint of step {step}: {_size(job.copy.copied_bytes)} copied to "
                f"host memory ({kind}, {_size(b.held_bytes)} held{new}); "
                f"{', '.join(job.deferred) or 'no files'} written in the background{sync}",
                flush=True,
            )
        return True

    def _finish_async(self, job: Job, rank: int, world: int) -> None:
        """The writer thread, after this rank's files are written: ranks > 0 leave a marker, rank 0 waits
        for every marker and publishes."""
        src = self.partial / f"checkpoint-{job.step}"
        if rank != 0:
            (src / (MARKER_FMT % rank)).touch()
            return
        deadline = time.monotonic() + MARKER_WAIT_S
        for other in range(1, world):
            marker = src / (MARKER_FMT % other)
            while not marker.exists():
                if time.monotonic() > deadline:
                    raise AsyncSaveError(f"rank {other} did not finish writing {src} in {MARKER_WAIT_S:.0f}s")
                time.sleep(0.02)
            marker.unlink()
        self.publish(job.step, barrier=False, written_s=job.written_s)

    def publish(self, step: int, *, barrier: bool = True, written_s: float | None = None) -> None:
        """Every rank has saved ``checkpoint-<step>``: rank 0 renames it to ``step_%08d`` + COMPLETE."""
        dist = dist_world() if barrier else None
        if dist is not None:
            dist.barrier()
        if not world_zero():
            return
        src = self.partial / f"checkpoint-{step}"
        if not src.is_dir():
            print(f"{self.rt.prog}: warning: no checkpoint at {src} after a save of step {step}", flush=True)
            return
        dst = step_dir(self.env.output_dir, step)
        if dst.exists():  # a partial directory left by a killed earlier attempt
            shutil.rmtree(dst)
        os.replace(src, dst)
        t0 = time.monotonic()
        write_complete(dst, step)
        size = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())
        how = f"written in the background in {written_s:.2f}s, " if written_s is not None else ""
        print(
            f"{self.rt.prog}: checkpoint of step {step} complete at {dst} "
            f"({size / 1e6:.1f} MB, {how}fsync {time.monotonic() - t0:.2f}s)",
            flush=True,
        )

    # --- the end ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Wait for the checkpoint being written (training ended, or stops on SIGTERM); raise its error."""
        if self.saver is None:
            return
        step = self.saver.in_flight
        if step is not None:
            self.rt.heartbeat.set(SAVING)
            if world_zero():
                print(f"{self.rt.prog}: waiting for the checkpoint of step {step} to be written", flush=True)
        self.saver.wait()


def expected_sizes(trainer: Any) -> list[int]:
    """The host buffers this rank's first checkpoint will take (relay_inject.host_copy): the model's
    weights as safetensors writes them (the trainable ones only when some are frozen: adapters) and the
    optimizer state's storages as torch.save writes them.  None on a rank that saves neither."""
    import torch

    if not getattr(trainer.args, "should_save", True):
        return []
    seen: set[tuple[str, int]] = set()
    sizes: list[int] = []

    def add(t: Any, whole_storage: bool) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type not in ("cpu", "cuda"):
            return
        key = (str(t.device), t.untyped_storage().data_ptr())
        if key not in seen:
            seen.add(key)
            sizes.append(t.untyped_storage().nbytes() if whole_storage else t.numel() * t.element_size())

    params = list(trainer.model.parameters())
    if all(p.requires_grad for p in params):
        for t in trainer.model.state_dict().values():
            add(t, whole_storage=False)
    else:
        for p in params:
            if p.requires_grad:
                add(p, whole_storage=False)
    optimizer = getattr(trainer, "optimizer", None)
    for state in getattr(optimizer, "state", {}).values():
        for t in state.values():
            add(t, whole_storage=True)
    return sizes


class _ReserveAfterFirstStep(TrainerCallback):
    """Once the optimizer state exists (the end of the first step), reserve the host buffers of the first
    checkpoint in the background: page-locking gigabytes takes seconds, which the first save would pause
    for."""

    def __init__(self, saving: CheckpointSaving) -> None:
        self.saving = saving
        self.done = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        saver = self.saving.saver
        if self.done or saver is None:
            return control
        self.done = True
        sizes = expected_sizes(self.saving.trainer)
        if sizes:
            saver.reserve(sizes)
            if world_zero():
                kind = "page-locked" if saver.buffers.pin else "pageable"
                print(
                    f"{self.saving.rt.prog}: reserving {_size(sum(sizes))} of {kind} host memory for "
                    "the copies of async checkpoints (one checkpoint's tensors, reused by every save)",
                    flush=True,
                )
        return control
