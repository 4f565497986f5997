"""max_restarts (and max_duration_s) of submitted runs, enforced by the commander."""

from __future__ import annotations

import time

import pytest

from relay.commander import runs
from relay.schema import ReleaseOutcome, RunStatus
from tests.commander.calls import acquire, get_run, leases_of, release, report
from tests.jobs.calls import spec, submit


async def test_a_failed_release_with_restarts_left_waits_for_the_next_worker(commander):
    await submit(commander, spec("r", max_restarts=2))
    for restart in (1, 2):
        _, grant = await acquire(commander, None, worker_id=f"w{restart}")
        assert grant["run_id"] == "r"
        assert grant["spec"]["max_restarts"] == 2 - (restart - 1)  # what is left, handed to the worker
        status, answer = await release(
            commander, grant, "failed", worker_id=f"w{restart}", detail="pod broke"
        )
        assert status == 200 and answer["status"] == "preempted"
        run = await get_run(commander, "r")
        assert run["status"] == "preempted" and run["restarts"] == restart and run["max_restarts"] == 2
        last = run["events"][-1]
        assert last["name"] == "preempted" and f"restart {restart} of 2" in last["message"]
        assert "pod broke" in last["message"] and run["detail"] == "pod broke"
    _, grant = await acquire(commander, None, worker_id="w3")
    assert grant["spec"]["max_restarts"] == 0
    status, answer = await release(commander, grant, "failed", worker_id="w3")
    assert answer["status"] == "failed"
    run = await get_run(commander, "r")
    assert run["status"] == "failed" and run["restarts"] == 2
    assert (await acquire(commander, None, worker_id="w4"))[0] == 404  # a failed run is not handed out
    assert leases_of(commander).stats.restarts == 2


async def test_a_failure_that_would_repeat_anywhere_is_not_handed_out_again(commander):
    """restartable=false (the trainer's config/data error): another pod would fail the same way."""
    await submit(commander, spec("cfg", max_restarts=3))
    _, grant = await acquire(commander, None, worker_id="w1")
    status, answer = await release(
        commander, grant, "failed", worker_id="w1", detail="bad train key", restartable=False
    )
    assert status == 200 and answer["status"] == "failed"
    run = await get_run(commander, "cfg")
    assert run["status"] == "failed" and run["restarts"] == 0
    assert (await acquire(commander, None, worker_id="w2"))[0] == 404
    assert leases_of(commander).stats.restarts == 0


async def test_trainer_restarts_reported_by_the_worker_use_the_same_budget(commander):
    await submit(commander, spec("t", max_restarts=3))
    _, grant = await acquire(commander, None)
    for _ in range(2):
        assert (await report(commander, grant, step=1, event="trainer_restarted", message="crash"))[0] == 200
    run = await get_run(commander, "t")
    assert run["restarts"] == 2
    _, answer = await release(commander, grant, "failed")
    assert answer["status"] == "preempted"  # one restart was left: the commander used it
    _, grant = await acquire(commander, None, worker_id="w2")
    assert grant["spec"]["max_restarts"] == 0
    _, answer = await release(commander, grant, "failed", worker_id="w2")
    assert answer["status"] == "failed"


async def test_runs_without_a_spec_and_cancelled_runs_are_never_restarted(commander):
    _, grant = await acquire(commander, "plain")
    assert (await release(commander, grant, "failed"))[1]["status"] == "failed"
    await submit(commander, spec("c", max_restarts=5))
    _, grant = await acquire(commander, "c")
    assert (await commander.post("/api/runs/c/cancel")).status == 200
    assert (await release(commander, grant, "failed"))[1]["status"] == "cancelled"
    assert (await get_run(commander, "c"))["restarts"] == 0


class Clocks:
    """The lease manager's two clocks, driven by the test: ``step`` moves both (time passes), ``jump`` only
    the wall clock (an NTP step)."""

    def __init__(self, commander) -> None:
        self.wall, self.mono = time.time(), 5_000.0  # the wall clock starts at the real one's time
        leases = leases_of(commander)
        leases.wall = lambda: self.wall
        leases.monotonic = lambda: self.mono

    def step(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def jump(self, seconds: float) -> None:
        self.wall += seconds


async def test_max_duration_is_a_budget_across_leases(commander):
    await submit(commander, spec("d", max_duration_s=100.0, max_restarts=5))
    clocks = Clocks(commander)
    _, grant = await acquire(commander, None)
    assert grant["spec"]["max_duration_s"] == 100.0
    clocks.step(60)
    await release(commander, grant, "preempted")
    _, grant = await acquire(commander, None, worker_id="w2")
    assert grant["spec"]["max_duration_s"] == 40.0  # what is left
    clocks.step(45)
    _, answer = await release(commander, grant, "failed", worker_id="w2", detail="max_runtime_s reached")
    assert answer["status"] == "failed"  # restarts were left, running time was not


@pytest.mark.parametrize("jump_s", [3600.0, -3600.0])
async def test_a_wall_clock_step_charges_nothing_to_the_budget(commander, jump_s):
    """An NTP step of an hour during a lease used to end the run failed (issue 13, point 7)."""
    await submit(commander, spec("ntp", max_duration_s=100.0, max_restarts=5))
    clocks = Clocks(commander)
    _, grant = await acquire(commander, None)
    clocks.step(10)
    clocks.jump(jump_s)
    clocks.step(10)
    _, answer = await release(commander, grant, "failed", detail="the trainer crashed")
    assert answer["status"] == "preempted"  # restarted: 20 s used, 80 s and 4 restarts left
    _, grant = await acquire(commander, None, worker_id="w2")
    assert grant["spec"]["max_duration_s"] == 80.0


async def test_the_budget_counted_under_a_lease_survives_a_commander_restart(make_commander, tmp_path):
    state = tmp_path / "budget.db"
    first = await make_commander(state=state)
    await submit(first, spec("long", max_duration_s=30.0, max_restarts=5))
    clocks = Clocks(first)
    _, grant = await acquire(first, None)
    clocks.step(40)
    assert (await report(first, grant, step=3))[0] == 200  # the report saves what the lease has used
    await first.close()
    second = await make_commander(state=state)  # real clocks: no time passes to speak of
    _, answer = await release(second, grant, "failed", detail="the trainer crashed")
    assert answer["status"] == "failed"  # 40 s counted before the restart: nothing left to restart with


def test_the_release_rule_table():
    S, Out = RunStatus, ReleaseOutcome
    assert runs.status_after_release(Out.failed, cancel_requested=False, restart_allowed=True) is S.preempted
    assert runs.status_after_release(Out.failed, cancel_requested=False) is S.failed
    assert runs.status_after_release(Out.failed, cancel_requested=True, restart_allowed=True) is S.cancelled
    assert (
        runs.status_after_release(Out.completed, cancel_requested=False, restart_allowed=True) is S.completed
    )
    for out in (Out.preempted, Out.failed):  # a run that can never be granted again is not handed on
        assert (
            runs.status_after_release(out, cancel_requested=False, restart_allowed=True, grantable=False)
            is S.failed
        )
    assert runs.status_after_release(Out.preempted, cancel_requested=True, grantable=False) is S.cancelled
    assert runs.status_after_release(Out.completed, cancel_requested=False, grantable=False) is S.completed
