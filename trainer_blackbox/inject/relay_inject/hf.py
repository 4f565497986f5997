"""The relay contract for any ``transformers.Trainer``, applied from outside (README §9).

Imported by the post-import hook once the trainer has imported ``transformers.trainer``, so transformers
and torch are already there.  ``patch_trainer_class`` wraps ``Trainer.__init__`` once; every Trainer built
afterwards (any subclass) is instrumented on its own instance:

- **checkpoints**: ``_save_checkpoint`` runs with ``args.output_dir`` pointed at the hidden work directory
  ``RELAY_OUTPUT_DIR/.relay_partial`` and no ``save_total_limit``; when every callback's ``on_save`` has
  run (LLaMA-Factory saves the tokenizer there) and every rank has saved (a barrier), rank 0 renames
  ``checkpoint-N`` to ``RELAY_OUTPUT_DIR/step_%08d`` and writes ``COMPLETE`` last.  The user's own
  output directory never holds a checkpoint, so nothing of theirs rotates, resumes from or fights over one;
- **resume**: ``train()`` resumes from RELAY_RESUME_FROM when it is set and from nothing otherwise,
  whatever ``resume_from_checkpoint`` the user's code or config passed;
- **SIGTERM**: at the end of the step in flight the Trainer saves that step and stops; ``train()`` then
  ends the process with exit code 0 (the user's script does not go on to its final export);
- **progress**: a line per optimizer step (a logged step's line carries its logs: loss, learning rate,
  grad norm...; tokens/s where the Trainer counts tokens);
- **final export**: with RELAY_FINAL_DIR set, ``args.output_dir`` is that directory, so what the script
  writes after training (``save_model``: weights or adapter, tokenizer, config; ``save_state``, metrics,
  model card) lands there; a ``save_model(path)`` to a directory of the user's own is copied there too.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers.trainer_callback import TrainerCallback

from relay_inject.checkpoint import PARTIAL_DIRNAME, step_dir, write_complete
from relay_inject.heartbeat import EXPORTING, SAVING, TRAINING
from relay_inject.stop import exit_process

__all__ = ["PARTIAL_DIRNAME", "RelayCallback", "patch_trainer_class"]

EXIT_USER_ERROR = 2
# HF's cumulative summaries and counters: noise in a per-step progress line.
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


def _dist_world() -> Any | None:
    """torch.distributed when it is initialised with more than one rank, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _world_zero() -> bool:
    dist = _dist_world()
    if dist is not None:
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


class RelayCallback(TrainerCallback):
    """Progress lines and save-and-stop on SIGTERM; one per instrumented Trainer."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.progress = rt.progress
        self.last_saved: int | None = None
        self.pending: int | None = None  # a finished step whose line waits for its on_log
        self._t_prev = time.time()
        self._tokens_prev: int | None = None

    # --- the end of a step ---------------------------------------------------------------------
    def _tokens(self, state: Any, logs: dict[str, Any] | None) -> int | None:
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        if seen:
            return int(seen)
        if logs and isinstance(logs.get("num_tokens"), (int, float)):  # TRL's trainers count them
            return int(logs["num_tokens"])
        return None

    def _write_line(self, state: Any, logs: dict[str, Any] | None) -> None:
        now = time.time()
        metrics: dict[str, Any] = {"data_epoch": getattr(state, "epoch", None)}
        for key, value in (logs or {}).items():
            if key in _DROP_LOG_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metrics["data_epoch" if key == "epoch" else key] = value
        tokens = self._tokens(state, logs)
        if tokens is not None:
            if self._tokens_prev is not None and tokens > self._tokens_prev and now > self._t_prev:
                metrics["tokens_per_s"] = (tokens - self._tokens_prev) / (now - self._t_prev)
            metrics["tokens_seen"] = tokens
            self._tokens_prev, self._t_prev = tokens, now
        self.progress.write(state.global_step, **metrics)

    def _finish_step(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None) -> None:
        step, self.pending = state.global_step, None
        self.rt.heartbeat.step = step
        self._write_line(state, logs)
        for hook in self.rt.step_hooks:
            hook(step)
        if self._stop_requested(args):
            if self.last_saved != step:
                control.should_save = True
            control.should_training_stop = True

    def _stop_requested(self, args: Any) -> bool:
        """The stop flag, all-reduced (MAX) when there are several ranks, so all stop at the same step."""
        dist = _dist_world()
        if dist is None:
            return self.rt.stop.requested
        import torch

        flag = torch.tensor([1 if self.rt.stop.requested else 0], dtype=torch.int32, device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # --- TrainerCallback -----------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.rt.stop.training = True
        self.rt.heartbeat.set(TRAINING, state.global_step)
        self._t_prev = time.time()
        self._tokens_prev = self._tokens(state, None)
        if state.global_step > 0:
            self.last_saved = state.global_step  # resumed: that checkpoint is committed already
        return control

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.pending is not None:  # a logged step whose log never came
            self._finish_step(args, state, control, None)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.pending = state.global_step
        if not control.should_log:  # else the line waits for on_log, to carry the step's logs
            self._finish_step(args, state, control, None)
        return control

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        if self.pending is not None:
            self._finish_step(args, state, control, logs)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.pending is not None:
            self.pending = None
            self._write_line(state, None)
        return control


class _Instrumented:
    """What one Trainer instance gets: its callback, the checkpoint redirect and the publish step."""

    def __init__(self, trainer: Any, rt: Any) -> None:
        self.trainer = trainer
        self.rt = rt
        self.env = rt.env
        self.partial = self.env.output_dir / PARTIAL_DIRNAME
        self.callback = RelayCallback(rt)
        self._saved_args: tuple[Any, Any] | None = None

    def install(self) -> None:
        t = self.trainer
        args = t.args
        if getattr(args, "save_only_model", False):
            print(
                f"{self.rt.prog}: save_only_model ignored: a relay checkpoint must hold what resume needs",
                flush=True,
            )
            args.save_only_model = False
        if self.env.final_dir is not None:
            args.output_dir = str(self.env.final_dir)
        if _world_zero():
            shutil.rmtree(self.partial, ignore_errors=True)  # leftovers of a killed earlier attempt
            self.partial.mkdir(parents=True, exist_ok=True)
        t.add_callback(self.callback)
        t._save_checkpoint = self._wrap_save_checkpoint(t._save_checkpoint)
        t.save_model = self._wrap_save_model(t.save_model)
        t.train = self._wrap_train(t.train)
        handler = t.callback_handler
        handler.on_save = self._wrap_on_save(handler.on_save)

    # --- checkpoints ---------------------------------------------------------------------------
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

    def _wrap_save_checkpoint(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def _save_checkpoint(*a: Any, **kw: Any) -> Any:
            self._redirect()  # restored once on_save has published the checkpoint
            self.rt.heartbeat.set(SAVING)  # a large model's save is minutes of silence
            try:
                return orig(*a, **kw)
            except BaseException:
                self._restore()
                raise

        return _save_checkpoint

    def _wrap_on_save(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def on_save(args: Any, state: Any, control: Any) -> Any:
            try:
                control = orig(args, state, control)
                self.publish(state.global_step)
            finally:
                self._restore()
                self.rt.heartbeat.set(TRAINING)
            if self.callback._stop_requested(args):  # SIGTERM during a scheduled save: that save was it
                control.should_training_stop = True
            return control

        return on_save

    def publish(self, step: int) -> None:
        """Every rank has saved ``checkpoint-<step>``: rank 0 renames it to ``step_%08d`` + COMPLETE."""
        dist = _dist_world()
        if dist is not None:
            dist.barrier()
        self.callback.last_saved = step
        if not _world_zero():
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
        print(
            f"{self.rt.prog}: checkpoint of step {step} complete at {dst} "
            f"({size / 1e6:.1f} MB, fsync {time.monotonic() - t0:.2f}s)",
            flush=True,
        )

    # --- final export --------------------------------------------------------------------------
    def _wrap_save_model(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def save_model(output_dir: str | None = None, _internal_call: bool = False, **kw: Any) -> Any:
            result = orig(output_dir, _internal_call, **kw)
            final = self.env.final_dir
            if not _internal_call and final is not None and output_dir is not None and _world_zero():
                src = Path(output_dir).resolve()
                if src != final.resolve() and src.is_dir():
                    shutil.copytree(src, final, dirs_exist_ok=True)
                    print(f"{self.rt.prog}: final export {src} copied to {final}", flush=True)
            return result

        return save_model

    # --- train ---------------------------------------------------------------------------------
    def _wrap_train(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def train(*a: Any, **kw: Any) -> Any:
            if a:  # resume_from_checkpoint is the first parameter of Trainer.train
                kw["resume_from_checkpoint"], a = a[0], a[1:]
            asked = kw.get("resume_from_checkpoint")
            resume = self.env.resume_from
            if resume is not None and not (resume / "trainer_state.json").is_file():
                print(
                    f"{self.rt.prog}: error: RELAY_RESUME_FROM={resume} holds no trainer_state.json "
                    "(not a checkpoint of a transformers Trainer)",
                    flush=True,
                )
                exit_process(EXIT_USER_ERROR)
            if asked not in (None, False) and (resume is None or str(asked) != str(resume)):
                print(
                    f"{self.rt.prog}: resume_from_checkpoint={asked!r} ignored: the relay decides", flush=True
                )
            kw["resume_from_checkpoint"] = str(resume) if resume is not None else None
            result = orig(*a, **kw)
            self.rt.heartbeat.set(EXPORTING, self.trainer.state.global_step)  # what the script does next
            if self.rt.stop.requested:
                step = self.trainer.state.global_step
                if _world_zero():
                    print(f"{self.rt.prog}: exit 0 at step {step} (SIGTERM; checkpoint saved)", flush=True)
                exit_process(0)
            return result

        return train


def _trainer_args(a: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    """The TrainingArguments passed to ``Trainer.__init__(self, model, args, ...)``, or None."""
    if "args" in kw:
        return kw["args"]
    return a[1] if len(a) > 1 else None


def patch_trainer_class(trainer_cls: type) -> None:
    """Wrap ``Trainer.__init__`` (once): the output directory is redirected before the Trainer sees it,
    and each new instance is instrumented after it is built."""
    if getattr(trainer_cls, "_relay_patched", False):
        return
    orig_init = trainer_cls.__init__

    @functools.wraps(orig_init)
    def __init__(self: Any, *a: Any, **kw: Any) -> None:
        from relay_inject import runtime

        rt = runtime()
        args = _trainer_args(a, kw)
        if rt is not None and args is not None and rt.env.final_dir is not None:
            args.output_dir = str(rt.env.final_dir)
        orig_init(self, *a, **kw)
        if rt is not None and not getattr(self, "_relay_instrumented", False):
            self._relay_instrumented = True
            _Instrumented(self, rt).install()

    trainer_cls.__init__ = __init__
    trainer_cls._relay_patched = True
