"""GET /api/runs/{run_id}/logs: the timeline from reports, a cursor, a tail, a bound per run, and the pod
and epoch of every line."""

from __future__ import annotations

from relay.client import CommanderClient, NotFound
from relay.commander.store import history
from tests.commander.calls import acquire, release, report


def lines(*texts: str, stream: str = "stdout", t0: float = 100.0) -> list[dict]:
    return [{"ts": t0 + i, "stream": stream, "line": text} for i, text in enumerate(texts)]


async def get_logs(client, run_id: str = "r1", **query) -> tuple[int, dict]:
    resp = await client.get(f"/api/runs/{run_id}/logs", params={k: str(v) for k, v in query.items()})
    return resp.status, await resp.json()


async def test_log_lines_from_reports_come_back_in_order_with_a_cursor(commander):
    _, grant = await acquire(commander)
    await report(commander, grant, step=1, log_tail=lines("a", "b"))
    await report(commander, grant, step=2, log_tail=lines("oops", stream="stderr", t0=102.0))
    await report(commander, grant, step=2, message="worker note")  # a message without an event joins the log
    status, page = await get_logs(commander)
    assert status == 200 and page["status"] == "running" and not page["more"]
    assert [(x["stream"], x["line"]) for x in page["lines"]] == [
        ("stdout", "a"),
        ("stdout", "b"),
        ("stderr", "oops"),
        ("worker", "worker note"),
    ]
    assert page["lines"][0]["ts"] == 100.0
    cursor = page["next_cursor"]
    _, empty = await get_logs(commander, since=cursor)
    assert empty["lines"] == [] and empty["next_cursor"] == cursor  # nothing new: the cursor stays
    await report(commander, grant, step=3, log_tail=lines("c"))
    _, new = await get_logs(commander, since=cursor)
    assert [x["line"] for x in new["lines"]] == ["c"]


async def test_each_line_carries_the_pod_and_epoch_whose_report_shipped_it(commander):
    """The lease of the report says who printed a line; a hand-over shows where each pod's output is."""
    _, first = await acquire(commander, "r1", "pod-a")
    await report(commander, first, "pod-a", step=1, log_tail=lines("a1", "a2"))
    await release(commander, first, "preempted", "pod-a")
    _, second = await acquire(commander, "r1", "pod-b")
    await report(commander, second, "pod-b", step=2, log_tail=lines("b1"), message="resumed at step 1")
    held = {"lease_id": second["lease_id"], "epoch": second["epoch"]}  # pod-b restarted, showing its lease
    _, third = await acquire(commander, "r1", "pod-b", held_lease=held)  # epoch 3
    await report(commander, third, "pod-b", step=3, log_tail=lines("b2", stream="stderr"))
    # a late report of a fenced epoch is refused: its lines never join the timeline
    assert (await report(commander, second, "pod-b", step=9, log_tail=lines("late")))[0] == 409
    status, page = await get_logs(commander)
    assert status == 200
    assert [(x["line"], x["worker_id"], x["epoch"]) for x in page["lines"]] == [
        ("a1", "pod-a", 1),
        ("a2", "pod-a", 1),
        ("b1", "pod-b", 2),
        ("resumed at step 1", "pod-b", 2),
        ("b2", "pod-b", 3),
    ]
    _, tail = await get_logs(commander, tail=1)
    assert [(x["stream"], x["worker_id"], x["epoch"]) for x in tail["lines"]] == [("stderr", "pod-b", 3)]


async def test_pages_by_limit_and_a_tail(commander):
    _, grant = await acquire(commander)
    await report(commander, grant, step=1, log_tail=lines(*[f"l{i}" for i in range(25)]))
    seen, cursor, pages = [], 0, 0
    while True:
        _, page = await get_logs(commander, since=cursor, limit=10)
        seen += [x["line"] for x in page["lines"]]
        cursor, pages = page["next_cursor"], pages + 1
        if not page["more"]:
            break
    assert seen == [f"l{i}" for i in range(25)] and pages == 3
    _, tail = await get_logs(commander, tail=3)
    assert [x["line"] for x in tail["lines"]] == ["l22", "l23", "l24"] and not tail["more"]


async def test_bad_queries_and_unknown_runs(commander):
    assert (await get_logs(commander, "nope"))[0] == 404
    await acquire(commander)
    for query in ({"since": -1}, {"limit": 0}, {"limit": "ten"}, {"tail": 10**6}):
        status, err = await get_logs(commander, **query)
        assert status == 400 and err["field"] == next(iter(query)), err
    assert (await commander.get("/api/runs/..%2F/logs")).status in (400, 404)


async def test_logs_are_bounded_per_run(commander, monkeypatch):
    monkeypatch.setattr(history, "KEEP_LOGS", 50)
    monkeypatch.setattr(history, "PRUNE_EVERY", 10)
    _, grant = await acquire(commander)
    for batch in range(10):
        await report(commander, grant, step=batch, log_tail=lines(*[f"{batch}-{i}" for i in range(20)]))
    _, page = await get_logs(commander, limit=10000)
    kept = [x["line"] for x in page["lines"]]
    assert 50 <= len(kept) < 50 + 30 and kept[-1] == "9-19"  # the newest are kept


async def test_client_get_logs(commander):
    _, grant = await acquire(commander)
    await report(commander, grant, step=1, log_tail=lines("x", "y"))
    async with CommanderClient(str(commander.make_url("")).rstrip("/")) as client:
        page = await client.get_logs("r1")
        assert [x.line for x in page.lines] == ["x", "y"] and page.status.value == "running"
        assert (await client.get_logs("r1", page.next_cursor)).lines == []
        assert [x.line for x in (await client.get_logs("r1", tail=1)).lines] == ["y"]
        try:
            await client.get_logs("missing")
        except NotFound as exc:
            assert "missing" in str(exc)
        else:
            raise AssertionError("no NotFound")
