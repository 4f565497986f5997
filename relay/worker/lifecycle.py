"""The worker's lifecycle as data: its states, the one table of allowed moves, outcomes and exit codes.

Like torch.distributed.elastic's ``WorkerState``, the lifecycle is an explicit state machine:
:class:`State` names every phase and :data:`TRANSITIONS` is the one table of allowed moves
(``Agent.goto`` refuses any other, and the tests walk the table)::

    IDLE ──▶ ACQUIRING ──▶ RECOVERING ──▶ LAUNCHING ──▶ SUPERVISING ──▶ FINALIZING ──▶ RELEASING ──▶ DONE
                 │  ▲           │              ▲    │        │   │  ▲                      ▲      │
                 │  └───────────┼──────────────┼────┼────────┼───┼──┼──── (pool mode: next run)
                 ▼              │              │    │        │   ▼  │
                DONE            │         RESTARTING ◀───────┘  STOPPING
                                ▼  (any phase holding the lease)
                              FENCED ──▶ DONE

- ACQUIRING: ask for the lease; retry with jittered backoff while another worker holds it; a
  closed run or (pool mode) no waiting run ends the worker with exit 0.
- RECOVERING: claim the remote at this lease's epoch (no older epoch can publish from then on; a
  remote already at or above it is handed back), commit checkpoints a dead predecessor left staged,
  then take the newest verified checkpoint: the local volume, unless the remote holds a strictly
  newer one (pulled, verified); none: cold start (the rules: :mod:`relay.worker.recovery`).
- LAUNCHING: write the ``train:`` block, spawn ``launch_<mode>.sh`` (own process group, pdeathsig).
- SUPERVISING: poll progress, commit finished checkpoints (in a thread) and hand them to the
  syncer, run the watchdog; renewal and reports run as their own tasks meanwhile.
- RESTARTING: the trainer crashed or hung; back off, then launch again from the newest checkpoint,
  or give up after ``max_restarts`` (release ``failed``).
- STOPPING: SIGTERM/SIGINT, a cancel, or ``max_runtime_s``: SIGTERM the trainer's group and wait up
  to ``grace_s`` for it to save and exit.
- FINALIZING: commit the final checkpoint and wait for its upload (bounded by the remaining grace
  when preempted).
- RELEASING: flush reports, stop renewing, release with the outcome.
- FENCED: the lease is lost (409, renewals failing for ttl - margin, or the remote refusing our
  epoch). The trainer was already killed by the fence; commit and sync nothing more; exit 3.

This module is pure data plus :class:`Lifecycle`, the one walker of the table: the agent owns it and
hands it to each run session, so neither imports the other.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.schema import ReleaseOutcome

log = logging.getLogger("relay.worker")

# ------------------------------------------------------------------------------------ exit codes

EXIT_OK = 0  # completed, preempted and handed on, cancelled, or nothing to do (closed run, no work)
EXIT_INTERNAL = 1  # a bug: unexpected exception (traceback in the log)
EXIT_CONFIG = 2  # bad configuration (or a run spec / mode the commander refuses): nothing acquired
EXIT_FENCED = 3  # lost the lease: trainer killed, nothing more committed or synced
EXIT_FAILED = (
    4  # the run failed here: crash loop, hang loop, max_runtime_s, launcher missing, recovery failed
)
EXIT_COMMANDER = 5  # the commander was unreachable for commander_wait_s, or refused our secret

EXIT_CODES = {
    EXIT_OK: "done: completed, preempted and handed on, cancelled, or nothing to do",
    EXIT_INTERNAL: "internal error (see the traceback in the log)",
    EXIT_CONFIG: "configuration error; nothing was acquired",
    EXIT_FENCED: "fenced: the lease was lost, the trainer was killed",
    EXIT_FAILED: "the run failed on this worker and was released as failed",
    EXIT_COMMANDER: "the commander was unreachable or refused the shared secret",
}

# ---------------------------------------------------------------------------------------- states


class State(str, enum.Enum):
    IDLE = "idle"
    ACQUIRING = "acquiring"
    RECOVERING = "recovering"
    LAUNCHING = "launching"
    SUPERVISING = "supervising"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    FINALIZING = "finalizing"
    RELEASING = "releasing"
    FENCED = "fenced"
    DONE = "done"


S = State

#: the phases that hold the lease: each of them may be fenced
HOLDING = frozenset(
    {S.RECOVERING, S.LAUNCHING, S.SUPERVISING, S.RESTARTING, S.STOPPING, S.FINALIZING, S.RELEASING}
)

#: from -> allowed next states.  Every phase that holds the lease may be fenced.
TRANSITIONS: dict[State, frozenset[State]] = {
    S.IDLE: frozenset({S.ACQUIRING, S.DONE}),
    S.ACQUIRING: frozenset({S.RECOVERING, S.DONE}),
    # a signal or cancel during recovery releases at once; a failed recovery releases too
    S.RECOVERING: frozenset({S.LAUNCHING, S.RELEASING, S.FENCED}),
    # a missing launcher releases as failed
    S.LAUNCHING: frozenset({S.SUPERVISING, S.RELEASING, S.FENCED}),
    S.SUPERVISING: frozenset({S.RESTARTING, S.STOPPING, S.FINALIZING, S.FENCED}),
    # give up -> FINALIZING (commit what exists, release failed); signal/cancel in backoff -> FINALIZING
    S.RESTARTING: frozenset({S.LAUNCHING, S.FINALIZING, S.FENCED}),
    S.STOPPING: frozenset({S.FINALIZING, S.FENCED}),
    S.FINALIZING: frozenset({S.RELEASING, S.FENCED}),
    # pool mode goes on with the next waiting run
    S.RELEASING: frozenset({S.DONE, S.ACQUIRING, S.FENCED}),
    S.FENCED: frozenset({S.DONE}),
    S.DONE: frozenset(),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass
class Lifecycle:
    """The worker's current state and its history; :meth:`goto` refuses any move not in the table."""

    state: State = State.IDLE
    history: list[tuple[float, State]] = field(default_factory=lambda: [(time.time(), State.IDLE)])

    def goto(self, new: State) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"worker state cannot go from {self.state.value} to {new.value}")
        log.debug("state %s -> %s", self.state.value, new.value)
        self.state = new
        self.history.append((time.time(), new))


@dataclass
class Outcome:
    """How carrying one run ended: the release outcome (None: nothing released) and the exit code."""

    release: ReleaseOutcome | None
    exit_code: int
    detail: str
    step: int | None = None
    #: the claim found the run's remote at this epoch (at or above the lease's): the release told the
    #: commander, whose next grant must jump past it; the agent asks for the run again
    remote_epoch: int | None = None
