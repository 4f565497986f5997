"""The chaos checker itself: a clean history passes, and each broken promise is caught by name.

The chaos tests are only as good as this checker, so every invariant is shown failing on a small
hand-written history (two epochs of one run, on one volume) with exactly one thing wrong.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from relay_testkit.chaos_checks import FENCING_KINDS, check

RUN = "r"
VOL = "/vol-a"
MAX_STEPS = 20
SAVE = 5


def _mock(worker: str, pid: int, epoch: int, event: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {
        "event": event,
        "pid": pid,
        "epoch": epoch,
        "run_id": RUN,
        "ts": ts,
        "_worker_id": worker,
        "_volume": VOL,
        **kw,
    }


def _ev(worker: str, epoch: int, event: str, ts: float, **kw: Any) -> dict[str, Any]:
    return {
        "event": event,
        "run_id": RUN,
        "worker_id": worker,
        "epoch": epoch,
        "ts": ts,
        "_volume": VOL,
        **kw,
    }


def history() -> dict[str, Any]:
    """w1 trains steps 1-12 (saves 5, 10) and is SIGKILLed; w2 on the same volume resumes at 10 and completes."""
    mock = [_mock("w1", 100, 1, "start", 1.1, step=0, resume_from="")]
    mock += [_mock("w1", 100, 1, "step", 1.1 + 0.1 * s, step=s) for s in range(1, 13)]
    mock += [_mock("w1", 100, 1, "save", 1.65, step=5), _mock("w1", 100, 1, "save", 2.15, step=10)]
    mock.sort(key=lambda r: r["ts"])
    mock2 = [_mock("w2", 200, 2, "start", 7.1, step=10, resume_from=f"{VOL}/runs/r/ckpt/step_00000010")]
    mock2 += [_mock("w2", 200, 2, "step", 7.1 + 0.1 * (s - 10), step=s) for s in range(11, 21)]
    mock2 += [_mock("w2", 200, 2, "save", 7.65, step=15), _mock("w2", 200, 2, "save", 8.15, step=20)]
    mock2.sort(key=lambda r: r["ts"])
    mock2.append(_mock("w2", 200, 2, "exit", 8.2, step=20, reason="done"))
    events = [
        _ev("w1", 1, "acquired", 1.0),
        _ev("w1", 1, "resumed", 1.05, step=0, source="cold_start"),
        _ev("w1", 1, "checkpoint_synced", 1.7, step=5),
        _ev("w2", 2, "acquired", 7.0),
        _ev("w2", 2, "resumed", 7.05, step=10, source="local"),
        _ev("w2", 2, "checkpoint_synced", 8.3, step=20),
        _ev("w2", 2, "completed", 8.4),
    ]
    commander = {
        "status": "completed",
        "step": MAX_STEPS,
        "latest_checkpoint": {"step": MAX_STEPS, "path": "x"},
        "events": [
            {"ts": 1.0, "epoch": 1, "name": "acquired", "worker_id": "w1"},
            {"ts": 1.8, "epoch": 1, "name": "checkpoint_committed", "worker_id": "w1"},
            {"ts": 7.0, "epoch": 2, "name": "acquired", "worker_id": "w2"},
            {"ts": 8.4, "epoch": 2, "name": "completed", "worker_id": "w2"},
        ],
    }
    return {
        "mock_records": mock + mock2,
        "deaths": {(100, 1.1): 3.0, (200, 7.1): 8.3},
        "worker_events": events,
        "workers": [
            {"worker_id": "w1", "exit_code": -9, "signals": [(3.0, "SIGKILL")], "log_path": "/nonexistent"},
            {"worker_id": "w2", "exit_code": 0, "signals": [], "log_path": "/nonexistent"},
        ],
        "commander_runs": {RUN: commander},
        "remote_states": {RUN: {"step": MAX_STEPS, "epoch": 2}},
        "expected_runs": [RUN],
        "max_steps": MAX_STEPS,
        "save_steps": SAVE,
    }


def kinds(h: dict[str, Any]) -> set[str]:
    return {v.kind for v in check(**h).violations}


def test_a_clean_history_passes_with_its_figures() -> None:
    report = check(**history())
    assert report.violations == []
    assert report.runs_completed == 1
    assert report.ends == {"killed": 1, "completed": 1}
    assert report.max_lost(hard=True) == 2 and report.max_lost(hard=True, same_volume=True) == 2


def _mutate(fn) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    h = copy.deepcopy(history())
    fn(h)
    return h


def _set_death(h: dict[str, Any], key: tuple[int, float], ts: float | None) -> None:
    h["deaths"][key] = ts


def _graceful(h: dict[str, Any]) -> None:
    h["worker_events"].append(_ev("w1", 1, "preempted", 3.0, released=True))
    h["workers"][0].update(exit_code=0, signals=[(2.9, "SIGTERM")])


def _lose_a_checkpoint(h: dict[str, Any]) -> None:  # w1 reached 17 and saved 15, w2 still resumes at 10
    h["mock_records"] += [_mock("w1", 100, 1, "step", 2.5 + 0.01 * s, step=s) for s in range(13, 18)]
    h["mock_records"].append(_mock("w1", 100, 1, "save", 2.6, step=15))


def _stale_report(h: dict[str, Any]) -> None:
    h["commander_runs"][RUN]["events"].append(
        {"ts": 7.5, "epoch": 1, "name": "checkpoint_committed", "worker_id": "w1"}
    )


def _duplicate_grant(h: dict[str, Any]) -> None:
    h["worker_events"].append(_ev("w3", 2, "acquired", 7.2))


def _wrong_resume_dir(h: dict[str, Any]) -> None:
    start = next(r for r in h["mock_records"] if r["pid"] == 200 and r["event"] == "start")
    start["resume_from"] = f"{VOL}/runs/r/ckpt/step_00000005"


def _resume_never_written(h: dict[str, Any]) -> None:
    h["mock_records"] = [r for r in h["mock_records"] if not (r["event"] == "save" and r["step"] == 10)]


def _not_completed(h: dict[str, Any]) -> None:
    h["commander_runs"][RUN]["status"] = "running"


def _crashed_worker(h: dict[str, Any]) -> None:
    h["workers"][1]["exit_code"] = 1


def _epoch_without_grant(h: dict[str, Any]) -> None:
    for r in h["mock_records"]:
        if r["pid"] == 200:
            r["epoch"] = 3
    h["deaths"] = {(100, 1.1): 3.0, (200, 7.1): 8.3}


def _grants_out_of_order(h: dict[str, Any]) -> None:
    h["commander_runs"][RUN]["events"].append({"ts": 7.5, "epoch": 1, "name": "acquired", "worker_id": "w9"})


def _trained_after_completion(h: dict[str, Any]) -> None:
    h["worker_events"].append(_ev("w1", 1, "completed", 3.0))


@pytest.mark.parametrize(
    ("mutation", "expected"),
    [
        (lambda h: _set_death(h, (100, 1.1), 7.2), "overlap"),
        (lambda h: _set_death(h, (200, 7.1), None), "trainer_outlived"),
        (_graceful, "graceful_loss"),
        (_lose_a_checkpoint, "hard_loss"),
        (_lose_a_checkpoint, "resume_not_newest"),
        (_stale_report, "stale_report_accepted"),
        (_duplicate_grant, "duplicate_epoch"),
        (_grants_out_of_order, "duplicate_epoch"),
        (_wrong_resume_dir, "resume_unverified"),
        (_resume_never_written, "resume_unverified"),
        (_not_completed, "incomplete"),
        (_crashed_worker, "worker_crash"),
        (_epoch_without_grant, "trainer_without_lease"),
        (_trained_after_completion, "closed_run_granted"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_each_broken_promise_is_caught(mutation, expected: str) -> None:  # type: ignore[no-untyped-def]
    found = kinds(_mutate(mutation))
    assert expected in found, found


def test_fencing_violations_count_only_the_fencing_kinds() -> None:
    report = check(**_mutate(lambda h: (_set_death(h, (100, 1.1), 7.2), _not_completed(h))))
    assert {v.kind for v in report.violations} == {"overlap", "alive_after_grant", "incomplete"}
    assert report.fencing_violations == 2 and report.figures()["overlaps"] == 2
    assert "overlap" in FENCING_KINDS and "incomplete" not in FENCING_KINDS


def test_two_processes_with_one_worker_id_are_told_apart_by_their_volumes() -> None:
    """A copied WORKER_ID on another volume: its trainer starting while the first one lives is an overlap,
    and each process's exit is judged by its own volume's events."""
    h = history()
    for rec in h["mock_records"]:
        if rec["pid"] == 200:
            rec.update(_worker_id="w1", _volume="/vol-b")
    for ev in h["worker_events"]:
        if ev["worker_id"] == "w2":
            ev.update(worker_id="w1", _volume="/vol-b")
    for ev in h["commander_runs"][RUN]["events"]:
        ev["worker_id"] = "w1"
    h["workers"] = [
        {"worker_id": "w1", "volume": VOL, "exit_code": -9, "signals": [(3.0, "SIGKILL")], "log_path": "/x"},
        {"worker_id": "w1", "volume": "/vol-b", "exit_code": 0, "signals": [], "log_path": "/x"},
    ]
    report = check(**h)
    assert report.violations == [] and report.ends == {"killed": 1, "completed": 1}, report.summary()
    h["deaths"][(100, 1.1)] = 7.2  # the first process's trainer outlived the second one's start
    assert "overlap" in {v.kind for v in check(**h).violations}


def _wiped_commander(h: dict[str, Any]) -> None:
    """The commander's state was deleted at ts 5: its timeline starts again (w2's grant is its epoch 1)."""
    h["actions"] = [
        {"ts": 4.0, "action": "state_lost_kill", "mode": "delete"},
        {"ts": 5.0, "action": "state_lost_up", "mode": "delete"},
    ]
    h["commander_runs"][RUN]["events"] = [
        {"ts": 7.0, "epoch": 1, "name": "acquired", "worker_id": "w2"},
        {"ts": 8.4, "epoch": 1, "name": "completed", "worker_id": "w2"},
    ]


def test_a_wiped_commander_starts_a_new_era_of_grants_but_trainers_still_go_forward() -> None:
    h = _mutate(_wiped_commander)
    report = check(**h)
    assert report.violations == [] and report.faults == {"state_lost_up/delete": 1}, report.summary()
    # a trainer that ran under an epoch already trained before the wipe: caught
    for rec in h["mock_records"]:
        if rec["pid"] == 200:
            rec["epoch"] = 1
    for ev in h["worker_events"]:
        if ev["worker_id"] == "w2":
            ev["epoch"] = 1
    assert "duplicate_epoch" in {v.kind for v in check(**h).violations}


def test_a_run_completed_before_the_state_was_lost_is_judged_by_its_remote_and_trainers() -> None:
    h = history()
    h["worker_events"][-1]["released"] = True
    h["commander_runs"] = {}  # the commander's state was deleted after the run completed
    assert "incomplete" in {v.kind for v in check(**h).violations}
    h["actions"] = [
        {"ts": 9.0, "action": "state_lost_kill", "mode": "delete"},
        {"ts": 9.5, "action": "state_lost_up", "mode": "delete"},
    ]
    assert check(**h).violations == []
    h["remote_states"][RUN]["step"] = MAX_STEPS - 5  # but its remote must still hold the last step
    assert "incomplete" in {v.kind for v in check(**h).violations}


def test_a_completed_run_granted_again_after_a_state_loss_may_only_resume_at_its_end() -> None:
    """A commander restored from an older copy re-grants a run that had completed (it cannot know): a new
    epoch that resumes at the final step and trains nothing is no violation; one that trains again is."""
    h = history()
    h["actions"] = [
        {"ts": 9.0, "action": "state_lost_kill", "mode": "restore"},
        {"ts": 9.5, "action": "state_lost_up", "mode": "restore"},
    ]
    resumed_at = f"{VOL}/runs/r/ckpt/step_{MAX_STEPS:08d}"
    h["mock_records"] += [
        _mock("w3", 300, 3, "start", 10.1, step=MAX_STEPS, resume_from=resumed_at),
        _mock("w3", 300, 3, "exit", 10.2, step=MAX_STEPS, reason="done"),
    ]
    h["deaths"][(300, 10.1)] = 10.3
    h["worker_events"] += [
        _ev("w3", 3, "acquired", 10.0),
        _ev("w3", 3, "resumed", 10.05, step=MAX_STEPS, source="local"),
        _ev("w3", 3, "completed", 10.4, released=True),
    ]
    h["workers"].append({"worker_id": "w3", "exit_code": 0, "signals": [], "log_path": "/nonexistent"})
    h["commander_runs"][RUN]["events"] += [
        {"ts": 10.0, "epoch": 3, "name": "acquired", "worker_id": "w3"},
        {"ts": 10.4, "epoch": 3, "name": "completed", "worker_id": "w3"},
    ]
    assert "closed_run_granted" not in kinds(h), check(**h).summary()
    h["actions"] = []  # the same without a lost state: a closed run was granted
    assert "closed_run_granted" in kinds(h)


# -- the storage side and the worker-side faults of issue 13 -----------------------------------------------


def test_a_trainer_alive_when_a_later_epoch_was_granted_is_caught_even_before_the_next_one_starts() -> None:
    """w1's trainer died at 7.05: after epoch 2 was granted (7.0), before w2's trainer started (7.1)."""
    h = _mutate(lambda h: _set_death(h, (100, 1.1), 7.05))
    assert kinds(h) == {"alive_after_grant"}


def _remote(h: dict[str, Any], *states: tuple[int, int, int | None, int | None]) -> None:
    """(revision, epoch, step, step_epoch) as the remote watcher saw state.json."""
    h["remote_history"] = {
        RUN: [
            {
                "ts": 1.0 + i,
                "revision": r,
                "epoch": e,
                "step": st,
                "step_epoch": se,
                "manifest_sha256": f"m{st}",
            }
            for i, (r, e, st, se) in enumerate(states)
        ]
    }


def test_a_publish_by_an_older_epoch_after_a_newer_claim_is_a_stale_publish() -> None:
    clean = _mutate(lambda h: _remote(h, (1, 1, None, None), (2, 1, 5, 1), (3, 2, 5, 1), (4, 2, 20, 2)))
    assert kinds(clean) == set() and check(**clean).remote_states_seen == 4
    stale = _mutate(lambda h: _remote(h, (1, 1, 5, 1), (2, 2, 5, 1), (3, 2, 10, 1)))
    assert kinds(stale) == {"stale_publish"}
    regressed = _mutate(lambda h: _remote(h, (1, 1, 5, 1), (2, 2, 5, 1), (3, 1, 10, 1)))
    assert kinds(regressed) == {"stale_publish", "remote_epoch_regressed"}


def test_a_sync_event_after_a_newer_claim_is_a_stale_publish() -> None:
    def late_sync(h: dict[str, Any]) -> None:
        h["worker_events"] += [
            _ev("w2", 2, "remote_claimed", 7.02, revision="3"),
            _ev("w1", 1, "checkpoint_synced", 7.5, step=10, revision="4"),
        ]

    assert kinds(_mutate(late_sync)) == {"stale_publish"}
    ok = _mutate(lambda h: h["worker_events"].append(_ev("w2", 2, "remote_claimed", 7.02, revision="3")))
    assert kinds(ok) == set()


def test_poisoned_and_commit_fail_runs_must_end_failed_with_their_reason() -> None:
    def special(h: dict[str, Any], status: str, detail: str, *, poison: bool) -> None:
        h["commander_runs"][RUN].update(status=status, detail=detail)
        h["expected_runs"] = [RUN]
        if poison:
            h["poisoned"] = {RUN: 5.0}
        else:
            h["commit_fail_runs"] = [RUN]
        h["workers"][1]["exit_code"] = 4
        h["workers"][1]["run_id"] = RUN

    ended = _mutate(lambda h: special(h, "failed", f"its remote holds epoch {2**62}", poison=True))
    report = check(**ended)
    assert kinds(ended) == set() and report.poisoned_ended_failed == 1 and report.runs_expected == 0
    looping = _mutate(lambda h: special(h, "preempted", "released", poison=True))
    assert kinds(looping) == {"poisoned_run_open"}
    failed = _mutate(lambda h: special(h, "failed", "its final checkpoint was not committed", poison=False))
    assert kinds(failed) == set() and check(**failed).commit_fail_ended_failed == 1
    completed = _mutate(lambda h: special(h, "completed", "trainer finished", poison=False))
    assert kinds(completed) == {"commit_fail_run_open"}
    stray = _mutate(lambda h: h["workers"][1].update(exit_code=4))  # a normal run: exit 4 is a crash
    assert "worker_crash" in kinds(stray)
    # the commander failed the poisoned run, then lost its state: the driver's record of that end counts
    forgotten = _mutate(lambda h: special(h, "failed", f"its remote holds epoch {2**62}", poison=True))
    forgotten["commander_runs"] = {}
    forgotten["remote_states"][RUN]["step"] = MAX_STEPS
    assert "poisoned_run_open" in kinds(forgotten)
    forgotten["actions"] = [
        {"ts": 8.5, "action": "run_ended", "run_id": RUN, "status": "failed", "detail": f"at epoch {2**62}"},
        {"ts": 9.0, "action": "state_lost_kill", "mode": "delete"},
        {"ts": 9.5, "action": "state_lost_up", "mode": "delete"},
    ]
    assert "poisoned_run_open" not in kinds(forgotten) and check(**forgotten).poisoned_ended_failed == 1
