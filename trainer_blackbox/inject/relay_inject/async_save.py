"""Async checkpoints: training pauses only for the host copy of the state; files are written behind it.

An instrumented Trainer's ``_save_checkpoint`` still runs, unchanged, in the training thread: whatever the
Trainer class (HF's, TRL's, LLaMA-Factory's, a user's subclass) saves, and in the layout it saves it, is
what lands in the checkpoint.  While it runs, its calls to ``torch.save`` and
``safetensors.torch.save_file`` for files inside the checkpoint directory do not write: each one takes a
host copy of the tensors it was given (relay_inject.host_copy: the pause) and is recorded.  So are calls of
the ``DeferredMethod``s a caller names (the HF TrainerState's JSON, which grows with every logged step):
each records a cheap snapshot of its object.  Other small files (config, the tokenizer,
``training_args.bin``) are written as usual.  Then one writer thread replays the
recorded calls with the real functions on the copies, and ``finish`` (fsync, COMPLETE: relay_inject.hf)
runs after them.  A file whose object cannot be copied exactly is saved at once, synchronously, so the
checkpoint is always the one a synchronous save would have written.

The Trainer's code calls these functions through names bound at import (``safe_save_file`` in
transformers.modeling_utils and peft, ``torch.save``), so during the capture every module-level name bound to
one of them is pointed at the recorder, and restored after.  The recorder acts only in the capturing
thread and only under the checkpoint directory; every other call goes straight through.

At most one save is in flight: a save waits for the previous one (and raises its error, so a save that
failed in the background fails the trainer as a synchronous one would).  Host memory is one checkpoint's
tensor bytes, kept for the next save.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from relay_inject.host_copy import Copy, HostBuffers, NotCopyable

__all__ = ["AsyncCheckpointer", "AsyncSaveError", "DeferredMethod", "Job"]


class AsyncSaveError(RuntimeError):
    """A checkpoint's background write failed; raised in the training thread at the next save or flush."""


@dataclass
class _Write:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class DeferredMethod:
    """A method that writes one file of the checkpoint from its object (``obj.method(path, ...)``) and may
    run in the writer thread on ``snapshot(obj)``, taken in the pause: for objects training changes only
    cheaply (the HF TrainerState, whose JSON grows with every logged step)."""

    owner: type
    name: str
    snapshot: Callable[[Any], Any]


@dataclass
class Job:
    """One checkpoint: its host copies, the writes recorded against them, and what it cost to take."""

    step: int
    root: Path
    copy: Copy
    writes: list[_Write] = field(default_factory=list)
    sync_files: list[str] = field(default_factory=list)  # saved in the training thread (not copyable)
    deferred: list[str] = field(default_factory=list)  # the files the writer thread writes
    written_s: float = 0.0

    def owns(self, target: Any, thread: int) -> bool:
        if threading.get_ident() != thread or not isinstance(target, (str, os.PathLike)):
            return False
        path = os.path.abspath(os.fspath(target))
        return path.startswith(str(self.root) + os.sep)


def _save_targets() -> list[Callable[..., Any]]:
    targets: list[Callable[..., Any]] = [torch.serialization.save]
    st = sys.modules.get("safetensors.torch")
    if st is not None and callable(getattr(st, "save_file", None)):
        targets.append(st.save_file)
    return targets


class _WriterThread:
    """The one thread that runs an AsyncCheckpointer's background tasks in order.  Started at the first
    task and kept: starting a thread per save costs the training thread a GIL hand-off in every pause."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def run(self, task: Callable[[], None]) -> threading.Event:
        """Queue ``task``; the event is set once it has run (whatever it raised)."""
        done = threading.Event()
        if self._thread is None or not self._thread.is_alive():  # the first task, or a forked child
            self._thread = threading.Thread(target=self._loop, name="relay-async-save", daemon=True)
            self._thread.start()
        self._queue.put((task, done))
        return done

    def _loop(self) -> None:
        while True:
            task, done = self._queue.get()
            try:
                task()
            finally:
                done.set()


class _Rebinder:
    """Points every module-level name bound to a save function at its recorder, and back."""

    def __init__(self) -> None:
        self._targets: list[Callable[..., Any]] = []
        self._scanned: set[str] = set()
        self._sites: list[tuple[dict[str, Any], str, Callable[..., Any]]] = []

    def scan(self) -> None:
        """Find the module-level names bound to the save functions (in modules not looked at yet: a set
        difference, so a save in a process with thousands of modules does not walk them all again)."""
        targets = _save_targets()
        if [id(t) for t in targets] != [id(t) for t in self._targets]:  # a save function appeared: rescan all
            self._targets, self._scanned, self._sites = targets, set(), []
        by_id = {id(t): t for t in targets}
        for name in sys.modules.keys() - self._scanned:
            self._scanned.add(name)
            try:
                namespace = vars(sys.modules[name])
            except (KeyError, TypeError):
                continue
            for attr, value in list(namespace.items()):
                if id(value) in by_id and value is by_id[id(value)]:
                    self._sites.append((namespace, attr, value))

    def install(self, recorders: dict[int, Callable[..., Any]]) -> None:
        self.scan()
        for namespace, attr, original in self._sites:
            if namespace.get(attr) is original and id(original) in recorders:
                namespace[attr] = recorders[id(original)]

    def uninstall(self, recorders: dict[int, Callable[..., Any]]) -> None:
        for namespace, attr, original in self._sites:
            if namespace.get(attr) is recorders.get(id(original)):
                namespace[attr] = original


class AsyncCheckpointer:
    """Captures a Trainer's checkpoint writes as host copies and writes them in one background thread."""

    def __init__(
        self,
        pin: bool,
        save_hooks: list[Callable[[int], None]] | None = None,
        deferred_methods: tuple[DeferredMethod, ...] = (),
    ) -> None:
        self.buffers = HostBuffers(pin)
        self.save_hooks = save_hooks if save_hooks is not None else []
        self.deferred_methods = deferred_methods
        self._rebinder = _Rebinder()
        self._writer = _WriterThread()
        self._done: threading.Event | None = None  # set when the task in flight (a save, a reservation) ends
        self._running: Job | None = None
        self._error: tuple[int, BaseException] | None = None
        self._job: Job | None = None

    # --- the training thread ------------------------------------------------------------------
    @property
    def in_flight(self) -> int | None:
        """The step being written in the background, if any."""
        busy = self._done is not None and not self._done.is_set()
        return self._running.step if busy and self._running is not None else None

    def wait(self) -> None:
        """Block until the save in flight is written; raise AsyncSaveError if it failed."""
        if self._done is not None:
            self._done.wait()  # the save in flight, or the reservation of buffers before the first
            self._done = self._running = None
        if self._error is not None:
            step, exc = self._error
            self._error = None
            raise AsyncSaveError(
                f"the background write of the checkpoint of step {step} failed: {type(exc).__name__}: {exc}"
            ) from exc

    @contextmanager
    def capture(self, root: Path, step: int) -> Iterator[Job]:
        """Within: checkpoint writes under ``root`` by this thread are host copies, recorded in the Job."""
        self.wait()
        job = Job(step=step, root=Path(os.path.abspath(root)), copy=Copy(self.buffers))
        thread = threading.get_ident()
        recorders = {id(f): self._recorder(job, thread, f) for f in _save_targets()}
        self._rebinder.install(recorders)
        # a method the class no longer defines itself (another library version) is simply not deferred
        methods = [(m, m.owner.__dict__[m.name]) for m in self.deferred_methods if m.name in m.owner.__dict__]
        for m, original in methods:
            setattr(m.owner, m.name, self._method_recorder(job, thread, m, original))
        try:
            yield job
        except BaseException:
            self.buffers.recycle()
            raise
        finally:
            for m, original in methods:
                setattr(m.owner, m.name, original)
            self._rebinder.uninstall(recorders)
        job.copy.seal()
        self._job = job

    def _recorder(self, job: Job, thread: int, original: Callable[..., Any]) -> Callable[..., Any]:
        is_torch_save = original is torch.serialization.save

        def record(obj: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            if not job.owns(target, thread):
                return original(obj, target, *args, **kwargs)
            try:
                copied = job.copy.copy_tree(obj) if is_torch_save else job.copy.copy_tensors(obj)
            except NotCopyable:
                job.sync_files.append(os.path.basename(os.fspath(target)))
                return original(obj, target, *args, **kwargs)
            job.writes.append(_Write(original, (copied, os.fspath(target), *args), kwargs))
            job.deferred.append(os.path.basename(os.fspath(target)))
            return None

        record.__name__ = getattr(original, "__name__", "save")
        record.__doc__ = original.__doc__
        return record

    def _method_recorder(
        self, job: Job, thread: int, method: DeferredMethod, original: Callable[..., Any]
    ) -> Callable[..., Any]:
        def record(obj: Any, target: Any, *args: Any, **kwargs: Any) -> Any:
            if not job.owns(target, thread):
                return original(obj, target, *args, **kwargs)
            job.writes.append(_Write(original, (method.snapshot(obj), os.fspath(target), *args), kwargs))
            job.deferred.append(os.path.basename(os.fspath(target)))
            return None

        record.__name__ = method.name
        record.__doc__ = original.__doc__
        return record

    def submit(self, finish: Callable[[Job], None]) -> Job | None:
        """Write the captured job's files in the background, then run ``finish(job)`` there (None: nothing
        was captured since the last submit)."""
        job, self._job = self._job, None
        if job is None:
            return None
        self._running = job
        self._done = self._writer.run(lambda: self._write(job, finish))
        return job

    def reserve(self, sizes: list[int]) -> None:
        """Allocate host buffers of these sizes in the background (a save waits for it to end)."""
        if self._done is not None and not self._done.is_set():
            return
        self._done = self._writer.run(lambda: self._reserve(sizes))

    def _reserve(self, sizes: list[int]) -> None:
        try:
            self._rebinder.scan()  # the first look through every module's names, out of the first pause
            self.buffers.reserve(sizes)
        except Exception:  # noqa: BLE001 - out of memory here: the save allocates what it needs itself
            pass

    def discard(self) -> None:
        """A capture whose save was abandoned: nothing is written, its buffers serve the next save."""
        if self._job is not None:
            self._job = None
            self.buffers.recycle()

    # --- the writer thread --------------------------------------------------------------------
    def _write(self, job: Job, finish: Callable[[Job], None]) -> None:
        t0 = time.monotonic()
        try:
            job.copy.ready()
            for hook in self.save_hooks:
                hook(job.step)
            for write in job.writes:
                write.fn(*write.args, **write.kwargs)
            job.writes.clear()  # the copies are written: drop the views before the buffers are reused
            job.written_s = time.monotonic() - t0
            finish(job)
        except BaseException as exc:  # noqa: BLE001 - reported in the training thread by wait()
            self._error = (job.step, exc)
        finally:
            job.writes.clear()
            self.buffers.recycle()
