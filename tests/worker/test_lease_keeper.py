"""Lease renewal and self-fencing against a scripted client (no commander)."""

from __future__ import annotations

import asyncio
import time

from relay.client import CommanderUnreachable, Fenced
from relay.schema import RenewResponse
from relay.worker.fence import Fence
from relay.worker.lease_keeper import LeaseKeeper
from relay_testkit.leases import make_lease


class ScriptedClient:
    def __init__(self, behaviour) -> None:  # type: ignore[no-untyped-def]
        self.behaviour = behaviour
        self.calls = 0

    async def renew(self, req):  # type: ignore[no-untyped-def]
        self.calls += 1
        return await self.behaviour(self.calls)


def keeper(
    client, fence: Fence, *, ttl: float = 1.2, interval: float = 0.2, margin: float = 0.3
) -> LeaseKeeper:  # type: ignore[no-untyped-def]
    return LeaseKeeper(
        client, make_lease(ttl_s=ttl, renew_interval_s=interval), safety_margin_s=margin, fence=fence
    )


async def test_the_deadline_moves_only_on_a_successful_renewal_and_reaches_the_watcher() -> None:
    """The guard learns each new deadline from the keeper: at once when it starts watching, then after
    each successful renewal (sent time + ttl - margin, with the configured margin, never capped)."""
    answers = iter([True, False, True])

    async def flaky(n: int) -> RenewResponse:
        if not next(answers, True):
            raise CommanderUnreachable("blip")
        return RenewResponse(ok=True, ttl_s=1.2)

    fence = Fence(asyncio.get_running_loop())
    k = keeper(ScriptedClient(flaky), fence, ttl=1.2, interval=0.2, margin=0.5)
    seen: list[float] = []
    k.watch_deadline(seen.append)
    assert seen == [k.lease.sent_at + 1.2 - 0.5]  # the configured margin, whatever the TTL
    k.start()
    await asyncio.sleep(0.9)
    await k.stop()
    assert not fence.tripped and k.failures >= 1
    assert len(seen) == 1 + k.renewals and seen == sorted(seen)
    k.watch_deadline(None)


async def test_successful_renewals_keep_the_lease_past_its_ttl() -> None:
    async def ok(n: int) -> RenewResponse:
        return RenewResponse(ok=True, ttl_s=1.2, cancel_requested=False)

    fence = Fence(asyncio.get_running_loop())
    k = keeper(ScriptedClient(ok), fence)
    k.start()
    await asyncio.sleep(2.0)
    assert not fence.tripped and k.renewals >= 5
    await k.stop()


async def test_409_fences_at_once_and_runs_the_hooks() -> None:
    async def refuse(n: int) -> RenewResponse:
        raise Fenced("lease is no longer current")

    fence = Fence(asyncio.get_running_loop())
    killed = []
    fence.set_hook("trainer", lambda: killed.append(time.monotonic()))
    k = keeper(ScriptedClient(refuse), fence)
    started = time.monotonic()
    k.start()
    reason = await asyncio.wait_for(fence.wait(), 2)
    assert "refused" in reason and killed and killed[0] - started < 0.6
    late = []
    fence.set_hook("late", lambda: late.append(1))  # registered after the trip: runs at once
    assert late == [1]
    await k.stop()


async def test_unreachable_commander_fences_before_the_ttl_ends() -> None:
    async def down(n: int) -> RenewResponse:
        raise CommanderUnreachable("connection refused")

    fence = Fence(asyncio.get_running_loop())
    k = keeper(ScriptedClient(down), fence, ttl=1.2, margin=0.3)
    started = time.monotonic()
    k.start()
    reason = await asyncio.wait_for(fence.wait(), 3)
    elapsed = time.monotonic() - started
    assert "no successful lease renewal" in reason and "connection refused" in reason
    assert 0.8 <= elapsed < 1.2, elapsed  # ttl - margin = 0.9 s, never after the ttl
    await k.stop()


async def test_a_hanging_commander_fences_even_while_a_request_is_stuck() -> None:
    async def hang(n: int) -> RenewResponse:
        await asyncio.sleep(30)
        raise AssertionError

    fence = Fence(asyncio.get_running_loop())
    k = keeper(ScriptedClient(hang), fence, ttl=1.2, margin=0.3)
    started = time.monotonic()
    k.start()
    await asyncio.wait_for(fence.wait(), 3)
    assert time.monotonic() - started < 1.2
    await k.stop()


async def test_deadman_fences_even_when_the_event_loop_is_blocked() -> None:
    async def ok(n: int) -> RenewResponse:
        return RenewResponse(ok=True, ttl_s=1.2)

    fence = Fence(asyncio.get_running_loop())
    killed = []
    fence.set_hook("trainer", lambda: killed.append(time.monotonic()))
    k = keeper(ScriptedClient(ok), fence, ttl=1.2, margin=0.3)
    started = time.monotonic()
    k.start()
    time.sleep(1.5)  # the loop is stuck: no renewal can run, the deadman thread still acts
    assert killed and killed[0] - started < 1.2
    await k.stop()


async def test_cancel_requested_is_surfaced() -> None:
    async def cancel(n: int) -> RenewResponse:
        return RenewResponse(ok=True, ttl_s=1.2, cancel_requested=n >= 2)

    fence = Fence(asyncio.get_running_loop())
    k = keeper(ScriptedClient(cancel), fence)
    k.start()
    await asyncio.wait_for(k.cancel_requested.wait(), 2)
    assert not fence.tripped
    await k.stop()
