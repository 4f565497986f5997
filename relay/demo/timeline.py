"""The demo's timeline: what each pod did, read from the files the worker and trainer write anyway.

A worker appends one JSON line per event to ``runs/<run>/events.jsonl`` (acquired, resumed,
checkpoint_committed, checkpoint_synced, preempted, completed ...) and its trainer one line per step to
``progress.jsonl``.  :class:`PodWatcher` tails both files of one pod, turns new records into timeline
lines and remembers the facts the closing checks need (:class:`PodFacts`).  Nothing here talks to the
worker: the demo shows what a pod's volume records, exactly what an operator would inspect.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


class Timeline:
    """Prints ``[  12.3s] who        what`` lines, timed from the start of the demo."""

    def __init__(self, out: TextIO | None = None, t0: float | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.t0 = time.time() if t0 is None else t0

    def say(self, who: str, text: str, ts: float | None = None) -> None:
        at = (time.time() if ts is None else ts) - self.t0
        self.out.write(f"[{max(at, 0.0):6.1f}s] {who:<9} {text}\n")
        self.out.flush()

    def plain(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()


class JsonlTail:
    """New complete JSON-object lines of one file since the last read (a torn last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out = []
        for raw in lines:
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out


@dataclass
class PodFacts:
    """What one pod did with the run, as its volume records it."""

    name: str
    epochs: list[int] = field(default_factory=list)
    resumed: list[dict[str, Any]] = field(default_factory=list)
    trainer_pids: list[int] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)
    synced: list[int] = field(default_factory=list)
    sync_failures: list[str] = field(default_factory=list)
    losses: dict[int, float | None] = field(default_factory=dict)
    outcome: str | None = None
    outcome_message: str | None = None
    exit_code: int | None = None

    @property
    def steps(self) -> list[int]:
        return sorted(self.losses)

    @property
    def first_step(self) -> int | None:
        return min(self.losses) if self.losses else None

    @property
    def last_step(self) -> int | None:
        return max(self.losses) if self.losses else None

    @property
    def resume_step(self) -> int | None:
        return int(self.resumed[-1].get("step", 0)) if self.resumed else None

    @property
    def resume_source(self) -> str | None:
        return str(self.resumed[-1].get("source")) if self.resumed else None


_OUTCOMES = ("preempted", "completed", "failed", "cancelled", "fenced")


def _mb(n: Any) -> str:
    return f"{n / 1e6:.1f} MB" if isinstance(n, (int, float)) else "? MB"


def _loss(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"


class TextTail:
    """New complete text lines of one file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return []
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [raw.decode("utf-8", errors="replace") for raw in lines]


# The worker logs each refused acquire as "run <id> is held by <holder>; retrying" (relay.worker.agent).
_HELD = re.compile(r"is held by (\S+?);? retrying")


class PodWatcher:
    """Tails one pod's events and progress; ``poll()`` returns ``(ts, text)`` lines, in file order.

    With ``worker_log``, the first refused acquire in the worker's own output is shown too (the
    lease is exclusive: a second pod waits until the holder lets go); it is not an event, so it is
    read from the log, best-effort.
    """

    def __init__(self, name: str, run_dir: Path, *, loss_every: int, worker_log: Path | None = None) -> None:
        self.name = name
        self.run_dir = run_dir
        self.facts = PodFacts(name)
        self.loss_every = max(1, loss_every)
        self._events = JsonlTail(run_dir / "events.jsonl")
        self._progress = JsonlTail(run_dir / "progress.jsonl")
        self._log = TextTail(worker_log) if worker_log is not None else None
        self._new_trainer = False

    def poll(self) -> list[tuple[float, str]]:
        lines: list[tuple[float, str]] = []
        if self._log is not None:
            for text in self._log.read():
                held = _HELD.search(text)
                if held and not self.facts.epochs:
                    lines.append(
                        (
                            time.time(),
                            f"asked for the lease: held by {held.group(1)}; retrying until it is released",
                        )
                    )
                    self._log = None  # once is enough
                    break
        for ev in self._events.read():
            text = self._on_event(ev)
            if text:
                lines.append((float(ev.get("ts", time.time())), text))
        for rec in self._progress.read():
            text = self._on_progress(rec)
            if text:
                lines.append((float(rec.get("ts", time.time())), text))
        return lines

    def _on_event(self, ev: dict[str, Any]) -> str | None:
        f = self.facts
        name = ev.get("event")
        epoch = ev.get("epoch")
        step = ev.get("step")
        if name == "acquired":
            if isinstance(epoch, int):
                f.epochs.append(epoch)
            ttl = ev.get("ttl_s")
            ttl_text = f" (ttl {ttl:g}s)" if isinstance(ttl, (int, float)) else ""
            return f"acquired the lease on run {ev.get('run_id')} at epoch {epoch}{ttl_text}"
        if name == "resumed":
            f.resumed.append(ev)
            source = ev.get("source")
            if source == "remote":
                took = ev.get("download_s")
                how = f" in {took:.2f}s" if isinstance(took, (int, float)) else ""
                return (
                    f"pulled checkpoint step {step} from the remote ({_mb(ev.get('bytes'))}{how}), "
                    f"verified against its manifest: resuming at step {step}"
                )
            if source == "local":
                return f"found checkpoint step {step} on its own volume: resuming at step {step}"
            return "no checkpoint on its volume or on the remote: cold start at step 0"
        if name == "trainer_started":
            pid = ev.get("pid")
            if isinstance(pid, int):
                f.trainer_pids.append(pid)
            self._new_trainer = True
            resume = ev.get("resume_step")
            whence = f"resuming from step {resume}" if resume else "from scratch"
            return f"trainer started (pid {pid}, built-in SFT, {whence})"
        if name == "checkpoint_committed":
            if isinstance(step, int):
                f.committed.append(step)
            return f"checkpoint step {step} committed on its volume ({_mb(ev.get('bytes'))}, manifest + atomic rename)"
        if name == "checkpoint_synced":
            if isinstance(step, int):
                f.synced.append(step)
            took = ev.get("upload_s")
            how = f" in {took:.2f}s" if isinstance(took, (int, float)) else ""
            return f"checkpoint step {step} synced to the remote at epoch {epoch}{how}"
        if name == "final_published":
            return (
                f"final export of step {step} published to the remote ({ev.get('files')} files, "
                f"{_mb(ev.get('bytes'))}): the run's deliverable, loadable with from_pretrained(subfolder=...)"
            )
        if name == "sync_failed":
            f.sync_failures.append(str(ev.get("message")))
            return f"sync of step {step} failed: {ev.get('message')}"
        if name in ("hang_detected", "trainer_restarted"):
            return f"{name.replace('_', ' ')}: {ev.get('reason') or ev.get('message') or ''}".rstrip(": ")
        if name in _OUTCOMES:
            f.outcome = name
            f.outcome_message = ev.get("message")
            released = "released the lease" if ev.get("released") else "did NOT release the lease"
            return f"{released} as {name}: {ev.get('message') or ''}".rstrip(": ")
        return None

    def _on_progress(self, rec: dict[str, Any]) -> str | None:
        step = rec.get("step")
        if rec.get("heartbeat") is True:  # alive, not a trained step (relay_inject.heartbeat)
            return None
        if not isinstance(step, int) or isinstance(step, bool):
            return None
        loss = rec.get("loss")
        self.facts.losses[step] = float(loss) if isinstance(loss, (int, float)) else None
        first = self._new_trainer
        self._new_trainer = False
        if first:
            return f"step {step:>3}  loss {_loss(loss)}   (first step of this trainer)"
        if step % self.loss_every == 0:
            return f"step {step:>3}  loss {_loss(loss)}"
        return None


class LeaseView:
    """The commander's view of the demo run's lease (status, holder, epoch), said once per change."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._last: tuple[Any, ...] | None = None
        self._warned = False

    async def poll(self, client: Any) -> list[tuple[float, str, str]]:
        """A timeline line when the view changed (or the first time the commander cannot answer)."""
        from relay.client import CommanderError, NotFound

        try:
            run = await client.get_run(self.run_id)
        except NotFound:
            return []
        except CommanderError as exc:
            if not self._warned:
                self._warned = True
                return [(time.time(), "commander", f"could not be asked about the run: {exc}")]
            return []
        status = getattr(run.status, "value", run.status)
        view = (status, run.holder, run.epoch)
        if view == self._last:
            return []
        self._last = view
        who = (
            f"lease held by {run.holder} at epoch {run.epoch}"
            if run.holder
            else f"no lease holder (epoch {run.epoch})"
        )
        return [(time.time(), "commander", f"run {self.run_id} is {status}: {who}")]

    async def record(self, client: Any) -> dict[str, Any] | None:
        """The run as the commander has it at the end (status, epoch, step, checkpoint_step); None when
        it cannot be asked."""
        try:
            run = await client.get_run(self.run_id)
        except Exception:  # the verdict names a commander that could not be asked
            return None
        return {
            "status": getattr(run.status, "value", run.status),
            "epoch": run.epoch,
            "step": run.step,
            "checkpoint_step": run.latest_checkpoint.step if run.latest_checkpoint else None,
        }
