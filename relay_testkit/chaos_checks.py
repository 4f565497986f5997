"""The invariants of a chaos run, checked from what the processes recorded (shared by tests/chaos and the soak).

Sources: the mock trainers' own logs (every start, step and save, with pid, epoch and timestamp), the
pid watcher (when each trainer was first seen dead), the workers' ``events.jsonl`` on every volume,
the commander's events, the remote's state.json, and the driver's log of what it did.

The invariants, each with a name used in :class:`Violation`:

- ``overlap``: two trainers of one run alive at once. For trainers of a run ordered by start, every
  earlier trainer was *seen dead* (an upper bound of its death) before the later one logged its start,
  which the mock does before any step or write. Stronger than comparing step timestamps: a trainer
  that stopped stepping but still lives (saving, or ignoring SIGTERM) counts as alive.
- ``trainer_outlived``: a trainer still alive after every worker stopped.
- ``trainer_without_lease``: a trainer ran under an epoch its worker was never granted.
- ``epoch_order`` / ``duplicate_epoch``: grants (the commander's and the workers' own events) carry
  strictly increasing epochs, never the same one twice; trainers start in non-decreasing epochs.  A
  commander whose state was wiped or replaced (``state_lost_*`` in the driver's log) starts a new era
  of grants, checked on its own; trainers' epochs are checked across eras all the same.
- ``stale_report_accepted``: the commander recorded a worker's report of epoch e after it granted a
  later epoch (a fenced-off worker's late report must be refused).
- ``closed_run_granted``: a run trained again after it completed.
- ``resume_unverified``: a trainer resumed from something other than a checkpoint a trainer of this
  run had completely written (COMPLETE) before, whose directory names the step it resumed at, as the
  worker's ``resumed`` event says.
- ``resume_not_newest``: a new epoch resumed from older than what was durable when it was granted:
  a checkpoint synced to the remote, or completely written on the volume it runs on.
- ``graceful_loss``: the epoch after a graceful preemption (SIGTERM: save, commit, sync, release)
  resumed before the last step the preempted trainer ran.
- ``hard_loss``: after a hard end (SIGKILL, fencing) the next epoch, on the *same volume*, lost more
  than one checkpoint interval. (On another volume the bound is ``resume_not_newest``: what the dead
  pod had not uploaded yet is gone with it; the figures report those losses separately.)
- ``incomplete``: an expected run did not complete with the right final step everywhere.
- ``worker_crash``: a worker exited with an unexpected code (internal error, failed run, config); exit 4
  is expected from a worker that carried a poisoned run or one whose commits all fail.
- ``alive_after_grant``: a trainer of epoch e was still alive when the commander granted a later epoch
  (no two trainers of one run alive under different epochs after the later grant).
- ``stale_publish``: the remote published a checkpoint from an epoch older than one that had already
  claimed it (seen in the remote's own state.json history, :class:`relay_testkit.chaos_worker_faults.RemoteWatcher`,
  or in the workers' events: a ``checkpoint_synced`` at a revision after a newer ``remote_claimed``);
  ``remote_epoch_regressed``: the remote's fencing epoch went down.
- ``poisoned_run_open`` / ``commit_fail_run_open``: a run whose remote was poisoned did not end ``failed``
  naming the remote's epoch (it looped, or trained under an epoch its storage had seen); a run whose
  commits all fail ended otherwise than ``failed`` saying its final checkpoint was not committed.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.schema import LEASE_END_EVENTS, REPORTED_EVENTS

FENCING_KINDS = frozenset(
    {
        "overlap",
        "trainer_outlived",
        "trainer_without_lease",
        "epoch_order",
        "duplicate_epoch",
        "stale_report_accepted",
        "closed_run_granted",
        "alive_after_grant",
        "stale_publish",
        "remote_epoch_regressed",
    }
)
#: the remote epoch the chaos driver poisons a run's storage with (relay_testkit.chaos_worker_faults)
POISON_EPOCH = 2**62
#: How a lease ends in a worker's events.jsonl, and what workers report: the one classification of
#: ``relay.schema`` (the checker reads the same names the worker writes and the commander records).
END_EVENTS = LEASE_END_EVENTS
_STEP_DIR = re.compile(r"step_(\d+)$")


@dataclass(frozen=True)
class Violation:
    kind: str
    run_id: str | None
    detail: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.run_id or '-'}: {self.detail}"


@dataclass
class Life:
    """One trainer process: what it logged and when it was seen dead."""

    worker_id: str
    volume: str
    pid: int
    run_id: str
    epoch: int
    start_ts: float
    start_step: int
    resume_from: str
    steps: list[tuple[int, float]] = field(default_factory=list)
    saves: list[tuple[int, float]] = field(default_factory=list)
    exit: dict[str, Any] | None = None
    death_ts: float | None = None

    @property
    def last_step(self) -> int:
        return max([s for s, _ in self.steps], default=self.start_step)


@dataclass
class Segment:
    """Everything one epoch of one run did: its trainers, how it started and how it ended."""

    run_id: str
    epoch: int
    worker_id: str
    volume: str
    lives: list[Life]
    acquired_ts: float | None
    end: str  # graceful, completed, failed, cancelled, fenced, killed, vanished

    @property
    def resume_step(self) -> int:
        return self.lives[0].start_step

    @property
    def last_step(self) -> int:
        return max(life.last_step for life in self.lives)


@dataclass
class Loss:
    run_id: str
    epoch: int  # the epoch that ended
    end: str
    lost: int
    same_volume: bool


@dataclass
class ChaosReport:
    violations: list[Violation] = field(default_factory=list)
    runs_expected: int = 0
    runs_completed: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # "SIGKILL/after_save" -> n
    losses: list[Loss] = field(default_factory=list)
    ends: Counter[str] = field(default_factory=Counter)
    fenced_reasons: list[str] = field(default_factory=list)
    exit_codes: Counter[int] = field(default_factory=Counter)
    commander_restarts: int = 0
    restarts_that_fenced: int = 0  # commander restarts after which some worker fenced itself
    fenced_by_cause: Counter[str] = field(default_factory=Counter)  # partition, commander_restart, other
    partitions: int = 0
    faults: Counter[str] = field(default_factory=Counter)  # duplicate ids, state wipes, slow-client bursts
    pauses: int = 0  # workers SIGSTOPped alone
    output_blocks: int = 0  # workers whose stdout/stderr pipe stopped being read
    poisoned_runs: int = 0
    poisoned_ended_failed: int = 0
    commit_fail_runs: int = 0
    commit_fail_ended_failed: int = 0
    remote_states_seen: int = 0
    trainers: int = 0
    epochs: int = 0
    duration_s: float = 0.0

    @property
    def fencing_violations(self) -> int:
        return sum(1 for v in self.violations if v.kind in FENCING_KINDS)

    @property
    def kills_injected(self) -> int:
        return sum(self.kills.values())

    def max_lost(self, *, hard: bool = True, same_volume: bool | None = None) -> int:
        ends = {"killed", "fenced", "vanished", "failed"} if hard else {"graceful"}
        vals = [
            loss.lost
            for loss in self.losses
            if loss.end in ends and (same_volume is None or loss.same_volume == same_volume)
        ]
        return max(vals, default=0)

    def figures(self) -> dict[str, Any]:
        return {
            "duration_s": round(self.duration_s, 1),
            "runs_expected": self.runs_expected,
            "runs_completed": self.runs_completed,
            "kills_injected": self.kills_injected,
            "kills_by_kind": dict(sorted(self.kills.items())),
            "epochs": self.epochs,
            "trainers": self.trainers,
            "epoch_ends": dict(sorted(self.ends.items())),
            "fencing_violations": self.fencing_violations,
            "violations": len(self.violations),
            "max_steps_lost_one_hard_kill": self.max_lost(hard=True),
            "max_steps_lost_hard_kill_same_volume": self.max_lost(hard=True, same_volume=True),
            "max_steps_lost_hard_kill_other_volume": self.max_lost(hard=True, same_volume=False),
            "max_steps_lost_graceful": self.max_lost(hard=False),
            "commander_restarts": self.commander_restarts,
            "commander_restarts_survived": self.commander_restarts - self.restarts_that_fenced,
            "partitions": self.partitions,
            "commander_faults": dict(sorted(self.faults.items())),
            "pauses": self.pauses,
            "output_blocks": self.output_blocks,
            "poisoned_runs": self.poisoned_runs,
            "poisoned_runs_ended_failed": self.poisoned_ended_failed,
            "commit_fail_runs": self.commit_fail_runs,
            "commit_fail_runs_ended_failed": self.commit_fail_ended_failed,
            "overlaps": sum(1 for v in self.violations if v.kind in ("overlap", "alive_after_grant")),
            "stale_publishes": sum(1 for v in self.violations if v.kind == "stale_publish"),
            "remote_states_seen": self.remote_states_seen,
            "fenced_by_cause": dict(sorted(self.fenced_by_cause.items())),
            "worker_exit_codes": {str(k): v for k, v in sorted(self.exit_codes.items())},
        }

    def summary(self) -> str:
        lines = [f"{k}: {v}" for k, v in self.figures().items()]
        lines += [f"fenced: {r}" for r in self.fenced_reasons[:10]]
        lines += [f"VIOLATION {v}" for v in self.violations[:50]]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ building


def build_lives(
    mock_records: list[dict[str, Any]], deaths: dict[tuple[int, float], float | None]
) -> list[Life]:
    """Trainer lives from the mock logs (records in file order, one file per worker)."""
    lives: list[Life] = []
    current: dict[tuple[str, int], Life] = {}
    for rec in mock_records:
        worker = rec["_worker_id"]
        pid = int(rec.get("pid", -1))
        event = rec.get("event")
        if event == "start":
            life = Life(
                worker_id=worker,
                volume=rec["_volume"],
                pid=pid,
                run_id=str(rec.get("run_id")),
                epoch=int(rec.get("epoch") or 0),
                start_ts=float(rec["ts"]),
                start_step=int(rec.get("step") or 0),
                resume_from=str(rec.get("resume_from") or ""),
            )
            life.death_ts = deaths.get((pid, life.start_ts))
            lives.append(life)
            current[(worker, pid)] = life
            continue
        life = current.get((worker, pid))
        if life is None:
            continue
        if event == "step":
            life.steps.append((int(rec["step"]), float(rec["ts"])))
        elif event == "save":
            life.saves.append((int(rec["step"]), float(rec["ts"])))
        elif event == "exit":
            life.exit = rec
    return lives


def check(
    *,
    mock_records: list[dict[str, Any]],
    deaths: dict[tuple[int, float], float | None],
    worker_events: list[dict[str, Any]],
    workers: list[dict[str, Any]],
    commander_runs: dict[str, dict[str, Any]],
    remote_states: dict[str, dict[str, Any] | None],
    expected_runs: list[str],
    max_steps: int,
    save_steps: int,
    actions: list[dict[str, Any]] = (),  # type: ignore[assignment]
    remote_history: dict[str, list[dict[str, Any]]] | None = None,
    poisoned: dict[str, float] | None = None,
    commit_fail_runs: list[str] = (),  # type: ignore[assignment]
) -> ChaosReport:
    """Check every invariant; the report holds the violations and the figures."""
    rep = ChaosReport()
    lives = build_lives(mock_records, deaths)
    rep.trainers = len(lives)
    workers_by_id = {(w["worker_id"], w.get("volume")): w for w in workers}  # duplicate ids: one per volume
    eras = sorted(float(a["ts"]) for a in actions if a.get("action") == "state_lost_up")
    poisoned = poisoned or {}
    _count_actions(rep, actions)

    events_by_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in worker_events:
        events_by_run[str(ev.get("run_id"))].append(ev)
    lives_by_run: dict[str, list[Life]] = defaultdict(list)
    for life in lives:
        lives_by_run[life.run_id].append(life)
    _check_workers(rep, workers, worker_events, set(poisoned) | set(commit_fail_runs))

    for run_id in sorted(set(events_by_run) | set(lives_by_run) | set(expected_runs)):
        _check_run(
            rep,
            run_id,
            lives_by_run.get(run_id, []),
            events_by_run.get(run_id, []),
            commander_runs.get(run_id),
            workers_by_id,
            save_steps,
            eras,
            commits=run_id not in commit_fail_runs,
        )
        _check_storage(rep, run_id, (remote_history or {}).get(run_id, []), events_by_run.get(run_id, []))

    special = set(poisoned) | set(commit_fail_runs)
    normal = [r for r in expected_runs if r not in special]
    rep.runs_expected = len(normal)
    for run_id in normal:
        detail = commander_runs.get(run_id)
        if detail is None and _completed_before_state_loss(events_by_run.get(run_id, []), eras):
            detail = {"status": "completed", "step": max_steps, "latest_checkpoint": {"step": max_steps}}
        problems = _completion(
            run_id,
            lives_by_run.get(run_id, []),
            detail,
            remote_states.get(run_id),
            max_steps,
        )
        if problems:
            rep.violations.append(Violation("incomplete", run_id, "; ".join(problems)))
        else:
            rep.runs_completed += 1
    _check_special_ends(
        rep, _known_ends(commander_runs, events_by_run, eras, list(actions)), poisoned, list(commit_fail_runs)
    )
    _attribute_fences(rep, worker_events, list(actions))
    return rep


def _count_actions(rep: ChaosReport, actions: list[dict[str, Any]]) -> None:
    counters = {"commander_up": "commander_restarts", "partition": "partitions", "pause": "pauses"}
    counters["block_output"] = "output_blocks"
    for a in actions:
        kind = a.get("action")
        if kind == "signal" and not str(a.get("moment", "")).startswith("shutdown"):
            rep.kills[f"{a['signal']}/{a.get('moment', 'random')}"] += 1
        elif kind in counters:
            setattr(rep, counters[kind], getattr(rep, counters[kind]) + 1)
        elif kind in ("duplicate_worker_id", "slow_clients", "state_lost_up"):
            rep.faults[f"{kind}/{a['mode']}" if a.get("mode") else str(kind)] += 1


def _check_workers(
    rep: ChaosReport, workers: list[dict[str, Any]], worker_events: list[dict[str, Any]], special: set[str]
) -> None:
    """Every worker exited as a worker may: done, fenced, killed; failed only on a run built to fail."""
    for w in workers:
        code = w.get("exit_code")
        rep.exit_codes[code if code is not None else 999] += 1
        # SIGTERM's default action (before the worker installed its handler, or after it removed it on
        # the way out) is harmless only while the worker holds no lease
        mine = [
            e
            for e in worker_events
            if e.get("worker_id") == w["worker_id"] and e.get("_volume") == w.get("volume", e.get("_volume"))
        ]
        held = {(e.get("run_id"), e.get("epoch")) for e in mine if e.get("event") == "acquired"}
        ended = {(e.get("run_id"), e.get("epoch")) for e in mine if e.get("event") in END_EVENTS}
        carried = {str(r) for r, _e in held} | ({w["run_id"]} if w.get("run_id") else set())
        ok = code in (0, 3, -9) or (code == -15 and held <= ended) or (code == 4 and carried & special)
        if not ok:
            tail = _tail(Path(w["log_path"]))
            rep.violations.append(
                Violation("worker_crash", w.get("run_id"), f"worker {w['worker_id']} exited {code}: {tail}")
            )


def _check_storage(
    rep: ChaosReport, run_id: str, history: list[dict[str, Any]], events: list[dict[str, Any]]
) -> None:
    """No publish from an epoch older than one that claimed the remote first, and no epoch going down:
    from the remote's own state.json history, and from the workers' claim and sync events."""
    v = rep.violations
    rep.remote_states_seen += len(history)
    top, prev = -1, None
    for seen in history:
        epoch, step_epoch = int(seen.get("epoch") or 0), seen.get("step_epoch")
        published = prev is not None and (seen.get("step"), seen.get("manifest_sha256")) != (
            prev.get("step"),
            prev.get("manifest_sha256"),
        )
        if epoch < top:
            v.append(
                Violation(
                    "remote_epoch_regressed", run_id, f"remote epoch went from {top} to {epoch}: {seen}"
                )
            )
        if published and seen.get("step") is not None and step_epoch is not None and int(step_epoch) < top:
            v.append(
                Violation(
                    "stale_publish",
                    run_id,
                    f"step {seen.get('step')} published by epoch {step_epoch} (revision {seen.get('revision')}) "
                    f"after the remote was claimed at epoch {top}",
                )
            )
        top, prev = max(top, epoch), seen
    claims = [
        (int(e["epoch"]), _rev(e)) for e in events if e.get("event") == "remote_claimed" and _rev(e) >= 0
    ]
    for e in events:
        if e.get("event") != "checkpoint_synced" or e.get("noop") or _rev(e) < 0:
            continue
        newer = [(ep, rev) for ep, rev in claims if ep > int(e["epoch"]) and rev < _rev(e)]
        if newer:
            v.append(
                Violation(
                    "stale_publish",
                    run_id,
                    f"epoch {e['epoch']} synced step {e.get('step')} at revision {_rev(e)}, after epoch "
                    f"{newer[0][0]} claimed the remote at revision {newer[0][1]}",
                )
            )


def _rev(event: dict[str, Any]) -> int:
    """A file:// remote's revision (a counter) from an event, or -1 (none, or a Hub commit sha)."""
    rev = event.get("revision")
    return int(rev) if isinstance(rev, (int, str)) and str(rev).isdigit() else -1


def _known_ends(
    runs: dict[str, dict[str, Any]],
    events_by_run: dict[str, list[dict[str, Any]]],
    eras: list[float],
    actions: list[dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """The commander's record of each run; for a run it forgot (its state was deleted or replaced by an
    older copy after the run had ended), its end as the driver saw the commander record it before the
    loss (``run_ended``), else as its last worker released it."""
    out = dict(runs)
    if not eras:
        return out
    for a in actions:  # the commander's own record, as the driver saw it before the loss
        if a.get("action") == "run_ended" and a.get("run_id") not in runs:
            name = {"name": a["status"], "ts": a["ts"]}
            out[a["run_id"]] = {"status": a["status"], "detail": a.get("detail"), "events": [name]}
    for run_id, events in events_by_run.items():
        if run_id in out:
            continue
        ends = [
            e for e in events if e.get("event") in ("completed", "failed", "cancelled") and e.get("released")
        ]
        if ends:
            last = max(ends, key=lambda e: float(e["ts"]))
            name = {"name": last["event"], "ts": last["ts"]}
            out[run_id] = {"status": last["event"], "detail": last.get("message"), "events": [name]}
    return out


def _check_special_ends(
    rep: ChaosReport,
    runs: dict[str, dict[str, Any]],
    poisoned: dict[str, float],
    commit_fail_runs: list[str],
) -> None:
    """A poisoned run ends failed naming its remote's epoch (or had completed before the poison); a run
    whose commits all fail ends failed saying its final checkpoint was not committed."""
    for run_id, when in sorted(poisoned.items()):
        rep.poisoned_runs += 1
        detail = runs.get(run_id) or {}
        done_before = detail.get("status") == "completed" and any(
            e.get("name") == "completed" and float(e["ts"]) < when for e in detail.get("events") or []
        )
        if detail.get("status") == "failed" and str(POISON_EPOCH) in str(detail.get("detail")):
            rep.poisoned_ended_failed += 1
        elif not done_before:
            rep.violations.append(
                Violation(
                    "poisoned_run_open",
                    run_id,
                    f"status {detail.get('status')} ({str(detail.get('detail'))[:300]}) after its remote was "
                    f"poisoned at epoch {POISON_EPOCH}",
                )
            )
    for run_id in commit_fail_runs:
        rep.commit_fail_runs += 1
        detail = runs.get(run_id) or {}
        if detail.get("status") == "failed" and "was not committed" in str(detail.get("detail")):
            rep.commit_fail_ended_failed += 1
        else:
            rep.violations.append(
                Violation(
                    "commit_fail_run_open",
                    run_id,
                    f"status {detail.get('status')} ({str(detail.get('detail'))[:300]}): every commit failed",
                )
            )


def _attribute_fences(
    rep: ChaosReport, worker_events: list[dict[str, Any]], actions: list[dict[str, Any]]
) -> None:
    """Why each worker fenced itself: its link was cut, the commander was down, or neither (suspicious:
    a worker that could not renew on a healthy loopback). A restart after which a worker fenced itself
    was not survived: the promise is that an outage shorter than the margin is ridden through."""
    ttl = max((float(a.get("ttl_s", 0)) for a in actions if a.get("action") == "settings"), default=0.0)
    # a worker's own faults, as (start action, end action, cause): its link cut, it stopped, its output stalled
    kinds = [("partition", "heal", "partition"), ("pause", "resume", "pause")]
    kinds.append(("block_output", "unblock_output", "blocked_output"))
    cuts: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for start, end, cause in kinds:
        for a in actions:
            if a.get("action") != start:
                continue
            until = next(
                (
                    h["ts"]
                    for h in actions
                    if h.get("action") == end and h.get("worker_id") == a["worker_id"] and h["ts"] >= a["ts"]
                ),
                float("inf"),
            )
            cuts[a["worker_id"]].append((a["ts"], until, cause))
    outages: list[tuple[float, float]] = []
    for a in actions:
        if a.get("action") == "commander_kill":
            up = next(
                (u["ts"] for u in actions if u.get("action") == "commander_up" and u["ts"] >= a["ts"]),
                float("inf"),
            )
            outages.append((a["ts"], up))
    lost: list[tuple[float, float]] = []
    for a in actions:
        if a.get("action") == "state_lost_kill":
            up = next(
                (u["ts"] for u in actions if u.get("action") == "state_lost_up" and u["ts"] >= a["ts"]),
                float("inf"),
            )
            lost.append((a["ts"], up))
    fenced_restarts: set[float] = set()
    for ev in worker_events:
        if ev.get("event") != "fenced":
            continue
        ts = float(ev["ts"])
        window = max(ttl, 3.0)  # a fence follows its cause by at most ttl - margin (+ a kill grace)
        own = [c for start, end, c in cuts.get(str(ev.get("worker_id")), []) if start <= ts <= end + window]
        if own:
            cause = own[0]
        elif any(start <= ts <= end + window for start, end in lost):
            cause = "state_lost"  # its holder learns on its next renew: the new state does not know it
        else:
            hit = [start for start, end in outages if start <= ts <= end + window]
            cause = "commander_restart" if hit else "other"
            fenced_restarts.update(hit)
        rep.fenced_by_cause[cause] += 1
        rep.fenced_reasons.append(
            f"{ev.get('run_id')} epoch {ev.get('epoch')} ({cause}): {ev.get('message')}"
        )
    rep.restarts_that_fenced = len(fenced_restarts)


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-n:])


def _check_run(
    rep: ChaosReport,
    run_id: str,
    lives: list[Life],
    events: list[dict[str, Any]],
    detail: dict[str, Any] | None,
    workers: dict[tuple[str, str], dict[str, Any]],
    save_steps: int,
    eras: list[float] = (),  # type: ignore[assignment]
    *,
    commits: bool = True,
) -> None:
    """The run's invariants; ``commits=False`` for a run built so that no checkpoint ever commits (what
    an epoch resumes from and loses is then no promise the relay can keep)."""
    v = rep.violations
    lives = sorted(lives, key=lambda life: life.start_ts)

    # -- mutual exclusion: every earlier trainer was seen dead before a later one started
    latest_death, latest_who = float("-inf"), None
    for life in lives:
        if life.death_ts is None:
            v.append(
                Violation(
                    "trainer_outlived",
                    run_id,
                    f"trainer pid {life.pid} (epoch {life.epoch}, {life.worker_id}) still alive after every worker stopped",
                )
            )
        if latest_who is not None and latest_death >= life.start_ts:
            v.append(
                Violation(
                    "overlap",
                    run_id,
                    f"trainer pid {life.pid} (epoch {life.epoch}, {life.worker_id}) started at {life.start_ts:.3f} "
                    f"while {latest_who} was alive until {latest_death:.3f}",
                )
            )
        death = life.death_ts if life.death_ts is not None else float("inf")
        if death >= latest_death:
            latest_death, latest_who = death, f"pid {life.pid} (epoch {life.epoch}, {life.worker_id})"
    _alive_after_grant(v, run_id, lives, detail)
    for prev, nxt in zip(lives, lives[1:], strict=False):
        if nxt.epoch < prev.epoch:
            v.append(
                Violation(
                    "epoch_order",
                    run_id,
                    f"trainer of epoch {nxt.epoch} started after one of epoch {prev.epoch}",
                )
            )

    # -- grants: strictly increasing epochs, none twice (workers' events and the commander's)
    acquired = sorted((e for e in events if e.get("event") == "acquired"), key=lambda e: e["ts"])
    for era in _by_era(acquired, eras):
        _strictly_increasing(v, run_id, [(e["epoch"], e["worker_id"]) for e in era], "worker events")
    grant_of: dict[int, dict[str, Any]] = {}
    for e in acquired:
        grant_of.setdefault(int(e["epoch"]), e)
    if detail is not None:
        cmd_events = detail.get("events") or []
        cmd_acq = sorted((e for e in cmd_events if e.get("name") == "acquired"), key=lambda e: e["ts"])
        cmd_acq = _by_era(cmd_acq, eras)[-1]  # the commander's timeline starts again with its state
        _strictly_increasing(
            v, run_id, [(e["epoch"], e.get("worker_id")) for e in cmd_acq], "commander events"
        )
        granted_at = {int(e["epoch"]): float(e["ts"]) for e in cmd_acq}
        for e in cmd_events:
            if e.get("name") not in REPORTED_EVENTS:
                continue
            later = [ts for ep, ts in granted_at.items() if ep > int(e["epoch"])]
            if later and float(e["ts"]) > min(later):
                v.append(
                    Violation(
                        "stale_report_accepted",
                        run_id,
                        f"commander recorded {e['name']} of epoch {e['epoch']} from {e.get('worker_id')} at "
                        f"{e['ts']:.3f}, after granting a later epoch at {min(later):.3f}",
                    )
                )

    # -- segments: one per epoch that ran a trainer
    by_epoch: dict[int, list[Life]] = defaultdict(list)
    for life in lives:
        by_epoch[life.epoch].append(life)
    segments: list[Segment] = []
    for epoch in sorted(by_epoch):
        group = by_epoch[epoch]
        owners = {life.worker_id for life in group}
        if len(owners) > 1:
            v.append(
                Violation(
                    "duplicate_epoch", run_id, f"epoch {epoch} trained by several workers: {sorted(owners)}"
                )
            )
        worker_id = group[0].worker_id
        grant = grant_of.get(epoch)
        if grant is None or grant.get("worker_id") != worker_id:
            v.append(
                Violation(
                    "trainer_without_lease",
                    run_id,
                    f"{worker_id} ran a trainer under epoch {epoch} without that grant",
                )
            )
        ends = [
            e
            for e in events
            if e.get("epoch") == epoch and e.get("worker_id") == worker_id and e.get("event") in END_EVENTS
        ]
        worker = workers.get((worker_id, group[0].volume)) or workers.get((worker_id, None), {})
        end = _end_of(ends, worker)
        rep.ends[end] += 1
        segments.append(
            Segment(run_id, epoch, worker_id, group[0].volume, group, grant["ts"] if grant else None, end)
        )
        _check_resume(v, run_id, group, events, lives)
    rep.epochs += len({int(e["epoch"]) for e in acquired})

    if not commits:
        return
    # -- what each new epoch resumed from, against what the previous one reached and what was durable
    synced = [
        (int(e["step"]), float(e["ts"]))
        for e in events
        if e.get("event") == "checkpoint_synced" and "step" in e
    ]
    for prev, nxt in zip(segments, segments[1:], strict=False):
        lost = prev.last_step - nxt.resume_step
        same = prev.volume == nxt.volume
        rep.losses.append(Loss(run_id, prev.epoch, prev.end, lost, same))
        if prev.end == "completed" and not _forgotten_completion(prev, nxt, eras):
            v.append(
                Violation(
                    "closed_run_granted",
                    run_id,
                    f"epoch {nxt.epoch} trained after epoch {prev.epoch} completed",
                )
            )
        elif prev.end == "graceful" and lost > 0:
            v.append(
                Violation(
                    "graceful_loss",
                    run_id,
                    f"epoch {prev.epoch} was preempted gracefully at step {prev.last_step}, epoch {nxt.epoch} "
                    f"resumed at {nxt.resume_step} ({lost} steps lost, {'same' if same else 'another'} volume)",
                )
            )
        elif prev.end != "graceful" and same and lost > save_steps:
            v.append(
                Violation(
                    "hard_loss",
                    run_id,
                    f"epoch {prev.epoch} ended {prev.end} at step {prev.last_step}; epoch {nxt.epoch} on the same "
                    f"volume resumed at {nxt.resume_step}: {lost} steps lost > one interval ({save_steps})",
                )
            )
    for nxt in segments:
        if nxt.acquired_ts is None:
            continue
        durable = [s for s, ts in synced if ts < nxt.acquired_ts]
        durable += [
            s
            for life in lives
            if life.volume == nxt.volume and life.start_ts < nxt.acquired_ts
            for s, ts in life.saves
            if ts < nxt.acquired_ts
        ]
        newest = max(durable, default=0)
        if nxt.resume_step < newest:
            v.append(
                Violation(
                    "resume_not_newest",
                    run_id,
                    f"epoch {nxt.epoch} ({nxt.worker_id}) resumed at step {nxt.resume_step}, but step {newest} was "
                    "durable (synced, or complete on its volume) when it was granted",
                )
            )


def _alive_after_grant(
    v: list[Violation], run_id: str, lives: list[Life], detail: dict[str, Any] | None
) -> None:
    """Every trainer was seen dead before the commander granted a later epoch of its run."""
    grants = [
        (int(e["epoch"]), float(e["ts"]))
        for e in (detail or {}).get("events") or []
        if e.get("name") == "acquired"
    ]
    for life in lives:
        later = [ts for epoch, ts in grants if epoch > life.epoch]
        if later and (life.death_ts is None or life.death_ts >= min(later)):
            dead = "never seen dead" if life.death_ts is None else f"seen dead at {life.death_ts:.3f}"
            v.append(
                Violation(
                    "alive_after_grant",
                    run_id,
                    f"trainer pid {life.pid} (epoch {life.epoch}, {life.worker_id}) {dead}, but epoch "
                    f"{min(e for e, ts in grants if e > life.epoch)} was granted at {min(later):.3f}",
                )
            )


def _forgotten_completion(prev: Segment, nxt: Segment, eras: list[float]) -> bool:
    """A completed run granted again by a commander that lost its state in between (it cannot know the
    run completed): harmless when the new epoch resumed at the final step and trained nothing more."""
    start = prev.acquired_ts or 0.0
    end = nxt.acquired_ts if nxt.acquired_ts is not None else float("inf")
    lost_between = any(start < era < end for era in eras)
    return lost_between and nxt.resume_step >= prev.last_step and nxt.last_step <= prev.last_step


def _by_era(events: list[dict[str, Any]], eras: list[float]) -> list[list[dict[str, Any]]]:
    """Grants split at each restart of the commander on a lost state (their epochs may start again)."""
    out: list[list[dict[str, Any]]] = [[]]
    bounds = iter(eras)
    bound = next(bounds, None)
    for e in events:
        while bound is not None and float(e["ts"]) >= bound:
            out.append([])
            bound = next(bounds, None)
        out[-1].append(e)
    return out


def _strictly_increasing(v: list[Violation], run_id: str, grants: list[tuple[int, Any]], where: str) -> None:
    seen: dict[int, Any] = {}
    last = None
    for epoch, who in grants:
        epoch = int(epoch)
        if epoch in seen:
            v.append(
                Violation(
                    "duplicate_epoch",
                    run_id,
                    f"epoch {epoch} granted twice ({seen[epoch]}, {who}) in {where}",
                )
            )
        elif last is not None and epoch <= last:
            v.append(Violation("epoch_order", run_id, f"epoch {epoch} granted after epoch {last} in {where}"))
        seen.setdefault(epoch, who)
        last = epoch if last is None else max(last, epoch)


def _end_of(ends: list[dict[str, Any]], worker: dict[str, Any]) -> str:
    if ends:
        last = ends[-1]
        if last["event"] == "preempted":
            return "graceful"
        if last["event"] in ("completed", "cancelled") and last.get("released") is False:
            return f"{last['event']}_unreleased"  # the commander never heard it: the run stays open
        return str(last["event"])
    if any(sig == "SIGKILL" for _, sig in worker.get("signals", [])) or worker.get("exit_code") == -9:
        return "killed"
    return "vanished"


def _check_resume(
    v: list[Violation], run_id: str, group: list[Life], events: list[dict[str, Any]], all_lives: list[Life]
) -> None:
    first = group[0]
    resumed = [
        e
        for e in events
        if e.get("event") == "resumed"
        and e.get("epoch") == first.epoch
        and e.get("worker_id") == first.worker_id
    ]
    if not resumed:
        v.append(
            Violation(
                "resume_unverified", run_id, f"epoch {first.epoch}: no resumed event from {first.worker_id}"
            )
        )
    else:
        ev = resumed[0]
        source, step = ev.get("source"), int(ev.get("step") or 0)
        if (
            step != first.start_step
            or (source == "cold_start") != (first.start_step == 0)
            or source not in ("local", "remote", "cold_start")
        ):
            v.append(
                Violation(
                    "resume_unverified",
                    run_id,
                    f"epoch {first.epoch}: worker resumed {source} at step {step}, its trainer started at {first.start_step}",
                )
            )
    for life in group:
        if life.start_step == 0:
            if life.resume_from:
                v.append(
                    Violation(
                        "resume_unverified",
                        run_id,
                        f"pid {life.pid} started at step 0 from {life.resume_from}",
                    )
                )
            continue
        m = _STEP_DIR.search(life.resume_from.rstrip("/"))
        if m is None or int(m.group(1)) != life.start_step:
            v.append(
                Violation(
                    "resume_unverified",
                    run_id,
                    f"pid {life.pid} resumed at step {life.start_step} from {life.resume_from!r}",
                )
            )
        written = any(
            s == life.start_step and ts < life.start_ts for other in all_lives for s, ts in other.saves
        )
        if not written:
            v.append(
                Violation(
                    "resume_unverified",
                    run_id,
                    f"pid {life.pid} (epoch {life.epoch}) resumed at step {life.start_step}, a checkpoint no trainer had completed",
                )
            )


def _completed_before_state_loss(events: list[dict[str, Any]], eras: list[float]) -> bool:
    """The run was released as completed, and then the commander lost its state (so it cannot know it):
    its remote and its trainers still have to show it whole."""
    done = [float(e["ts"]) for e in events if e.get("event") == "completed" and e.get("released")]
    return bool(done) and any(min(done) < era for era in eras)


def _completion(
    run_id: str,
    lives: list[Life],
    detail: dict[str, Any] | None,
    remote: dict[str, Any] | None,
    max_steps: int,
) -> list[str]:
    problems = []
    if detail is None:
        return ["the commander does not know the run"]
    if detail.get("status") != "completed":
        problems.append(f"status {detail.get('status')} ({detail.get('detail')})")
    if detail.get("step") != max_steps:
        problems.append(f"commander step {detail.get('step')} != {max_steps}")
    ckpt = detail.get("latest_checkpoint") or {}
    if ckpt.get("step") != max_steps:
        problems.append(f"commander latest checkpoint {ckpt.get('step')} != {max_steps}")
    if remote is None or remote.get("step") != max_steps:
        problems.append(f"remote state step {None if remote is None else remote.get('step')} != {max_steps}")
    trained = {s for life in lives for s, _ in life.steps}
    missing = sorted(set(range(1, max_steps + 1)) - trained)
    if missing:
        problems.append(f"steps never trained: {missing[:10]}{'...' if len(missing) > 10 else ''}")
    if lives:
        last = max(lives, key=lambda life: life.start_ts)
        if last.exit is None or last.exit.get("reason") != "done" or last.exit.get("step") != max_steps:
            problems.append(f"the last trainer did not finish at step {max_steps}: {last.exit}")
    return problems


def check_artifacts(art: Any) -> ChaosReport:
    """:func:`check` over a :class:`relay_testkit.chaos_cluster.ChaosArtifacts`."""
    deaths = {(t.pid, t.start_ts): t.death_ts for t in art.trainers}
    rep = check(
        mock_records=art.mock_records(),
        deaths=deaths,
        worker_events=art.worker_events(),
        workers=art.workers,
        commander_runs=art.runs,
        remote_states=art.remote_states,
        expected_runs=art.expected_runs,
        max_steps=art.settings.max_steps,
        save_steps=art.settings.save_steps,
        actions=art.actions,
        remote_history=art.remote_history,
        poisoned=art.poisoned,
        commit_fail_runs=art.commit_fail_runs,
    )
    rep.duration_s = art.finished_ts - art.started_ts
    return rep
