"""The acquire table (``lease_rules.ACQUIRE_RULES``), walked fully over HTTP: every (closed?, holder) cell
is put in place and asked, and the answer must be the table's."""

from __future__ import annotations

import pytest

from relay.commander.lease_rules import ACQUIRE_RULES, Decision, Holder
from tests.commander.calls import acquire, get_run, release, renew

CELLS = sorted(ACQUIRE_RULES, key=lambda cell: (cell[0], cell[1].value))


def test_the_table_covers_every_cell():
    assert set(ACQUIRE_RULES) == {(closed, holder) for closed in (False, True) for holder in Holder}


async def _ask(client, run_id: str, closed: bool, holder: Holder) -> tuple[dict, int, dict]:
    """Put run ``run_id`` in the cell, then ask for it as the cell's asker: (first grant, status, answer)."""
    status, grant = await acquire(client, run_id, "w1")
    assert status == 200, grant
    if closed:  # a closed run has no live lease; the holder column is who asks, and how
        assert (await release(client, grant, "completed"))[0] == 200
    elif holder is Holder.nobody:
        assert (await release(client, grant, "preempted"))[0] == 200
    proof = {"lease_id": grant["lease_id"], "epoch": grant["epoch"]}
    asker, extra = {
        Holder.nobody: ("w2", {}),
        Holder.same_worker_proven: ("w1", {"held_lease": proof}),
        Holder.same_worker: ("w1", {}),
        Holder.other_worker: ("w2", {}),
    }[holder]
    return (grant, *await acquire(client, run_id, asker, **extra))


@pytest.mark.parametrize(
    ("closed", "holder"), CELLS, ids=[f"{'closed' if c else 'open'}-{h.value}" for c, h in CELLS]
)
async def test_each_cell_answers_as_the_table_says(client, closed: bool, holder: Holder):
    run_id = f"r-{int(closed)}-{holder.value}".replace("_", "-")
    first, status, body = await _ask(client, run_id, closed, holder)
    decision = ACQUIRE_RULES[(closed, holder)]
    after = await get_run(client, run_id)
    if decision is Decision.grant:
        assert status == 200 and body["epoch"] == 2, body
        assert after["holder"] == body["run"]["holder"] and after["status"] == "running"
    elif decision is Decision.deny_held:
        assert status == 409 and body["holder"] == "w1" and body["retry_after_s"] > 0, body
        assert after["epoch"] == 1 and after["holder"] == "w1"
        # the live lease is untouched: its holder still renews
        assert (await renew(client, first))[0] == 200
    else:
        assert decision is Decision.deny_closed
        assert status == 409 and body["status"] == "completed" and body["holder"] is None, body
        assert after["epoch"] == 1 and after["status"] == "completed"
