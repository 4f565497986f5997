"""The relay contract for any ``transformers.Trainer``, applied from outside (README §9).

Imported by the post-import hook once the trainer has imported ``transformers.trainer``, so transformers
and torch are already there.  ``patch_trainer_class`` wraps ``Trainer.__init__`` once; every Trainer built
afterwards (any subclass) is instrumented on its own instance:

- **checkpoints** (relay_inject.hf_save): ``_save_checkpoint`` runs with ``args.output_dir`` pointed at the
  hidden work directory ``RELAY_OUTPUT_DIR/.relay_partial`` and no ``save_total_limit``; when every
  callback's ``on_save`` has run (LLaMA-Factory saves the tokenizer there) and every rank's files are on
  disk, rank 0 renames ``checkpoint-N`` to ``RELAY_OUTPUT_DIR/step_%08d`` and writes ``COMPLETE`` last.
  By default the large files are written in the background from a host copy (relay_inject.async_save), so
  training pauses only for that copy.  The user's own output directory never holds a checkpoint, so
  nothing of theirs rotates, resumes from or fights over one;
- **resume**: ``train()`` resumes from RELAY_RESUME_FROM when it is set and from nothing otherwise,
  whatever ``resume_from_checkpoint`` the user's code or config passed;
- **SIGTERM**: at the end of the step in flight the Trainer saves that step (after the save in flight, if
  any, is written) and stops; ``train()`` then ends the process with exit code 0 once the checkpoint is on
  disk (the user's script does not go on to its final export);
- **save requests** (RELAY_SAVE_REQUEST_FILE, relay_inject.save_request): a new request from the worker
  saves the step just completed, decided by every rank together, like the stop flag;
- **progress**: a line per optimizer step (a logged step's line carries its logs: loss, learning rate,
  grad norm...; tokens/s where the Trainer counts tokens);
- **final export**: with RELAY_FINAL_DIR set, ``args.output_dir`` is that directory, so what the script
  writes after training (``save_model``: weights or adapter, tokenizer, config; ``save_state``, metrics,
  model card) lands there; a ``save_model(path)`` to a directory of the user's own is copied there too.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import time
from pathlib import Path
from typing import Any

from transformers.trainer_callback import TrainerCallback

from relay_inject.heartbeat import EXPORTING, TRAINING
from relay_inject.hf_save import PARTIAL_DIRNAME, CheckpointSaving, dist_world, world_zero
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


class RelayCallback(TrainerCallback):
    """Progress lines, save-and-stop on SIGTERM and the worker's save requests; one per instrumented
    Trainer."""

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.progress = rt.progress
        self.last_saved: int | None = None  # the newest step saved (or being written), or resumed from
        self.save_pause_s: float | None = None  # the last save's training pause, for the next line
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
        metrics["save_pause_s"], self.save_pause_s = self.save_pause_s, None
        self.progress.write(state.global_step, **metrics)

    def _finish_step(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None) -> None:
        step, self.pending = state.global_step, None
        self.rt.heartbeat.step = step
        self._write_line(state, logs)
        for hook in self.rt.step_hooks:
            hook(step)
        stop, asked = self._flags(args, self.rt.save_requests.pending())
        if (stop or asked) and self.last_saved != step:
            control.should_save = True
            if asked and not stop and world_zero():
                print(f"{self.rt.prog}: saving step {step}: the worker asked for a checkpoint", flush=True)
        if stop:
            control.should_training_stop = True

    def _stop_requested(self, args: Any) -> bool:
        """The stop flag, agreed by every rank (see ``_flags``)."""
        return self._flags(args, False)[0]

    def _flags(self, args: Any, save_request: bool) -> tuple[bool, bool]:
        """(stop, save request), all-reduced (MAX) when there are several ranks, so all stop or save at the
        same step."""
        dist = dist_world()
        if dist is None:
            return self.rt.stop.requested, save_request
        import torch

        flags = torch.tensor(
            [int(self.rt.stop.requested), int(save_request)], dtype=torch.int32, device=args.device
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, asked = flags.tolist()
        return bool(stop), bool(asked)

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
    """What one Trainer instance gets: its callback, its checkpoint saving and the train/export wrappers."""

    def __init__(self, trainer: Any, rt: Any) -> None:
        self.trainer = trainer
        self.rt = rt
        self.env = rt.env
        self.callback = RelayCallback(rt)
        self.saving = CheckpointSaving(trainer, rt, self.callback)

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
        t.add_callback(self.callback)
        self.saving.install()
        t.save_model = self._wrap_save_model(t.save_model)
        t.train = self._wrap_train(t.train)
        atexit.register(self._flush_quietly)  # a script that ends without returning from train()

    # --- final export --------------------------------------------------------------------------
    def _wrap_save_model(self, orig: Any) -> Any:
        @functools.wraps(orig)
        def save_model(output_dir: str | None = None, _internal_call: bool = False, **kw: Any) -> Any:
            result = orig(output_dir, _internal_call, **kw)
            final = self.env.final_dir
            if not _internal_call and final is not None and output_dir is not None and world_zero():
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
            try:
                result = orig(*a, **kw)
            except BaseException:
                self._flush_quietly()  # the checkpoint being written is a complete step: finish it
                raise
            self.saving.flush()  # the last checkpoint (on SIGTERM: of the step stopped at) is on disk
            self.rt.heartbeat.set(EXPORTING, self.trainer.state.global_step)  # what the script does next
            if self.rt.stop.requested:
                step = self.trainer.state.global_step
                if world_zero():
                    print(f"{self.rt.prog}: exit 0 at step {step} (SIGTERM; checkpoint saved)", flush=True)
                exit_process(0)
            return result

        return train

    def _flush_quietly(self) -> None:
        try:
            self.saving.flush()
        except Exception as exc:  # noqa: BLE001 - already failing or exiting: say it, do not mask the cause
            print(f"{self.rt.prog}: error: {exc}", flush=True)


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
