"""The one retry policy (relay/backoff.py): doubling, capped, jittered, honouring hints; and its retry loop."""

from __future__ import annotations

import random

import pytest

from relay import backoff as backoff_module
from relay.backoff import Backoff, retry
from relay.client import CommanderUnreachable, Fenced


def test_delays_double_up_to_the_cap_within_the_jitter() -> None:
    policy = Backoff(base_s=1.0, max_s=5.0, jitter=0.5)
    rng = random.Random(7)
    for attempt, cap in enumerate((1.0, 2.0, 4.0, 5.0, 5.0, 5.0)):
        for _ in range(50):
            assert cap / 2 <= policy.delay(attempt, rng=rng) <= cap
    assert policy.ceiling(10_000) == 5.0  # no overflow on a long-running loop


def test_no_jitter_is_the_exact_sequence_and_hints_bound_it() -> None:
    policy = Backoff(base_s=0.5, max_s=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(3, at_most_s=0.25) == 0.25  # e.g. the held lease expires sooner
    assert policy.delay(0, at_least_s=9.0) == 9.0  # e.g. a server's Retry-After


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(base_s=-1, max_s=1)
    with pytest.raises(ValueError):
        Backoff(base_s=1, max_s=1, jitter=1.5)


async def test_retry_backs_off_with_jitter_and_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(backoff_module.asyncio, "sleep", fake_sleep)
    policy = Backoff(base_s=1.0, max_s=3.0)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise CommanderUnreachable("down")
        return "ok"

    assert await retry(flaky, policy=policy, attempts=5, retry_on=(CommanderUnreachable,)) == "ok"
    assert calls == 4 and len(delays) == 3
    for delay, cap in zip(delays, (1.0, 2.0, 3.0), strict=True):
        assert cap / 2 <= delay <= cap

    calls = 0
    delays.clear()

    async def always_down() -> None:
        nonlocal calls
        calls += 1
        raise CommanderUnreachable("down")

    with pytest.raises(CommanderUnreachable):
        await retry(always_down, policy=policy, attempts=3, retry_on=(CommanderUnreachable,))
    assert calls == 3 and len(delays) == 2

    calls = 0
    with pytest.raises(CommanderUnreachable):  # the lease ran out: no point in trying again
        await retry(
            always_down, policy=policy, attempts=5, retry_on=(CommanderUnreachable,), give_up=lambda: True
        )
    assert calls == 1

    async def fenced() -> None:
        nonlocal calls
        calls += 1
        raise Fenced("gone")

    calls = 0
    with pytest.raises(Fenced):
        await retry(fenced, policy=policy, attempts=5, retry_on=(CommanderUnreachable,))
    assert calls == 1  # not retryable: propagates at once
    with pytest.raises(ValueError):
        await retry(fenced, policy=policy, attempts=0, retry_on=(CommanderUnreachable,))
