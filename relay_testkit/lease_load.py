"""Load on a commander that remembers every answer: simulated lease holders, newcomers and thieves.

Runs in a background thread with its own event loop, through the real ``relay.client``:

- ``holders`` runs are acquired up front, each by its own worker id, and renewed (and reported on)
  in a loop, as workers do;
- newcomers keep acquiring fresh runs; every grant answered 200 joins the renewing set, so a grant
  answered just before a ``kill -9`` must still be renewable after the restart;
- a thief keeps trying to acquire runs that are held.

Afterwards :class:`LoadResult` says whether a lease was *lost* (a holder's renew or report refused
with 409 although it never stopped renewing for a TTL) or *duplicated* (a thief was granted a held
run). Answers while the commander is down (``CommanderUnreachable``) are expected and only counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass, field

from relay.client import CommanderClient, CommanderUnreachable, Fenced, LeaseHeld
from relay.schema import AcquireRequest, RenewRequest, ReportRequest


@dataclass
class Grant:
    run_id: str
    worker_id: str
    lease_id: str
    epoch: int
    granted_ts: float
    last_ok: float


@dataclass
class LoadResult:
    grants: dict[str, Grant]
    lost: list[str] = field(default_factory=list)  # "run: why"
    duplicated: list[str] = field(default_factory=list)
    renewals_ok: int = 0
    unreachable: int = 0
    thief_denied: int = 0
    renewals_ok_after: dict[str, int] = field(default_factory=dict)  # run -> ok renewals after mark()


class LeaseLoad:
    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        ttl_s: float,
        holders: int = 30,
        max_new: int = 150,
        prefix: str = "load",
    ) -> None:
        self.url = url
        self.secret = secret
        self.holders = holders
        self.max_new = max_new
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.result = LoadResult(grants={})
        self._stop = threading.Event()
        self._mark_ts: float | None = None
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="lease-load", daemon=True
        )
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._new = 0

    def start(self) -> LeaseLoad:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("lease load did not start")
        if self._error is not None:
            raise self._error
        return self

    def mark(self) -> None:
        """From now on count each holder's successful renewals separately (after a restart)."""
        self._mark_ts = time.time()

    def stop(self) -> LoadResult:
        self._stop.set()
        self._thread.join(30)
        return self.result

    async def _main(self) -> None:
        try:
            async with CommanderClient(self.url, self.secret, timeout_s=2.0) as client:
                for i in range(self.holders):
                    await self._acquire(client, f"{self.prefix}-{i:03d}", f"{self.prefix}-w{i:03d}")
                self._ready.set()
                await asyncio.gather(self._renewer(client), self._newcomer(client), self._thief(client))
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._error = exc
            self._ready.set()

    async def _acquire(self, client: CommanderClient, run_id: str, worker_id: str) -> None:
        g = await client.acquire(AcquireRequest(run_id=run_id, worker_id=worker_id))
        now = time.time()
        self.result.grants[run_id] = Grant(run_id, worker_id, g.lease_id, g.epoch, now, now)

    async def _renewer(self, client: CommanderClient) -> None:
        r = self.result
        while not self._stop.is_set():
            for g in list(r.grants.values()):
                if self._stop.is_set():
                    return
                sent = time.time()
                try:
                    await client.renew(
                        RenewRequest(
                            run_id=g.run_id, worker_id=g.worker_id, lease_id=g.lease_id, epoch=g.epoch
                        )
                    )
                    if r.renewals_ok % 7 == 0:
                        await client.report(
                            g.run_id,
                            ReportRequest(
                                worker_id=g.worker_id,
                                lease_id=g.lease_id,
                                epoch=g.epoch,
                                step=r.renewals_ok,
                                metrics={"loss": 1.0},
                            ),
                        )
                except Fenced as exc:
                    # only a loss if the holder had renewed within its TTL (it never gave the lease up)
                    if sent - g.last_ok < self.ttl_s:
                        r.lost.append(f"{g.run_id}: {exc} ({sent - g.last_ok:.2f}s after its last renewal)")
                    r.grants.pop(g.run_id, None)
                    continue
                except CommanderUnreachable:
                    r.unreachable += 1
                    await asyncio.sleep(0.05)
                    continue
                g.last_ok = sent
                r.renewals_ok += 1
                if self._mark_ts is not None and sent > self._mark_ts:
                    r.renewals_ok_after[g.run_id] = r.renewals_ok_after.get(g.run_id, 0) + 1
            await asyncio.sleep(0.05)

    async def _newcomer(self, client: CommanderClient) -> None:
        while not self._stop.is_set() and self._new < self.max_new:
            self._new += 1
            with contextlib.suppress(CommanderUnreachable):
                await self._acquire(
                    client, f"{self.prefix}-new-{self._new:04d}", f"{self.prefix}-nw-{self._new:04d}"
                )
            await asyncio.sleep(0.05)

    async def _thief(self, client: CommanderClient) -> None:
        r = self.result
        while not self._stop.is_set():
            held = list(r.grants.values())
            if held:
                g = random.choice(held)
                try:
                    got = await client.acquire(
                        AcquireRequest(run_id=g.run_id, worker_id=f"{self.prefix}-thief")
                    )
                except LeaseHeld:
                    r.thief_denied += 1
                except CommanderUnreachable:
                    pass
                else:
                    r.duplicated.append(
                        f"{g.run_id}: thief granted epoch {got.epoch} while {g.worker_id} held epoch {g.epoch}"
                    )
            await asyncio.sleep(0.01)
