"""Fixtures for commander tests: the app in-process over real HTTP, and real `relayctl serve` subprocesses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from relay.commander.app import create_app
from tests.helpers.commander_proc import commander_factory  # noqa: F401  (a fixture)

ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make_client(aiohttp_client: Any, tmp_path: Path) -> ClientFactory:
    """``await make_client(secret=None, lease_ttl_s=60, state=...)``: the commander app behind a real HTTP server."""

    async def make(
        *,
        secret: str | None = None,
        lease_ttl_s: float = 60.0,
        state: Path | None = None,
        sweep_interval_s: float | None = None,
    ) -> TestClient:
        app = create_app(
            state or tmp_path / "state.db",
            secret=secret,
            lease_ttl_s=lease_ttl_s,
            sweep_interval_s=sweep_interval_s,
        )
        return await aiohttp_client(app)

    return make


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient:
    return await make_client()
