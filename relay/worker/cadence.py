"""Checkpoints by wall time: the worker asks the trainer for a save when ``save_every_s`` has passed
since the newest checkpoint, so a hard kill (no SIGTERM, no final save) loses at most that much work.

The request is the save-request file of the trainer contract (trainer_blackbox/README.md, section 13, "Save requests"):
the worker replaces it whole with a JSON object whose ``id`` grows; a trainer that honours it saves at
its next step end; one that does not loses nothing.  The file is removed before each launch.

``save_every_s: auto`` chooses the interval with Young/Daly's first-order optimum
``sqrt(2 * C * M)``, from

- ``C``, the save cost: the training pause a save causes, measured from the progress lines (the gap
  between the line of a checkpointed step and the next one, less the median gap between steps);
- ``M``, the mean time between interruptions of this run: its leases' total running time divided by
  the leases that ended preempted, expired, fenced or failed (the lease history of ``GET
  /api/runs/{id}``).  With none yet, the running time itself counts as one (a pessimistic estimate that
  grows while the run survives),

and never shorter than the time a save takes to reach the volume (the checkpointed step's line to its
commit: with async saves, the write behind training; a shorter interval would make each save wait on the
one before), clamped to [``AUTO_MIN_S``, ``AUTO_MAX_S``].  Until the first save is measured, only the
trainer's own saves happen.  Each choice (and why) is a ``save_cadence`` event, reported to the
commander, so ``relayctl status RUN`` shows it.  The arithmetic is pure functions, tested alone.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from relay.worker.context import RunContext
    from relay.worker.progress_tail import ProgressLine

log = logging.getLogger("relay.worker")

AUTO_MIN_S = 5.0  # auto never asks more often than this, however cheap the save
AUTO_MAX_S = 3600.0  # nor less often: a hard kill loses at most an hour
#: lease ends that cost the work since the last checkpoint (or a graceful handoff)
INTERRUPTIONS = frozenset({"preempted", "expired", "fenced", "failed"})
CHANGE = 0.1  # a new auto interval is announced when it moved by more than this fraction


def young_daly_interval(save_cost_s: float, mtbf_s: float) -> float:
    """Young/Daly's checkpoint interval ``sqrt(2 * C * M)`` (C: save cost, M: mean time between failures)."""
    if save_cost_s < 0 or mtbf_s <= 0:
        raise ValueError("save cost must be >= 0 and the time between failures > 0")
    return math.sqrt(2.0 * save_cost_s * mtbf_s)


@dataclass(frozen=True)
class Interruptions:
    """How often this run was interrupted: ``count`` in ``exposure_s`` seconds of leases."""

    count: int
    exposure_s: float

    @property
    def mtbf_s(self) -> float:
        """Mean time between interruptions; with none yet, the exposure counts as one (pessimistic)."""
        return max(self.exposure_s, 1.0) / max(1, self.count)


def interruptions(leases: Iterable[Any], now: float) -> Interruptions:
    """From lease records (``granted_at``, ``ended_at`` or None while live, ``ended``): how many ended
    interrupted, and their total running time up to ``now``."""
    count, exposure = 0, 0.0
    for lease in leases:
        end = lease.ended_at if lease.ended_at is not None else now
        exposure += max(0.0, end - lease.granted_at)
        ended = getattr(lease.ended, "value", lease.ended)
        count += ended in INTERRUPTIONS
    return Interruptions(count, exposure)


@dataclass(frozen=True)
class Choice:
    """The interval to ask for saves at (None: do not ask), and why, in words and numbers."""

    interval_s: float | None
    why: str
    save_cost_s: float | None = None
    mtbf_s: float | None = None
    interruptions: int | None = None
    exposure_s: float | None = None
    write_s: float | None = None


def choose_interval(
    setting: float | str | None,
    save_cost_s: float | None,
    history: Interruptions | None,
    write_s: float | None = None,
) -> Choice:
    """The interval for a ``save_every_s`` setting (seconds, ``"auto"`` or None) and what auto measured.

    ``write_s`` (the time a save takes to reach the volume) is a floor: Young/Daly counts only the
    pause, but saves asked for faster than they can be written queue behind each other."""
    if setting is None:
        return Choice(None, "save_every_s unset: only the trainer's own saves")
    if setting != "auto":
        return Choice(float(setting), f"save_every_s = {float(setting):g}s")
    if save_cost_s is None or history is None:
        return Choice(None, "auto: the save cost is measured at the trainer's first checkpoint")
    mtbf = history.mtbf_s
    raw = young_daly_interval(save_cost_s, mtbf)
    wanted = max(raw, write_s or 0.0)
    interval = min(AUTO_MAX_S, max(AUTO_MIN_S, wanted))
    seen = f"{history.count} interruption(s) in {history.exposure_s:.0f}s of leases"
    why = f"auto: Young/Daly sqrt(2 x {save_cost_s:.2f}s save x {mtbf:.0f}s between interruptions ({seen})) = {raw:.0f}s"
    if wanted != raw:
        why += f", raised to the {wanted:.0f}s a save takes to be written (no save waits on the one before)"
    if interval != wanted:
        why += f", clamped to {interval:g}s"
    return Choice(
        interval,
        why,
        round(save_cost_s, 3),
        round(mtbf, 1),
        history.count,
        round(history.exposure_s, 1),
        round(write_s, 3) if write_s is not None else None,
    )


class SaveCostMeter:
    """The training pause a save causes, from progress-line timestamps (median of the last few saves),
    and the time a save takes to be committed (its step's line to the commit)."""

    def __init__(self) -> None:
        self._ts: dict[int, float] = {}
        self._gaps: deque[float] = deque(maxlen=32)  # gaps between steps without a save
        self._saved: set[int] = set()
        self._costs: deque[float] = deque(maxlen=5)
        self._writes: deque[float] = deque(maxlen=5)

    def line(self, step: int, ts: float) -> None:
        prev = self._ts.get(step - 1)
        self._ts[step] = ts
        if len(self._ts) > 64:
            self._ts.pop(min(self._ts))
        if prev is None:
            return
        if step - 1 in self._saved:
            self._measure(step - 1, ts - prev)
        else:
            self._gaps.append(ts - prev)

    def saved(self, step: int, at: float | None = None) -> None:
        """A checkpoint of ``step`` was committed at wall time ``at`` (now by default; its pause lies
        before the next step's line)."""
        if step in self._ts:
            self._writes.append(max(0.0, (time.time() if at is None else at) - self._ts[step]))
        self._saved.add(step)
        if step in self._ts and step + 1 in self._ts:
            self._measure(step, self._ts[step + 1] - self._ts[step])

    def _measure(self, step: int, gap: float) -> None:
        self._saved.discard(step)
        typical = statistics.median(self._gaps) if self._gaps else 0.0
        self._costs.append(max(0.0, gap - typical))

    @property
    def cost_s(self) -> float | None:
        return statistics.median(self._costs) if self._costs else None

    @property
    def write_s(self) -> float | None:
        return statistics.median(self._writes) if self._writes else None


class SaveRequestFile:
    """The worker's side of the save-request file: write a request, remove it before a launch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_id = 0

    def clear(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def request(self, reason: str, interval_s: float) -> int:
        self.last_id += 1
        doc = {"id": self.last_id, "reason": reason, "interval_s": interval_s, "ts": time.time()}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)  # whole or not at all: a trainer never reads half a request
        return self.last_id


class Cadence:
    """Asks one lease's trainer for saves at the chosen interval (see the module docstring)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.setting = ctx.cfg.save_every_s
        self.meter = SaveCostMeter()
        self.file = SaveRequestFile(ctx.layout.save_request_file)
        self.history: Interruptions | None = None
        self.choice = choose_interval(self.setting, None, None)
        self._announced: float | None = None
        self._said = False
        self._history_at = time.monotonic()
        self._since = time.monotonic()  # the newest checkpoint, or the launch: what a kill would lose
        self._asked: float | None = None
        self._ckpt_step: int | None = None
        ctx.progress.subscribe(self._progress_changed)

    async def start(self) -> None:
        """Read the run's lease history (auto only) and say which cadence this lease uses."""
        if self.setting == "auto":
            self.history = await self._history()
            self._history_at = time.monotonic()
        self._update()

    async def _history(self) -> Interruptions | None:
        from relay.client import CommanderError

        try:
            detail = await self.ctx.client.get_run(self.ctx.lease.run_id)
        except CommanderError as exc:
            log.warning("save cadence: no lease history (%s); counting this lease only", exc)
            return Interruptions(0, 0.0)
        return interruptions(detail.leases, time.time())

    def launching(self) -> None:
        """Before a (re)launch: a new trainer process never acts on an old request."""
        self.file.clear()
        self._since, self._asked = time.monotonic(), None

    def lines(self, lines: Iterable[ProgressLine]) -> None:
        for line in lines:
            self.meter.line(line.step, line.ts)

    def tick(self) -> None:
        """Ask for a save when the interval has passed since the newest checkpoint (once per interval)."""
        self._update()
        interval = self.choice.interval_s
        now = time.monotonic()
        if interval is None or now - self._since < interval:
            return
        if self._asked is not None and now - self._asked < interval:
            return
        self._asked = now
        reason = "save_every_s" if self.setting != "auto" else "save_every_s auto"
        request_id = self.file.request(reason, interval)
        self.ctx.tlog.note(
            f"asked the trainer for a checkpoint (request {request_id}, every {interval:.0f}s)"
        )

    def _progress_changed(self) -> None:
        ckpt = self.ctx.progress.checkpoint
        if ckpt is None or ckpt.step == self._ckpt_step:
            return
        self._ckpt_step = ckpt.step
        self.meter.saved(ckpt.step)
        self._since, self._asked = time.monotonic(), None

    def _current_history(self) -> Interruptions | None:
        """The lease history read at the start, plus the time this lease has run since."""
        if self.history is None:
            return None
        return Interruptions(
            self.history.count, self.history.exposure_s + time.monotonic() - self._history_at
        )

    def _update(self) -> None:
        """Recompute the choice; announce it the first time, when it becomes known, or when it moved
        by more than ``CHANGE``."""
        if self.setting is None:
            return
        choice = choose_interval(self.setting, self.meter.cost_s, self._current_history(), self.meter.write_s)
        self.choice = choice
        new, old = choice.interval_s, self._announced
        if self._said and (new is None or (old is not None and abs(new - old) <= CHANGE * old)):
            return
        self._said, self._announced = True, new
        self.ctx.events.emit(
            "save_cadence",
            choice.why,
            interval_s=round(new, 1) if new is not None else None,
            setting=self.setting,
            save_cost_s=choice.save_cost_s,
            mtbf_s=choice.mtbf_s,
            interruptions=choice.interruptions,
            exposure_s=choice.exposure_s,
            write_s=choice.write_s,
        )
