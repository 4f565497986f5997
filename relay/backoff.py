"""The one retry policy: exponential backoff with jitter, for every loop that tries again.

Acquiring a held lease, releasing through a commander blip, reading the remote's state, flushing
reports, delivering webhooks, uploading checkpoints and restarting a crashed trainer all wait the
same way: the n-th retry waits ``min(max_s, base_s * 2**n)``, scaled down by up to ``jitter`` at
random so a fleet of pods that failed together does not retry in lock step (a commander restart
would otherwise see every worker at once).  One policy, so a change to how the project waits is made
in one place and tested once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` is drawn from ``[d * (1 - jitter), d]`` with ``d = min(max_s, base_s * 2**n)``.

    ``jitter=0`` gives the exact doubling sequence (the trainer restart delays are documented so)."""

    base_s: float
    max_s: float
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("backoff delays must not be negative")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be within 0..1")

    def ceiling(self, attempt: int) -> float:
        """The largest delay of retry number ``attempt`` (0 for the first retry)."""
        return min(max(self.max_s, self.base_s), self.base_s * 2.0 ** min(max(0, attempt), 62))

    def delay(
        self,
        attempt: int,
        *,
        at_least_s: float | None = None,
        at_most_s: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """The wait before retry ``attempt``; ``at_least_s`` honours a server's Retry-After, ``at_most_s``
        a hint that waiting longer is pointless (a lease that expires sooner)."""
        d = self.ceiling(attempt)
        if at_most_s is not None and at_most_s >= 0:
            d = min(d, at_most_s)
        if self.jitter:
            d *= (rng or random).uniform(1.0 - self.jitter, 1.0)
        if at_least_s is not None and at_least_s > d:
            d = at_least_s
        return d


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: Backoff,
    attempts: int,
    retry_on: tuple[type[BaseException], ...],
    give_up: Callable[[], bool] | None = None,
) -> T:
    """Await ``fn()`` up to ``attempts`` times, waiting ``policy`` between tries.

    Errors not in ``retry_on`` propagate at once; the last error propagates when the attempts run out,
    or as soon as ``give_up()`` says further tries are pointless (a lease that has run out)."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return await fn()
        except retry_on:
            if attempt == attempts - 1 or (give_up is not None and give_up()):
                raise
            await asyncio.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")  # pragma: no cover
