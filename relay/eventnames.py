"""Every event name a worker or the commander records in a run's timeline, and who records which.

One enum for the whole system: the worker's ``events.jsonl``, its reports, the commander's
timeline and the chaos checker all use :class:`EventName` and the sets below, which classify who
writes which: :data:`REPORTED_EVENTS` (a worker writes them to its log and reports them),
:data:`WORKER_EVENTS` (everything a worker may write to its own log), :data:`LEASE_END_EVENTS`
(how a lease ends in a worker's log) and :data:`COMMANDER_EVENTS` (what the commander records
itself, from the lease calls and its own decisions).  Stdlib only, so a worker writes an event
without loading the wire schema; ``relay.schema`` re-exports all of it, since
``ReportRequest.event`` and the run detail carry these names on the wire.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["COMMANDER_EVENTS", "LEASE_END_EVENTS", "REPORTED_EVENTS", "WORKER_EVENTS", "EventName"]


class EventName(str, Enum):
    """Every event a worker or the commander records in a run's timeline: the one list of names.

    Workers report their progress (remote_claimed, resumed, trainer_started, checkpoint_committed,
    checkpoint_commit_failed, checkpoint_synced, sync_failed, hang_detected, trainer_restarted,
    final_published) and remote_ahead (the run's storage is at or above the granted epoch).  The lease events
    (acquired, preempted, completed, failed, cancelled, fenced) are recorded by both sides, each
    from what it saw; lease_expired, cancel_requested and submitted by the commander alone.
    """

    # the lease: both sides record these
    acquired = "acquired"
    preempted = "preempted"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"
    fenced = "fenced"
    # a worker's progress, reported to the commander
    remote_claimed = "remote_claimed"  # the new holder recorded its epoch on the remote, before training
    remote_ahead = "remote_ahead"  # the remote already holds an epoch at or above the grant's: not trained
    resumed = "resumed"
    trainer_started = "trainer_started"
    checkpoint_committed = "checkpoint_committed"
    checkpoint_commit_failed = "checkpoint_commit_failed"
    checkpoint_synced = "checkpoint_synced"
    sync_failed = "sync_failed"
    hang_detected = "hang_detected"
    trainer_restarted = "trainer_restarted"
    save_cadence = "save_cadence"  # the interval the worker asks the trainer for saves at, and why
    final_published = "final_published"  # the trainer's final export is on the remote (relay.ckpt.final)
    # the commander's alone
    lease_expired = "lease_expired"
    cancel_requested = "cancel_requested"
    submitted = "submitted"


_E = EventName  # short, for the sets below

#: A worker reports these (``ReportRequest.event``); the commander stores them as they come.
REPORTED_EVENTS = frozenset(
    {
        _E.remote_claimed,
        _E.remote_ahead,
        _E.resumed,
        _E.trainer_started,
        _E.checkpoint_committed,
        _E.checkpoint_commit_failed,
        _E.checkpoint_synced,
        _E.sync_failed,
        _E.hang_detected,
        _E.trainer_restarted,
        _E.save_cadence,
        _E.final_published,
    }
)
#: How a lease ends in a worker's own log: a release outcome, or ``fenced`` (it lost the lease).
LEASE_END_EVENTS = frozenset({_E.preempted, _E.completed, _E.failed, _E.cancelled, _E.fenced})
#: What a worker writes to its ``events.jsonl``; those not in :data:`REPORTED_EVENTS` stay local,
#: since the commander records its own from the lease calls (and a fenced worker's reports are refused).
WORKER_EVENTS = REPORTED_EVENTS | LEASE_END_EVENTS | {_E.acquired}
#: What the commander records itself: grants, releases (named by the status they lead to), expiries,
#: stale requests of an ended lease (``fenced``), cancels and submits.
COMMANDER_EVENTS = LEASE_END_EVENTS | {_E.acquired, _E.lease_expired, _E.cancel_requested, _E.submitted}
