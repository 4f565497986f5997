"""Fixtures for the jobs tests: the commander app in-process (fast callback retries), a callback receiver."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.commander.app import create_app
from relay.commander.callbacks import CallbackSettings
from tests.helpers.commander_proc import commander_factory  # noqa: F401  (a fixture)
from tests.jobs.calls import FAST
from tests.jobs.receiver import Receiver

CommanderFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_commander(aiohttp_client: Any, tmp_path: Path) -> CommanderFactory:
    """``await make_commander(callbacks=FAST, secret=None, lease_ttl_s=60, state=...)``: app over real HTTP."""

    async def make(
        *,
        callbacks: CallbackSettings = FAST,
        secret: str | None = None,
        lease_ttl_s: float = 60.0,
        state: Path | None = None,
    ) -> TestClient:
        app = create_app(
            state or tmp_path / "state.db",
            secret=secret,
            lease_ttl_s=lease_ttl_s,
            callback_settings=callbacks,
        )
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def commander(make_commander: CommanderFactory) -> TestClient:
    return await make_commander()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r
